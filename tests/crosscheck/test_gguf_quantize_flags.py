"""`qtool quantize` GGUF override flags against llama.cpp's `llama_model_quantize` with the same
`llama_model_quantize_params` (llama-cpp-python 0.3.36: `tt_overrides` for `--tensor-type`,
`output_tensor_type`, `token_embedding_type`, `pure`), byte for byte.

test_gguf_quantize.py checks the library through the `gguf_quantize` example; this file checks
that the CLI flags reach it unchanged. Needs the qtool binary and `pip install llama-cpp-python`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_gguf_quantize import (  # noqa: E402  (shared helpers, no tests imported)
    GGML_TYPE_IDS,
    HAVE_LLAMA_CPP,
    SKIP_REASON,
    assert_same_gguf,
    llama_quantize,
    tensors_of,
    write_llama,
)

pytestmark = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def llama16(module_tmp) -> Path:
    """Untied 16-layer F16 llama with ne[0] = 256, so K-quant overrides apply without fallback."""
    d = module_tmp("llama16")
    return write_llama(d / "llama16-f16.gguf", n_layer=16, n_embd=256, n_ff=512, n_head=4,
                       n_head_kv=2, n_vocab=320, tied=False, dtype="F16", seed=11)


Q8, Q5K, Q51, Q50, Q6K = (GGML_TYPE_IDS[n] for n in ("Q8_0", "Q5_K", "Q5_1", "Q5_0", "Q6_K"))

CASES = {
    "tensor_type": (["--tensor-type", "attn_q=q8_0", "--tensor-type", "ffn_(up|gate)=Q5_K"],
                    dict(tensor_types=[["attn_q", Q8], ["ffn_(up|gate)", Q5K]])),
    "tensor_type_first_match_wins": (
        ["--tensor-type", r"blk\.1[0-5]\.=q5_1", "--tensor-type", "attn_v=q8_0"],
        dict(tensor_types=[[r"blk\.1[0-5]\.", Q51], ["attn_v", Q8]])),
    "output_tensor_type": (["--output-tensor-type", "q8_0"], dict(output_tensor_type=Q8)),
    "token_embedding_type": (["--token-embedding-type", "q5_0"], dict(token_embedding_type=Q50)),
    "pure": (["--pure"], dict(pure=True)),
    "all_together": (["--pure", "--tensor-type", "ffn_down=q6_k", "--output-tensor-type", "q5_1",
                      "--token-embedding-type", "q8_0"],
                     dict(pure=True, tensor_types=[["ffn_down", Q6K]], output_tensor_type=Q51,
                          token_embedding_type=Q8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_override_flags_match_llama_cpp(case, llama16, run_qtool, tmp_path):
    flags, params = CASES[case]
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    proc = llama_quantize(llama16, ref, "Q4_K_M", **params)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_qtool("quantize", llama16, "-o", ours, "--fmt", "q4_k_m", "-q", *flags)
    assert_same_gguf(ours, ref)
    if case == "tensor_type_first_match_wins":
        types = {n: t for n, t, _, _ in tensors_of(ours)}
        assert types["blk.12.attn_v.weight"] == "Q5_1" and types["blk.3.attn_v.weight"] == "Q8_0"


def test_cli_override_flags_on_smollm2_match_llama_cpp(smollm2_gguf, run_qtool, tmp_path):
    """The real model: tied embeddings (the output type decides token_embd), 576-wide rows
    (K-quant overrides fall back to their 32-block partners), requantization from Q4_1."""
    flags = ["--tensor-type", "attn_(k|v)=q6_k", "--output-tensor-type", "q5_0"]
    params = dict(tensor_types=[["attn_(k|v)", Q6K]], output_tensor_type=Q50)
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    proc = llama_quantize(smollm2_gguf, ref, "Q4_0", allow_requantize=True, **params)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_qtool("quantize", smollm2_gguf, "-o", ours, "--fmt", "q4_0", "--allow-requantize", "-q",
              *flags)
    assert_same_gguf(ours, ref)
    types = {n: t for n, t, _, _ in tensors_of(ours)}
    assert types["token_embd.weight"] == "Q5_0" and types["blk.0.attn_v.weight"] == "Q8_0"


def test_cli_flags_with_a_float_fmt_match_llama_cpp(llama16, run_qtool, tmp_path):
    """With a float target (F16) llama.cpp skips the per-tensor rules and --tensor-type, but
    still applies --output-tensor-type; qtool does the same."""
    flags = ["--tensor-type", "attn_q=q8_0", "--output-tensor-type", "q8_0"]
    params = dict(tensor_types=[["attn_q", Q8]], output_tensor_type=Q8)
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    proc = llama_quantize(llama16, ref, "F16", allow_requantize=True, **params)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_qtool("quantize", llama16, "-o", ours, "--fmt", "f16", "-q", *flags)
    assert_same_gguf(ours, ref)
    types = {n: t for n, t, _, _ in tensors_of(ours)}
    assert types["blk.0.attn_q.weight"] == "F16" and types["output.weight"] == "Q8_0"
