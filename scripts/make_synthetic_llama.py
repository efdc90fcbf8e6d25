#!/usr/bin/env python3
"""Writes a llama-architecture Hugging Face directory with random bf16 weights, for
benchmarking the calibration pipeline at real model shapes without downloading a model.

Default shapes are Llama-2-7B's blocks (hidden 4096, 32 heads, intermediate 11008, 32 layers);
the vocabulary is whatever `--tokenizer` (a tokenizer.json) holds, so the directory is complete
for `qtool quantize --method gptq` (which tokenizes its calibration text). Linear weights are
N(0, 0.02²) like a freshly initialised model, norms are 1. Tensors are generated and written one
at a time (numpy only), so memory stays at one tensor.

    python scripts/make_synthetic_llama.py OUT_DIR --tokenizer tokenizer.json [--layers 32]
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np


def tensor_list(cfg):
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", [vocab, h])]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [h, h]),
            (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]),
            (p + "self_attn.o_proj.weight", [h, h]),
            (p + "post_attention_layernorm.weight", [h]),
            (p + "mlp.gate_proj.weight", [inter, h]),
            (p + "mlp.up_proj.weight", [inter, h]),
            (p + "mlp.down_proj.weight", [h, inter]),
        ]
    out += [("model.norm.weight", [h]), ("lm_head.weight", [vocab, h])]
    return out


def bf16_bytes(rng, name, shape):
    n = int(np.prod(shape))
    if name.endswith("norm.weight"):
        x = np.ones(n, dtype=np.float32)
    else:
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    u = x.view(np.uint32)
    # Round to nearest even into the upper 16 bits (no NaNs here).
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2")
    return r.tobytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json to ship with the model")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    with open(a.tokenizer, "rb") as f:
        tok = json.load(f)
    vocab = len(tok["model"]["vocab"]) + len(
        [t for t in tok.get("added_tokens", []) if t["content"] not in tok["model"]["vocab"]]
    )
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads or a.heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    os.makedirs(a.out, exist_ok=True)
    tensors = tensor_list(cfg)
    header, off = {}, 0
    for name, shape in tensors:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    rng = np.random.default_rng(a.seed)
    tmp = os.path.join(a.out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, shape in tensors:
            f.write(bf16_bytes(rng, name, shape))
    os.replace(tmp, os.path.join(a.out, "model.safetensors"))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copyfile(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    params = sum(int(np.prod(s)) for _, s in tensors)
    print(f"{a.out}: {len(tensors)} tensors, {params / 1e9:.2f} B parameters, {off / 1e9:.2f} GB")


if __name__ == "__main__":
    sys.exit(main())
