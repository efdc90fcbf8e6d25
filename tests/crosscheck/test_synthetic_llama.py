"""scripts/make_synthetic_llama.py (the 7B-shaped benchmark model of issue #9): the file it
writes is a valid safetensors checkpoint (read back by the `safetensors` package, values checked
with ml_dtypes), its config matches the tensors, and qtool runs GPTQ on it."""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
from safetensors import safe_open

from conftest import ROOT
from test_ptq import TEXT, _byte_tokenizer


def test_synthetic_llama_is_a_complete_checkpoint(tmp_path, run_qtool):
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps(_byte_tokenizer()))
    out = tmp_path / "syn"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_synthetic_llama.py"), str(out),
         "--tokenizer", str(tok), "--layers", "2", "--hidden", "64", "--heads", "4",
         "--kv-heads", "2", "--intermediate", "128", "--seed", "3"],
        check=True, capture_output=True,
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 256 and cfg["num_key_value_heads"] == 2
    with safe_open(out / "model.safetensors", framework="numpy") as f:
        assert len(set(f.keys())) == 2 * 9 + 3
    # numpy has no bfloat16: read the bytes through the header, decode with ml_dtypes.
    raw = (out / "model.safetensors").read_bytes()
    base = 8 + int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:base])

    def tensor(name):
        a, b = meta[name]["data_offsets"]
        return np.frombuffer(raw[base + a:base + b], dtype=ml_dtypes.bfloat16).astype(np.float32)

    assert meta["model.layers.1.self_attn.k_proj.weight"]["shape"] == [32, 64]
    assert meta["model.layers.0.mlp.down_proj.weight"]["shape"] == [64, 128]
    assert np.all(tensor("model.norm.weight") == 1.0)
    w = tensor("lm_head.weight")
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002

    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT * 20)
    run_qtool("quantize", out, "-o", tmp_path / "q", "--fmt", "w4a16", "--method", "gptq",
              "--group-size", "32", "--calib", calib, "--calib-samples", "4",
              "--calib-seqlen", "32", "--device", "cpu")
    log = json.loads((tmp_path / "q.calib.json").read_text())
    assert log["summary"]["layers"] == 14 and log["device"] == "cpu"
    assert len(log["block_seconds"]) == 2
