"""Writes a seeded synthetic bf16 checkpoint shaped like a video DiT block stack (Wan2.1-14B:
dim 5120, FFN 13824): per block self- and cross-attention q/k/v/o linears with biases and
q/k RMS norms, a two-layer FFN with biases, a norm and a modulation table.

The file is streamed: the header is written first from the planned shapes, then each tensor is
generated and written in chunks of at most CHUNK elements, so generating a 4 GB file needs a few
hundred MB of memory, not 4 GB.

Usage: python scripts/make_synthetic_dit.py OUT.safetensors [--blocks 6] [--seed 0]
(6 blocks = 4.2 GB.)
"""

import argparse
import json
import struct

import numpy as np

DIM, FFN = 5120, 13824
CHUNK = 1 << 24


def tensors(blocks):
    """(name, shape, std) in file order."""
    out = [("patch_embedding.bias", (DIM,), 0.02), ("text_embedding.0.weight", (DIM, 4096), 0.02)]
    for b in range(blocks):
        p = f"blocks.{b}"
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                out.append((f"{p}.{attn}.{proj}.weight", (DIM, DIM), 0.015 + 0.001 * b))
                out.append((f"{p}.{attn}.{proj}.bias", (DIM,), 0.01))
            out.append((f"{p}.{attn}.norm_q.weight", (DIM,), 0.1))
            out.append((f"{p}.{attn}.norm_k.weight", (DIM,), 0.1))
        out.append((f"{p}.norm3.weight", (DIM,), 0.1))
        out.append((f"{p}.norm3.bias", (DIM,), 0.01))
        out.append((f"{p}.ffn.0.weight", (FFN, DIM), 0.02))
        out.append((f"{p}.ffn.0.bias", (FFN,), 0.01))
        out.append((f"{p}.ffn.2.weight", (DIM, FFN), 0.012))
        out.append((f"{p}.ffn.2.bias", (DIM,), 0.01))
        out.append((f"{p}.modulation", (1, 6, DIM), 0.05))
    out.append(("head.head.weight", (64, DIM), 0.02))
    out.append(("head.head.bias", (64,), 0.01))
    return out


def to_bf16_bits(x):
    """float32 → bfloat16 bit patterns, round to nearest even (values are finite)."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    plan = tensors(a.blocks)
    header, offset = {}, 0
    for name, shape, _ in plan:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(a.seed)
    with open(a.out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, std in plan:
            left = int(np.prod(shape))
            while left:
                n = min(left, CHUNK)
                x = rng.standard_normal(n, dtype=np.float32) * np.float32(std)
                if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm3.weight" in name:
                    x += np.float32(1.0)
                # a few outliers per chunk, as trained weights have
                idx = rng.integers(0, n, size=max(1, n >> 16))
                x[idx] *= np.float32(12.0)
                f.write(to_bf16_bits(x).tobytes())
                left -= n
    print(f"wrote {a.out}: {len(plan)} tensors, {offset / 1e9:.2f} GB of data")


if __name__ == "__main__":
    main()
