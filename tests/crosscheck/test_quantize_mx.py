"""`qtool quantize --fmt mxfp4 / mxfp8` against an independent numpy + ml_dtypes computation.

Layouts (formats.md §2.5, §1.3.3; compressed-tensors 0.20 `compressors/mxfp4`, `mxfp8`,
`mx_utils.py`, `quantization/utils/mxfp_utils.py`):
- compressed-tensors `mxfp4-pack-quantized`: `L.weight_packed` U8 `[N, K/2]` (even element in
  the low nibble), `L.weight_scale` U8 `[N, K/32]` biased E8M0 exponents;
- compressed-tensors `mxfp8-quantized`: `L.weight` F8_E4M3 `[N, K]`, `L.weight_scale` U8
  `[N, K/32]`; both with `e = 127 + floor(log2(round_to_power_2(amax))) − emax` (emax 2 / 8);
- ComfyUI `mxfp8` (comfy-kitchen `quantize_mxfp8`): padded to multiples of 32, `ceil` rule,
  scales in the cuBLAS `to_blocked` swizzle, plus the `comfy_quant` JSON.

Every output tensor is compared byte for byte; the MXFP8 compressed-tensors reference is written
here, the others are test_float_schemes.py's (same sections, not written twice). The Rust
dequantizer is checked against a numpy decode of the same bytes through the `float_schemes`
example, and the decoded files against the original weights within the formats' error bound.

Run after `cargo build -p qtool -p qtool-quantizers --examples`.
"""

import json
from pathlib import Path

import ml_dtypes as md
import numpy as np
import pytest

from test_float_schemes import (
    E2M1_VALUES,
    make_weights,
    ref_mxfp4_ct,
    ref_mxfp8_comfy,
    run_example,
    to_blocked,
)
from test_quantize_fp8 import (
    COMPUTE,
    TINY_LLAMA,
    as_array,
    compare,
    comfy_quant,
    read_checkpoint,
    read_safetensors,
    selected,
)

F32 = np.float32


def ref_mxfp8_ct(w):
    """compressed-tensors 0.20 MXFP8: generate_mx_scales(num_bits=8) — round_to_power_2 with
    the E2M1 mantissa width (add 1 << (23 − 1 − 1) to the f32 bits, mask the mantissa), then
    127 + floor(log2(p)) − 8 rounded and clamped into uint8 — and data
    clamp(x / 2^(e−127), ±448).to(float8_e4m3fn)."""
    x = np.asarray(w, dtype=F32)
    n, k = x.shape
    blocks = x.reshape(n, k // 32, 32)
    amax = np.abs(blocks).max(axis=-1).astype(F32)
    bits = amax.view(np.uint32).astype(np.int64)
    p2 = ((bits + (1 << 21)) & 0xFF800000).astype(np.uint32).view(F32)
    with np.errstate(divide="ignore"):
        e = 127 + np.floor(np.log2(p2.astype(np.float64))) - 8
    e = np.round(np.clip(e, 0, 255)).astype(np.int64)
    scale = np.ldexp(F32(1.0), (e - 127).astype(np.int32)).astype(F32)
    data = np.clip(blocks / scale[..., None], -448, 448).astype(F32)
    q = data.astype(md.float8_e4m3fn)
    deq = q.astype(F32) * scale[..., None]
    return q.view(np.uint8).reshape(n, k), e.astype(np.uint8), deq.reshape(n, k)


def expected_layer(fmt, layout, prefix, w):
    x = w.astype(F32)
    n, k = x.shape
    if fmt == "mxfp4":
        packed, e, _ = ref_mxfp4_ct(x)
        return {
            f"{prefix}.weight_packed": ("U8", (n, k // 2), packed.tobytes()),
            f"{prefix}.weight_scale": ("U8", (n, k // 32), e.tobytes()),
        }
    if layout == "compressed-tensors":
        q, e, _ = ref_mxfp8_ct(x)
        return {
            f"{prefix}.weight": ("F8_E4M3", (n, k), q.tobytes()),
            f"{prefix}.weight_scale": ("U8", (n, k // 32), e.reshape(n, k // 32).tobytes()),
        }
    q, blocked, _ = ref_mxfp8_comfy(x)
    cq = comfy_quant("mxfp8", True)
    return {
        f"{prefix}.weight": ("F8_E4M3", q.shape, q.view(np.uint8).tobytes()),
        f"{prefix}.weight_scale": ("U8", blocked.shape, blocked.tobytes()),
        f"{prefix}.comfy_quant": ("U8", (len(cq),), cq),
    }


def expected_checkpoint(inp, fmt, layout):
    quantized = set(selected(inp, 1 if layout == "comfy" else 32))
    out = {}
    for name, t in inp.items():
        if name in quantized:
            out.update(expected_layer(fmt, layout, name[: -len(".weight")], as_array(t)))
        else:
            out[name] = t
    return out, quantized


def decode_layer(got, fmt, layout, prefix, n, k):
    """Independent numpy decode of qtool's stored parts: element · 2^(e − 127)."""
    scale_t = got[f"{prefix}.weight_scale"]
    e = np.frombuffer(scale_t[2], np.uint8).reshape(scale_t[1])
    if layout == "comfy":  # undo the swizzle: swizzle 1-based indices (padding stays 0)
        np_, kp = got[f"{prefix}.weight"][1]
        nb = kp // 32
        idx = to_blocked(np.arange(1, np_ * nb + 1, dtype=np.int64).reshape(np_, nb)).reshape(-1)
        flat = np.zeros(np_ * nb, dtype=np.uint8)
        flat[idx[idx > 0] - 1] = e.reshape(-1)[idx > 0]
        e = flat.reshape(np_, nb)
    scale = np.ldexp(F32(1.0), e.astype(np.int32) - 127).astype(F32)
    if fmt == "mxfp4":
        packed = np.frombuffer(got[f"{prefix}.weight_packed"][2], np.uint8).reshape(n, k // 2)
        codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, k)
        vals = E2M1_VALUES[codes]
    else:
        d = got[f"{prefix}.weight"]
        vals = np.frombuffer(d[2], md.float8_e4m3fn).reshape(d[1]).astype(F32)
    rows, cols = vals.shape
    deq = (vals.reshape(rows, cols // 32, 32) * scale[:rows, :, None]).reshape(rows, cols)
    return deq[:n, :k]


CASES = [("mxfp4", "compressed-tensors"), ("mxfp8", "compressed-tensors"), ("mxfp8", "comfy")]


def check_output(run_qtool, qtool_json, inp_path, out, fmt, layout):
    run_qtool("quantize", inp_path, "-o", out, "--fmt", fmt, "--layout", layout, "-q")
    inp = read_checkpoint(inp_path)
    want, quantized = expected_checkpoint(inp, fmt, layout)
    assert quantized, "the selection rule picked no tensor"
    got = read_checkpoint(out)
    compare(got, want)
    # Dequantized values: a numpy decode of the written bytes is within the format's bound of
    # the original (half an element step of the block's scale, or the E4M3 relative step).
    for name in quantized:
        w = as_array(inp[name]).astype(F32)
        n, k = w.shape
        deq = decode_layer(got, fmt, layout, name[: -len(".weight")], n, k)
        blocks = np.abs(np.pad(w, ((0, 0), (0, -k % 32)))).reshape(n, -1, 32).max(-1)
        bound = np.repeat(blocks, 32, axis=1)[:, :k]
        rel = (1 / 3 if fmt == "mxfp4" else 1 / 16) * bound + 1e-30
        assert np.all(np.abs(deq - w) <= rel), f"{name}: dequantized values out of bound"
    scheme = qtool_json("inspect", out)["scheme"]
    want_scheme = {
        ("mxfp4", "compressed-tensors"): "compressed-tensors:mxfp4-pack-quantized",
        ("mxfp8", "compressed-tensors"): "compressed-tensors:mxfp8-quantized",
        ("mxfp8", "comfy"): "comfy-quant:mxfp8",
    }[(fmt, layout)]
    assert scheme == want_scheme
    return inp, quantized


def check_ct_config(out, fmt, inp, quantized):
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = {"actorder": None, "dynamic": False, "group_size": 32,
               "num_bits": 4 if fmt == "mxfp4" else 8, "scale_dtype": "torch.uint8",
               "strategy": "group", "symmetric": True, "type": "float"}
    assert qc == {
        "config_groups": {"group_0": {"input_activations": None, "output_activations": None,
                                      "targets": ["Linear"], "weights": weights}},
        "format": "mxfp4-pack-quantized" if fmt == "mxfp4" else "mxfp8-quantized",
        "global_compression_ratio": None, "ignore": qc["ignore"], "kv_cache_scheme": None,
        "quant_method": "compressed-tensors", "quantization_status": "compressed",
        "sparsity_config": {}, "transform_config": {},
    }
    ignore = sorted(
        n[: -len(".weight")] for n in inp
        if n.endswith(".weight") and len(inp[n][1]) == 2 and inp[n][0] in COMPUTE
        and n not in quantized
    )
    assert sorted(qc["ignore"]) == ignore


@pytest.mark.parametrize("fmt,layout", CASES)
def test_tiny_llama_bf16(run_qtool, qtool_json, tmp_path, fmt, layout):
    out = tmp_path / "out"
    inp, quantized = check_output(run_qtool, qtool_json, TINY_LLAMA, out, fmt, layout)
    if layout == "compressed-tensors":
        check_ct_config(out, fmt, inp, quantized)


@pytest.mark.parametrize("fmt,layout", CASES)
def test_minilm_f32(run_qtool, qtool_json, tmp_path, minilm_safetensors, fmt, layout):
    out = tmp_path / "out"
    inp, quantized = check_output(run_qtool, qtool_json, minilm_safetensors, out, fmt, layout)
    if layout == "compressed-tensors":
        check_ct_config(out, fmt, inp, quantized)


def odd_checkpoint(tmp_path):
    """A K of 48 (not a multiple of 32) and N of 40 beside an aligned layer."""
    from safetensors.numpy import save_file

    d = tmp_path / "odd"
    d.mkdir()
    w = {
        "blocks.0.attn.weight": make_weights(40, 48, seed=3, kind="f32"),
        "blocks.0.ffn.weight": make_weights(64, 96, seed=4, kind="f32"),
        "blocks.0.ffn.bias": np.linspace(-1, 1, 64, dtype=F32),
    }
    save_file(w, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "toy"}')
    return d


def test_unaligned_k_is_padded_by_comfy_and_kept_by_compressed_tensors(run_qtool, qtool_json, tmp_path):
    d = odd_checkpoint(tmp_path)
    check_output(run_qtool, qtool_json, d / "model.safetensors", tmp_path / "c.safetensors", "mxfp8", "comfy")
    got = read_safetensors(tmp_path / "c.safetensors")
    assert got["blocks.0.attn.weight"][1] == (64, 64)
    assert got["blocks.0.attn.weight_scale"][1] == (128, 4)
    for fmt in ("mxfp4", "mxfp8"):
        out = tmp_path / f"ct_{fmt}"
        rep = qtool_json("quantize", d, "-o", out, "--fmt", fmt)
        notes = {t["name"]: t.get("note") for t in rep["tensors"]}
        assert "not a multiple of 32" in notes["blocks.0.attn.weight"]
        inp, quantized = check_output(run_qtool, qtool_json, d, tmp_path / f"ct2_{fmt}", fmt,
                                      "compressed-tensors")
        assert quantized == {"blocks.0.ffn.weight"}
        check_ct_config(tmp_path / f"ct2_{fmt}", fmt, inp, quantized)


@pytest.mark.parametrize("fmt,layout,names", [
    ("mxfp4", "comfy", "compressed-tensors"),
    ("mxfp4", "modelopt", "compressed-tensors"),
    ("mxfp4", "comfy-legacy", "compressed-tensors"),
    ("mxfp8", "modelopt", "compressed-tensors, comfy"),
    ("mxfp8", "comfy-legacy", "compressed-tensors, comfy"),
])
def test_layout_mismatch_names_the_layouts_that_can(run_qtool, tmp_path, fmt, layout, names):
    out = tmp_path / "o"
    proc = run_qtool("quantize", TINY_LLAMA, "-o", out, "--fmt", fmt, "--layout", layout, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert f"layouts that can express it: {names}" in err
    assert not out.exists()


def test_formats_lists_mx(qtool_json):
    formats = {f["name"]: f for f in qtool_json("formats")["formats"]}
    assert formats["mxfp4"]["layouts"] == ["compressed-tensors"]
    assert formats["mxfp8"]["layouts"] == ["compressed-tensors", "comfy"]
    assert formats["mxfp4"]["writes"] == ["L.weight_packed U8", "L.weight_scale U8"]
    assert formats["mxfp8"]["writes"] == ["L.weight F8_E4M3", "L.weight_scale U8"]
    assert formats["mxfp8"]["comfy_quant"] == comfy_quant("mxfp8", True).decode()
    assert "comfy_quant" not in formats["mxfp4"]


# ----------------------------------------------------------------------------- scheme level


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("shape", [(48, 256), (37, 96), (130, 288)])
def test_mxfp8_ct_scheme(example_bin, tmp_path, kind, shape):
    w = make_weights(*shape, seed=11, kind=kind)
    got = run_example(example_bin, tmp_path, "mxfp8_ct", w)
    q, e, deq = ref_mxfp8_ct(w)
    assert np.array_equal(got["data"], q.reshape(-1)), "data"
    assert np.array_equal(got["scales"], e.reshape(-1)), "scales"
    assert np.array_equal(got["dequant"].view(np.uint32), deq.reshape(-1).astype(F32).view(np.uint32))


def test_mxfp8_ct_power_of_two_edges(example_bin, tmp_path):
    base = np.ldexp(F32(1.0), np.arange(-20, 12, dtype=np.int32)).astype(F32)
    maxima = np.concatenate([
        base, np.nextafter(base, F32(0)), np.nextafter(base, F32(np.inf)),
        base * F32(1.75), np.nextafter(base * F32(1.75), F32(0)), base * F32(1.5),
    ]).astype(F32)
    w = np.full((maxima.size, 64), F32(0.001))
    w[:, 5] = maxima
    w[:, 40] = -maxima * F32(448.0)
    w[0, 32:] = 0.0  # a zero block
    w[1, 32:] = -0.0
    got = run_example(example_bin, tmp_path, "mxfp8_ct", w)
    q, e, _ = ref_mxfp8_ct(w)
    assert np.array_equal(got["scales"], e.reshape(-1))
    assert np.array_equal(got["data"], q.reshape(-1))
