"""A straightforward numpy + safetensors quantizer: the baseline `scripts/bench-fp8.sh` times
`qtool quantize` against. It writes the same ComfyUI-layout checkpoint as
`qtool quantize --fmt fp8_e4m3fn_scaled` / `--fmt fp4_scaled` (formats.md §1.3.1, §1.3.2), with
the arithmetic in the weight's dtype as comfy-kitchen does it, one tensor at a time through
`safe_open`, and `save_file` at the end — what a user script would do.

Usage: python scripts/quantize_reference.py IN.safetensors OUT.safetensors --fmt fp8_e4m3fn_scaled|fp4_scaled
"""

import argparse
import json
import re

import ml_dtypes as md
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

F32 = np.float32
KEPT = re.compile(
    r"(^|\.)(embed_tokens|embed_positions|tok_embeddings|token_embd|wte|wpe|word_embeddings"
    r"|position_embeddings|token_type_embeddings|embeddings|embedding|shared)\.weight$"
    r"|(^|\.)lm_head\.weight$|(^|\.)[^.]*(norm|ln_)[^.]*\.weight$"
)
HALF = {np.dtype(md.bfloat16): md.bfloat16, np.dtype(np.float16): np.float16}


def rounder(dtype):
    t = HALF.get(np.dtype(dtype))
    return (lambda x: x) if t is None else (lambda x: np.asarray(x, F32).astype(t).astype(F32))


def fp8_scaled(w):
    rnd = rounder(w.dtype)
    x = w.astype(F32)
    scale = rnd(F32(np.abs(x).max()) / F32(448.0))
    r = rnd(F32(1.0) / scale)
    q = np.clip(rnd(x * r), -448, 448).astype(md.float8_e4m3fn)
    return {"weight": q, "weight_scale": np.array(scale, dtype=F32)}, "float8_e4m3fn"


def to_blocked(s):
    r, c = s.shape
    rp, cp = -(-r // 128) * 128, -(-c // 4) * 4
    p = np.zeros((rp, cp), dtype=s.dtype)
    p[:r, :c] = s
    b = p.reshape(rp // 128, 128, cp // 4, 4).transpose(0, 2, 1, 3)
    return b.reshape(-1, 4, 32, 4).transpose(0, 2, 1, 3).reshape(rp, cp)


def nvfp4_comfy(w):
    rnd = rounder(w.dtype)
    x = w.astype(F32)
    n, k = x.shape
    ts = rnd(F32(np.abs(x).max()) / F32(2688.0))
    np_, kp = -(-n // 16) * 16, -(-k // 16) * 16
    if (np_, kp) != (n, k):
        x = np.pad(x, ((0, np_ - n), (0, kp - k)))
    blocks = x.reshape(np_, kp // 16, 16)
    bs = np.minimum((np.abs(blocks).max(axis=-1) / F32(6.0)) / ts, F32(448.0)).astype(md.float8_e4m3fn)
    total = (ts * bs.astype(F32)).astype(F32)
    safe = np.where(total == 0, F32(1.0), total)
    data = np.where(total[..., None] == 0, F32(0.0), blocks / safe[..., None])
    codes = np.clip(data, -6, 6).astype(md.float4_e2m1fn).view(np.uint8).reshape(np_, kp) & 15
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    return {
        "weight": packed.astype(np.uint8),
        "weight_scale": to_blocked(bs),
        "weight_scale_2": np.array(ts, dtype=F32),
    }, "nvfp4"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--fmt", required=True, choices=["fp8_e4m3fn_scaled", "fp4_scaled"])
    a = ap.parse_args()
    quantize = fp8_scaled if a.fmt == "fp8_e4m3fn_scaled" else nvfp4_comfy
    out = {}
    with safe_open(a.input, framework="numpy") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if (name.endswith(".weight") and t.ndim == 2 and not KEPT.search(name)
                    and t.dtype in (np.float32, np.float16, md.bfloat16)):
                parts, fmt = quantize(t)
                prefix = name[: -len(".weight")]
                for suffix, v in parts.items():
                    out[f"{prefix}.{suffix}"] = v
                conf = {"format": fmt, "full_precision_matrix_mult": True}
                out[f"{prefix}.comfy_quant"] = np.frombuffer(json.dumps(conf).encode(), np.uint8)
            else:
                out[name] = t
    save_file(out, a.output)


if __name__ == "__main__":
    main()
