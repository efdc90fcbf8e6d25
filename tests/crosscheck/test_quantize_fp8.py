"""Cross-check of `qtool quantize` outputs, byte for byte, against an independent numpy +
ml_dtypes computation written from /work/shared/formats.md.

Every output tensor is checked: quantized weights and scales against the formulas (§1.1 legacy
scaled FP8, §1.3 ComfyUI FP8/NVFP4, §2.1–2.4 compressed-tensors, §5.2 ModelOpt), `comfy_quant`
bytes against Python's own `json.dumps`, untouched tensors against the input bytes, the tensor
set against the selection rule (2-D float `*.weight`, embeddings / lm_head / norms kept), and the
side configs against the schemas. The safetensors files are parsed here with `struct` + numpy,
not with qtool. Inputs: the bf16 tiny-llama fixture and the real fp32 all-MiniLM-L6-v2.

FP8 references are written below; the NVFP4 references are the independent numpy ones of
test_float_schemes.py (same formats.md sections, reused rather than written twice).

Run after `cargo build -p qtool`.
"""

import json
import re
import struct
from pathlib import Path

import ml_dtypes as md
import numpy as np
import pytest

from test_float_schemes import ref_nvfp4_comfy, ref_nvfp4_ct, ref_nvfp4_modelopt

F32 = np.float32
ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = ROOT / "fixtures" / "tiny-llama"
TINY_SHARDED = ROOT / "fixtures" / "tiny-llama-sharded"

NP_DTYPE = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": md.bfloat16,
    "F8_E4M3": md.float8_e4m3fn,
    "F8_E5M2": md.float8_e5m2,
    "U8": np.uint8,
    "I64": np.int64,
}
COMPUTE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
EPS = {"F32": np.finfo(np.float32).eps, "BF16": F32(2.0**-7), "F16": F32(2.0**-10)}


# ----------------------------------------------------------------------------- reading


def read_safetensors(path):
    """name -> (dtype, shape, raw bytes), parsed from the file format directly."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], tuple(t["shape"]), raw[base + b : base + e])
    return out


def read_checkpoint(path):
    path = Path(path)
    if path.is_file():
        return read_safetensors(path)
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else sorted(p.name for p in path.glob("*.safetensors"))
    )
    out = {}
    for f in files:
        out.update(read_safetensors(path / f))
    return out


def as_array(t):
    dtype, shape, raw = t
    return np.frombuffer(raw, dtype=NP_DTYPE[dtype]).reshape(shape)


# ----------------------------------------------------------------------------- references


def rnd(x, dt):
    """Round f32 values to the weight's dtype and back: torch computes an op on a bf16/f16
    tensor in f32 and rounds the result once."""
    t = {"F32": np.float32, "F16": np.float16, "BF16": md.bfloat16}[dt]
    return np.asarray(x, dtype=F32).astype(t).astype(F32)


def fp8_codes(x, fmt):
    t = md.float8_e4m3fn if fmt == "e4m3" else md.float8_e5m2
    return np.asarray(x, dtype=F32).astype(t).view(np.uint8)


FMAX = {"e4m3": F32(448.0), "e5m2": F32(57344.0)}


def fp8_cast(x, fmt):
    """The documented saturating cast: clamp to ±max, then round-nearest-even to fp8."""
    return fp8_codes(np.clip(x, -FMAX[fmt], FMAX[fmt]), fmt)


def fp8_comfy_scaled(x, fmt, dt):
    """formats.md §1.2/§1.3.1: scale = amax/fmax in W's dtype; q = clamp(W·(1/scale).to(W.dtype))."""
    fmax = FMAX[fmt]
    scale = rnd(F32(np.max(np.abs(x))) / fmax, dt)
    r = rnd(F32(1.0) / scale, dt)
    return fp8_codes(np.clip(rnd(x * r, dt), -fmax, fmax), fmt), F32(scale)


def fp8_ct_tensor(x, dt):
    """formats.md §2.1: scale = amax/448 in W's dtype (eps if 0); q = clamp(W/scale + 0, ±448)."""
    scale = rnd(F32(np.max(np.abs(x))) / F32(448.0), dt)
    scale = F32(EPS[dt]) if scale == 0 else scale
    q = np.clip(rnd(x / scale, dt) + F32(0.0), -448, 448)
    return fp8_codes(q, "e4m3"), scale


def fp8_ct_channel(x, dt):
    """formats.md §2.1 `channel`: one scale per output row, scale shape (N, 1)."""
    scale = rnd(np.max(np.abs(x), axis=1) / F32(448.0), dt)
    scale = np.where(scale == 0, F32(EPS[dt]), scale).astype(F32)
    q = np.clip(rnd(x / scale[:, None], dt) + F32(0.0), -448, 448)
    return fp8_codes(q, "e4m3"), scale


def scalar_bytes(v, dtype):
    return np.array([v], dtype=F32).astype(NP_DTYPE[dtype]).tobytes()


def comfy_quant(fmt_name, fpmm):
    conf = {"format": fmt_name}
    if fpmm:
        conf["full_precision_matrix_mult"] = True
    return json.dumps(conf).encode("utf-8")


# ----------------------------------------------------------------------------- selection

KEPT = [
    r"(^|\.)(embed_tokens|embed_positions|tok_embeddings|token_embd|wte|wpe|word_embeddings"
    r"|position_embeddings|token_type_embeddings|embeddings|embedding|shared)\.weight$",
    r"(^|\.)lm_head\.weight$",
    r"(^|\.)[^.]*(norm|ln_)[^.]*\.weight$",
]


def selected(inp, k_multiple=1):
    """The documented rule: 2-D F16/BF16/F32 `*.weight`, minus embeddings, lm_head and norms."""
    return [
        name
        for name, (dtype, shape, _) in inp.items()
        if name.endswith(".weight")
        and len(shape) == 2
        and dtype in COMPUTE
        and not any(re.search(p, name) for p in KEPT)
        and shape[1] % k_multiple == 0
    ]


# ----------------------------------------------------------------------------- expectations

SEED = {
    # name: (scheme, fp8 fmt or None, full precision mm)
    "fp8_e4m3fn": ("cast", "e4m3", True),
    "fp8_e4m3fn_fast": ("cast", "e4m3", False),
    "fp8_e4m3fn_scaled": ("scaled", "e4m3", True),
    "fp8_e4m3fn_scaled_fast": ("scaled", "e4m3", False),
    "fp8_e5m2": ("cast", "e5m2", True),
    "fp8_e5m2_fast": ("cast", "e5m2", False),
    "fp8_e5m2_scaled": ("scaled", "e5m2", True),
    "fp8_e5m2_scaled_fast": ("scaled", "e5m2", False),
    "fp4_experimental": ("nvfp4x", None, True),
    "fp4_scaled": ("nvfp4", None, True),
    "fp4_scaled_fast": ("nvfp4", None, False),
    "nvfp4": ("nvfp4", None, True),
    "fp8_channel": ("channel", "e4m3", True),
    "fp8_dynamic": ("channel", "e4m3", False),
}
ST_FP8 = {"e4m3": "F8_E4M3", "e5m2": "F8_E5M2"}
COMFY_FP8 = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def expected_layer(fmt_name, layout, prefix, w, dtype):
    """The exact output tensors of one quantized layer: name -> (dtype, shape, bytes)."""
    scheme, fmt, fpmm = SEED[fmt_name]
    dt = COMPUTE[dtype]
    x = w.astype(F32)
    n, k = x.shape
    out = {}
    cq = None
    if scheme == "cast":
        plus_zero = layout == "compressed-tensors"
        q = fp8_cast(x + F32(0.0) if plus_zero else x, fmt)
        out[f"{prefix}.weight"] = (ST_FP8[fmt], (n, k), q.tobytes())
        if layout == "comfy":
            out[f"{prefix}.weight_scale"] = ("F32", (), scalar_bytes(1.0, "F32"))
            cq = comfy_quant(COMFY_FP8[fmt], fpmm)
        elif layout == "compressed-tensors":
            out[f"{prefix}.weight_scale"] = (dtype, (1,), scalar_bytes(1.0, dtype))
    elif scheme == "channel":
        q, s = fp8_ct_channel(x, dtype)
        out[f"{prefix}.weight"] = ("F8_E4M3", (n, k), q.tobytes())
        out[f"{prefix}.weight_scale"] = (dtype, (n, 1), s.astype(NP_DTYPE[dtype]).tobytes())
    elif scheme == "scaled" and layout == "compressed-tensors":
        q, s = fp8_ct_tensor(x, dtype)
        out[f"{prefix}.weight"] = ("F8_E4M3", (n, k), q.tobytes())
        out[f"{prefix}.weight_scale"] = (dtype, (1,), scalar_bytes(s, dtype))
    elif scheme == "scaled":
        q, s = fp8_comfy_scaled(x, fmt, dtype)
        out[f"{prefix}.weight"] = (ST_FP8[fmt], (n, k), q.tobytes())
        key = "scale_weight" if layout == "comfy-legacy" else "weight_scale"
        out[f"{prefix}.{key}"] = ("F32", (), scalar_bytes(s, "F32"))
        if layout == "comfy":
            cq = comfy_quant(COMFY_FP8[fmt], fpmm)
    elif layout == "comfy":
        packed, scales, ts = ref_nvfp4_comfy(x, dt, experimental=scheme == "nvfp4x")[:3]
        out[f"{prefix}.weight"] = ("U8", packed.shape, packed.tobytes())
        out[f"{prefix}.weight_scale"] = ("F8_E4M3", scales.shape, scales.tobytes())
        out[f"{prefix}.weight_scale_2"] = ("F32", (), scalar_bytes(ts, "F32"))
        cq = comfy_quant("nvfp4", fpmm)
    elif layout == "compressed-tensors":
        packed, scales, gs = ref_nvfp4_ct(x, dt)[:3]
        out[f"{prefix}.weight_packed"] = ("U8", (n, k // 2), packed.tobytes())
        out[f"{prefix}.weight_scale"] = ("F8_E4M3", (n, k // 16), scales.tobytes())
        out[f"{prefix}.weight_global_scale"] = ("F32", (1,), scalar_bytes(gs, "F32"))
    else:
        packed, scales, ws2 = ref_nvfp4_modelopt(x)[:3]
        out[f"{prefix}.weight"] = ("U8", (n, k // 2), packed.tobytes())
        out[f"{prefix}.weight_scale"] = ("F8_E4M3", (n, k // 16), scales.tobytes())
        out[f"{prefix}.weight_scale_2"] = ("F32", (), scalar_bytes(ws2, "F32"))
    if cq is not None:
        out[f"{prefix}.comfy_quant"] = ("U8", (len(cq),), cq)
    return out


def expected_checkpoint(inp, fmt_name, layout):
    scheme, fmt, fpmm = SEED[fmt_name]
    nvfp4 = scheme.startswith("nvfp4")
    quantized = set(selected(inp, 16 if nvfp4 and layout != "comfy" else 1))
    out = {}
    for name, t in inp.items():
        if name in quantized:
            out.update(expected_layer(fmt_name, layout, name[: -len(".weight")], as_array(t), t[0]))
        else:
            out[name] = t
    if layout == "comfy-legacy" and scheme == "scaled":
        n = 2 if fpmm else 0
        out["scaled_fp8"] = (ST_FP8[fmt], (n,), bytes(n))
    return out, quantized


def compare(got, want):
    assert sorted(got) == sorted(want), "tensor names differ"
    for name, (dtype, shape, raw) in want.items():
        g = got[name]
        assert g[0] == dtype, f"{name}: dtype {g[0]} != {dtype}"
        assert g[1] == tuple(shape), f"{name}: shape {g[1]} != {tuple(shape)}"
        if g[2] != raw:
            a = np.frombuffer(g[2], np.uint8)
            b = np.frombuffer(raw, np.uint8)
            bad = np.flatnonzero(a != b) if a.size == b.size else []
            raise AssertionError(f"{name}: bytes differ ({len(bad)} of {a.size}, first at {bad[:5]})")


CASES = [(f, "comfy") for f in SEED if f not in ("nvfp4", "fp8_channel", "fp8_dynamic")] + [
    ("fp8_channel", "compressed-tensors"),
    ("fp8_dynamic", "compressed-tensors"),
    ("fp8_e4m3fn", "comfy-legacy"),
    ("fp8_e5m2", "comfy-legacy"),
    ("fp8_e4m3fn_scaled", "comfy-legacy"),
    ("fp8_e4m3fn_scaled_fast", "comfy-legacy"),
    ("fp8_e4m3fn", "compressed-tensors"),
    ("fp8_e4m3fn_scaled", "compressed-tensors"),
    ("fp8_e4m3fn_scaled_fast", "compressed-tensors"),
    ("fp4_scaled", "compressed-tensors"),
    ("nvfp4", "compressed-tensors"),
    ("fp4_scaled", "modelopt"),
    ("nvfp4", "modelopt"),
]


def run_case(run_qtool, inp_path, out, fmt_name, layout):
    run_qtool("quantize", inp_path, "-o", out, "--fmt", fmt_name, "--layout", layout, "-q")
    inp = read_checkpoint(inp_path)
    want, quantized = expected_checkpoint(inp, fmt_name, layout)
    assert quantized, "the selection rule picked no tensor"
    compare(read_checkpoint(out), want)
    return inp, quantized


def check_side_config(out, fmt_name, layout, inp, quantized):
    scheme, _, fpmm = SEED[fmt_name]
    ignore = sorted(
        n[: -len(".weight")]
        for n in inp
        if n.endswith(".weight") and len(inp[n][1]) == 2 and inp[n][0] in COMPUTE and n not in quantized
    )
    if layout == "compressed-tensors":
        qc = json.loads((out / "config.json").read_text())["quantization_config"]

        def args(bits, strategy, group, dynamic):
            return {"actorder": None, "dynamic": dynamic, "group_size": group, "num_bits": bits,
                    "strategy": strategy, "symmetric": True, "type": "float"}

        if scheme.startswith("nvfp4"):
            fmt, w, ia = "nvfp4-pack-quantized", args(4, "tensor_group", 16, False), None
        else:
            strategy = "channel" if scheme == "channel" else "tensor"
            fmt, w = "float-quantized", args(8, strategy, None, False)
            ia = None if fpmm else args(8, "token", None, True)
        assert qc == {
            "config_groups": {"group_0": {"input_activations": ia, "output_activations": None,
                                          "targets": ["Linear"], "weights": w}},
            "format": fmt, "global_compression_ratio": None, "ignore": qc["ignore"],
            "kv_cache_scheme": None, "quant_method": "compressed-tensors",
            "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
        }
        assert sorted(qc["ignore"]) == ignore
        assert not any("scale_dtype" in json.dumps(v) or "zp_dtype" in json.dumps(v) for v in qc.values())
    if layout == "modelopt":
        hf = json.loads((out / "hf_quant_config.json").read_text())
        assert hf["producer"]["name"] == "qtool" and "version" in hf["producer"]
        q = hf["quantization"]
        assert set(q) == {"quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"}
        assert (q["quant_algo"], q["kv_cache_quant_algo"], q["group_size"]) == ("W4A16_NVFP4", None, 16)
        assert sorted(q["exclude_modules"]) == ignore


@pytest.mark.parametrize("fmt_name,layout", CASES)
def test_tiny_llama_bf16(run_qtool, tmp_path, fmt_name, layout):
    out = tmp_path / "out"
    inp, quantized = run_case(run_qtool, TINY_LLAMA, out, fmt_name, layout)
    check_side_config(out, fmt_name, layout, inp, quantized)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64


@pytest.mark.parametrize("fmt_name,layout", CASES)
def test_minilm_f32(run_qtool, tmp_path, minilm_safetensors, fmt_name, layout):
    out = tmp_path / "out"
    inp, quantized = run_case(run_qtool, minilm_safetensors, out, fmt_name, layout)
    check_side_config(out, fmt_name, layout, inp, quantized)


def test_sharded_input_gives_matching_shards(run_qtool, tmp_path):
    out = tmp_path / "out"
    run_case(run_qtool, TINY_SHARDED, out, "fp8_e4m3fn_scaled", "comfy")
    src = json.loads((TINY_SHARDED / "model.safetensors.index.json").read_text())["weight_map"]
    dst = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for name, shard in dst.items():
        layer = name.rsplit(".", 1)[0]
        origin = src.get(name) or src[layer + ".weight"]
        assert shard == origin, name
        assert name in read_safetensors(out / shard)


def test_comfy_quant_bytes_are_json_dumps(run_qtool, tmp_path):
    out = tmp_path / "m.safetensors"
    run_qtool("quantize", TINY_LLAMA / "model.safetensors", "-o", out, "--fmt", "fp8_e5m2_scaled_fast", "-q")
    got = read_safetensors(out)
    markers = [v for k, v in got.items() if k.endswith(".comfy_quant")]
    assert markers and all(m[2] == json.dumps({"format": "float8_e5m2"}).encode() for m in markers)
    assert all(m[2] == b'{"format": "float8_e5m2"}' for m in markers)


def test_formats_catalog_comfy_quant_is_json_dumps(qtool_json):
    formats = {f["name"]: f for f in qtool_json("formats")["formats"]}
    comfy = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
    for name, (scheme, fmt, fpmm) in SEED.items():
        if "comfy" not in formats[name]["layouts"]:
            assert "comfy_quant" not in formats[name], name
            continue
        want = comfy_quant(comfy[fmt] if fmt else "nvfp4", fpmm).decode()
        assert formats[name]["comfy_quant"] == want, name
