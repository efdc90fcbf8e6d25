"""Cross-check of `qtool quantize --fmt w4a16|w8a16` and `qtool repack --target marlin` (layouts gptq, awq, compressed-tensors)
against an independent numpy computation of formats.md §2.1/§2.3 (compressed-tensors
pack-quantized), §3.1 (GPTQ, v1 `zero - 1` and v2 zeros) and §3.2 (AWQ GEMM interleave).

The quantizer and packers are the numpy references of test_int_packing.py (written
independently from formats.md). qtool stores scales in the file's dtype (F16 for GPTQ/AWQ, the
weight's dtype for compressed-tensors) and computes the codes against the stored scale, so the
reference rounds its scale to that dtype and recomputes the codes with the same zero points.
Every output tensor is compared byte for byte; untouched tensors must equal the input bytes.
The safetensors files are parsed with struct + numpy here, not with qtool.

Run after `cargo build -p qtool`.
"""

import json
from pathlib import Path

import ml_dtypes as md
import numpy as np
import pytest

import struct

from test_int_packing import ref_awq, ref_ct, ref_gptq, ref_marlin_scales, ref_marlin_weights, ref_quantize
from test_quantize_fp8 import read_checkpoint

F32 = np.float32
ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = ROOT / "fixtures" / "tiny-llama"
NP = {"F32": np.float32, "F16": np.float16, "BF16": md.bfloat16}
KEPT = ("lm_head.weight", "model.embed_tokens.weight")


def as_f32(t):
    dtype, shape, raw = t
    return np.frombuffer(raw, dtype=NP[dtype]).reshape(shape).astype(F32)


def codes_for(w, scale, zero, bits, convention, group):
    """Codes of `w` against given [G, N] scale/zero (the stored ones), per convention."""
    n, k = w.shape
    maxq = F32(2**bits - 1)
    mid = F32(2 ** (bits - 1))
    gmap = np.zeros(k, np.int64) if group == -1 else np.arange(k) // group
    s = scale[gmap].T
    z = zero.astype(F32)[gmap].T
    if convention in ("gptq", "awq"):
        c = np.clip(np.round(w / s) + z, F32(0), maxq)
    else:
        c = np.round(np.clip(w / s + (z - mid), -mid, maxq - mid)) + mid
    return c.astype(np.uint8)


def expected_layer(layout, prefix, w, in_dtype, bits, group, sym, v2):
    convention = {"gptq": "gptq", "awq": "awq", "compressed-tensors": "ct"}[layout]
    _, scale, zero = ref_quantize(w, bits, group, sym, convention, None)
    sdt = "F16" if layout != "compressed-tensors" or in_dtype == "F16" else in_dtype
    stored = scale.astype(NP[sdt])
    codes = codes_for(w, stored.astype(F32), zero, bits, convention, group)
    n, k = w.shape
    out = {}
    if layout == "gptq":
        qweight, qzeros = ref_gptq(codes, zero, bits, v1=not v2)
        out[f"{prefix}.qweight"] = ("I32", qweight)
        out[f"{prefix}.qzeros"] = ("I32", qzeros)
        out[f"{prefix}.scales"] = (sdt, stored)
        g = np.zeros(k, np.int32) if group == -1 else (np.arange(k) // group).astype(np.int32)
        out[f"{prefix}.g_idx"] = ("I32", g)
    elif layout == "awq":
        qweight, qzeros = ref_awq(codes, zero)
        out[f"{prefix}.qweight"] = ("I32", qweight)
        out[f"{prefix}.qzeros"] = ("I32", qzeros)
        out[f"{prefix}.scales"] = (sdt, stored)
    else:
        wp, ws, wz = ref_ct(codes, stored, zero, bits, sym)
        out[f"{prefix}.weight_packed"] = ("I32", wp)
        out[f"{prefix}.weight_scale"] = (sdt, ws)
        out[f"{prefix}.weight_shape"] = ("I64", np.array([n, k], np.int64))
        if not sym:
            out[f"{prefix}.weight_zero_point"] = ("I32", wz)
    # Dequantized weights, for the sanity check below: scale * (code - zero).
    gmap = np.zeros(k, np.int64) if group == -1 else np.arange(k) // group
    deq = (codes.astype(F32) - zero.astype(F32)[gmap].T) * stored.astype(F32)[gmap].T
    return out, deq


CASES = [
    ("gptq", 4, 32, True, False),
    ("gptq", 4, 64, False, False),
    ("gptq", 4, 32, False, True),
    ("gptq", 8, -1, True, False),
    ("gptq", 8, 32, False, True),
    ("awq", 4, 32, False, False),
    ("awq", 4, -1, False, False),
    ("compressed-tensors", 4, 32, True, False),
    ("compressed-tensors", 4, 64, False, False),
    ("compressed-tensors", 8, -1, True, False),
    ("compressed-tensors", 8, 32, False, False),
]


@pytest.mark.parametrize(
    "layout,bits,group,sym,v2",
    CASES,
    ids=[f"{l}-w{b}-g{g}-{'sym' if s else 'asym'}{'-v2' if v else ''}" for l, b, g, s, v in CASES],
)
def test_int_outputs_match_numpy(run_qtool, tmp_path, layout, bits, group, sym, v2):
    out = tmp_path / "out"
    args = ["quantize", TINY_LLAMA, "-o", out, "-q", "--fmt", f"w{bits}a16", "--layout", layout,
            "--group-size", str(group)]
    if layout != "awq":
        args.append("--sym" if sym else "--asym")
    if v2:
        args += ["--gptq-format", "v2"]
    run_qtool(*args)

    inp = read_checkpoint(TINY_LLAMA)
    got = read_checkpoint(out)
    want = {}
    quantized = 0
    for name, t in inp.items():
        dtype, shape, raw = t
        if name.endswith(".weight") and len(shape) == 2 and name not in KEPT:
            layer, deq = expected_layer(layout, name[: -len(".weight")], as_f32(t), dtype,
                                        bits, group, sym, v2)
            w = as_f32(t)
            # RTN error bound: half a step of the group's scale (plus clipping at the ends).
            assert np.abs(deq - w).max() <= np.abs(w).max()
            for k, (dt, arr) in layer.items():
                want[k] = (dt, tuple(arr.shape), np.ascontiguousarray(arr).tobytes())
            quantized += 1
        else:
            want[name] = t
    assert quantized == 14
    assert sorted(got) == sorted(want)
    for name, (dt, shape, raw) in want.items():
        g = got[name]
        assert (g[0], g[1]) == (dt, shape), name
        if g[2] != raw:
            a = np.frombuffer(g[2], np.uint8)
            b = np.frombuffer(raw, np.uint8)
            bad = np.nonzero(a != b)[0]
            raise AssertionError(f"{name}: {bad.size} bytes differ, first at {bad[0]}")

    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    if layout == "gptq":
        side = json.loads((out / "quantize_config.json").read_text())
        assert side == qc == {
            "bits": bits, "group_size": group, "desc_act": False, "sym": sym,
            "quant_method": "gptq", "checkpoint_format": "gptq_v2" if v2 else "gptq",
        }
    elif layout == "awq":
        assert qc == {"quant_method": "awq", "zero_point": True, "group_size": group, "bits": 4,
                      "version": "gemm", "modules_to_not_convert": ["lm_head", "model.embed_tokens"]}
    else:
        wargs = qc["config_groups"]["group_0"]["weights"]
        assert qc["format"] == "pack-quantized"
        assert wargs == {
            "num_bits": bits, "type": "int", "symmetric": sym,
            "strategy": "channel" if group == -1 else "group",
            "group_size": None if group == -1 else group, "dynamic": False, "actorder": None,
        }


def test_gptq_sym_v1_zero_words_are_0x77777777(run_qtool, tmp_path):
    """formats.md §3.1: symmetric 4-bit GPTQ v1 qzeros are all 0x77777777."""
    out = tmp_path / "g"
    run_qtool("quantize", TINY_LLAMA, "-o", out, "-q", "--fmt", "w4a16", "--layout", "gptq",
              "--group-size", "32")
    got = read_checkpoint(out)
    zs = [v for k, v in got.items() if k.endswith(".qzeros")]
    assert zs
    for dtype, shape, raw in zs:
        assert (np.frombuffer(raw, "<u4") == 0x77777777).all()


def write_bf16_checkpoint(root, tensors):
    """A safetensors file of bf16 tensors, written with struct + numpy."""
    root.mkdir()
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = arr.astype(md.bfloat16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    (root / "config.json").write_text('{"model_type": "llama"}')


@pytest.mark.parametrize("layout", ["gptq", "compressed-tensors"])
@pytest.mark.parametrize("group", [128, -1])
def test_repack_marlin_matches_numpy(run_qtool, tmp_path, group, layout):
    """formats.md §4.1-4.3: B = marlin_permute_weights + pack of the uint4b8 codes [K, N];
    s = marlin_permute_scales of the fp16 scales [G, N]."""
    rng = np.random.default_rng(7)
    n, k = 256, 512
    w = (rng.standard_normal((n, k)) * 0.02).astype(md.bfloat16)
    src = tmp_path / "src"
    write_bf16_checkpoint(src, {"model.layers.0.mlp.up_proj.weight": w})
    g, m = tmp_path / "g", tmp_path / "m"
    run_qtool("quantize", src, "-o", g, "-q", "--fmt", "w4a16", "--layout", layout,
              "--group-size", str(group))
    run_qtool("repack", g, "-o", m, "--target", "marlin", "--tp", "1,2,4")
    wf = w.astype(F32)
    conv = "gptq" if layout == "gptq" else "ct"
    _, scale, zero = ref_quantize(wf, 4, group, True, conv, None)
    # GPTQ stores F16 scales; compressed-tensors the weight's BF16, which Marlin's F16 holds
    # exactly for these magnitudes (repack refuses otherwise).
    stored = scale.astype(np.float16 if layout == "gptq" else md.bfloat16)
    codes = codes_for(wf, stored.astype(F32), zero, 4, conv, group)
    stored = stored.astype(F32).astype(np.float16)
    assert (stored.astype(F32) == scale.astype(np.float16 if layout == "gptq" else md.bfloat16).astype(F32)).all()
    got = read_checkpoint(m)
    p = "model.layers.0.mlp.up_proj"
    assert sorted(got) == [f"{p}.B", f"{p}.s"]
    b_dtype, b_shape, b_raw = got[f"{p}.B"]
    assert (b_dtype, b_shape) == ("I32", (k // 16, 2 * n))
    want_b = ref_marlin_weights(np.ascontiguousarray(codes.T), 4)
    assert b_raw == np.ascontiguousarray(want_b).tobytes()
    s_dtype, s_shape, s_raw = got[f"{p}.s"]
    assert (s_dtype, s_shape) == ("F16", stored.shape)
    want_s = ref_marlin_scales(stored, group, k)
    assert s_raw == np.ascontiguousarray(want_s).tobytes()
    qc = json.loads((m / "quantize_config.json").read_text())
    assert qc["checkpoint_format"] == "marlin" and qc["group_size"] == group and qc["bits"] == 4
