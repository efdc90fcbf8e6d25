"""Cross-checks of `convert` (GGUF <-> Hugging Face, llama family) against llama.cpp, gguf-py,
safetensors and HF tokenizers.

The acceptance path: SmolLM2-135M Q4_1 GGUF -> HF directory -> GGUF F16 with qtool, against an
F16 GGUF that llama.cpp itself makes from the original (`llama_model_quantize`, MOSTLY_F16,
allow_requantize). Both dequantize the same Q4_1 blocks to f32 and round to f16, and qtool's
q/k permutation round trip is the identity, so the tensors must be byte-identical; the logits
llama.cpp computes from the two files must agree, and so must its tokenization.

The HF directory is also checked on its own: every tensor equals gguf-py's dequantization of
the original with llama.cpp's q/k permutation undone by numpy (reshape/swapaxes, the reference
converter's formula), config.json carries the GGUF hyper-parameters, and HF `tokenizers` loading
the written tokenizer.json tokenizes like llama.cpp.
"""

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

TEXTS = [
    "Hello world! 123",
    "The capital of France is Paris.",
    "Café déjà vu. Ünïcödé: 日本語のテキスト, emoji 🤖🚀, Ελληνικά, русский",
    "  multiple   spaces\n\n\ttabs\t\t and\r\nnewlines   ",
    "digits 1234567890 and 3.14159, x=42;",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "code: def f(x):\n    return x**2  # comment",
    "",
]


def _llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # pragma: no cover - environment dependent
        print(f"skipped: llama_cpp is not importable ({e})")
        pytest.skip(f"skipped: llama_cpp is not importable ({e})")
    return llama_cpp


def _run(example_bin, *args, check=True):
    proc = subprocess.run(
        [str(example_bin("convert")), *map(str, args)], capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"convert {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _quantize_with_llama_cpp(llama_cpp, src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed with {rc}"


def _field_values(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]) for i in f.data], [t for t in f.types]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, smollm2_gguf, example_bin):
    """The original as an HF directory and back as an F16 GGUF, made by qtool."""
    d = tmp_path_factory.mktemp("convert")
    hf = d / "hf"
    _run(example_bin, smollm2_gguf, hf)
    out = d / "roundtrip-f16.gguf"
    _run(example_bin, hf, out, "--fmt", "f16")
    return {"dir": d, "hf": hf, "f16": out}


@pytest.fixture(scope="module")
def reference_f16(converted, smollm2_gguf):
    llama_cpp = _llama_cpp()
    ref = converted["dir"] / "reference-f16.gguf"
    _quantize_with_llama_cpp(llama_cpp, smollm2_gguf, ref, llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
    return ref


def _reference_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's permute: view rows as [n_head, hd/2, 2], swap back."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_hf_directory_matches_gguf_py_dequantization(converted, smollm2_gguf):
    from safetensors.numpy import load_file

    hf = converted["hf"]
    files = sorted(p.name for p in hf.iterdir())
    assert files == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    reader = gguf.GGUFReader(str(smollm2_gguf))
    n_head = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    n_kv = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    tensors = load_file(str(hf / "model.safetensors"))
    hf_names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    assert len(tensors) == len(reader.tensors) == 272
    assert "lm_head.weight" not in tensors, "SmolLM2 ties its embeddings"
    for t in reader.tensors:
        stem, suffix = t.name.rsplit(".", 1)
        parts = stem.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{hf_names[parts[2]]}.{suffix}"
        else:
            name = f"{hf_names[stem]}.{suffix}"
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        want = want.reshape([int(x) for x in reversed(t.shape)] if want.ndim > 1 else -1)
        if stem.endswith(".attn_q"):
            want = _reference_unpermute(want, n_head)
        elif stem.endswith(".attn_k"):
            want = _reference_unpermute(want, n_kv)
        got = tensors[name]
        assert got.dtype == np.float32, f"{name}: lossless for Q4_1/Q8_0 is f32, got {got.dtype}"
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_config_json_carries_the_hyperparameters(converted, smollm2_gguf):
    cfg = json.loads((converted["hf"] / "config.json").read_text())
    reader = gguf.GGUFReader(str(smollm2_gguf))

    def kv(key):
        return reader.fields[key].parts[-1][0].item()

    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == kv("llama.embedding_length") == 576
    assert cfg["intermediate_size"] == kv("llama.feed_forward_length")
    assert cfg["num_hidden_layers"] == kv("llama.block_count")
    assert cfg["num_attention_heads"] == kv("llama.attention.head_count")
    assert cfg["num_key_value_heads"] == kv("llama.attention.head_count_kv")
    assert cfg["max_position_embeddings"] == kv("llama.context_length")
    assert cfg["vocab_size"] == kv("llama.vocab_size")
    assert np.float32(cfg["rms_norm_eps"]) == np.float32(kv("llama.attention.layer_norm_rms_epsilon"))
    assert cfg["rms_norm_eps"] == 1e-5, "written as the decimal, not the widened f32"
    assert np.float32(cfg["rope_theta"]) == np.float32(kv("llama.rope.freq_base"))
    assert cfg["tie_word_embeddings"] is True
    assert cfg["bos_token_id"] == kv("tokenizer.ggml.bos_token_id")
    assert cfg["eos_token_id"] == kv("tokenizer.ggml.eos_token_id")
    assert cfg["torch_dtype"] == "float32"
    gen = json.loads((converted["hf"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]
    tok_cfg = json.loads((converted["hf"] / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    assert tok_cfg["bos_token"] == "<|im_start|>" and tok_cfg["eos_token"] == "<|im_end|>"
    assert tok_cfg["add_bos_token"] is False


def test_roundtrip_f16_tensors_equal_llama_cpp_f16(converted, reference_f16):
    ours = gguf.GGUFReader(str(converted["f16"]))
    ref = gguf.GGUFReader(str(reference_f16))
    # Same order too: both follow llama.cpp's weight order (by layer, then name).
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type, a.name
        assert list(a.shape) == list(b.shape), a.name
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name


def test_roundtrip_metadata_equals_the_original(converted, smollm2_gguf):
    ours = gguf.GGUFReader(str(converted["f16"]))
    orig = gguf.GGUFReader(str(smollm2_gguf))
    same = [k for k in orig.fields if k.startswith(("llama.", "tokenizer."))]
    assert len(same) >= 20
    for key in same:
        assert key in ours.fields, key
        assert _field_values(ours, key) == _field_values(orig, key), key
    assert ours.fields["general.architecture"].contents() == "llama"
    assert ours.fields["general.file_type"].contents() == 1  # MOSTLY_F16


def test_llama_cpp_logits_match(converted, reference_f16):
    llama_cpp = _llama_cpp()
    prompt = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
    results = []
    for path in (reference_f16, converted["f16"]):
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0
        )
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.eval(tokens)
        results.append((tokens, np.array(llm.scores[: len(tokens)], dtype=np.float32)))
        llm.close()
    (t_ref, l_ref), (t_ours, l_ours) = results
    assert t_ref == t_ours
    assert l_ref.shape == (len(t_ref), 49152)
    assert np.all(np.isfinite(l_ref))
    # fp16 tolerance; identical weights make them equal in practice.
    scale = np.max(np.abs(l_ref))
    np.testing.assert_allclose(l_ours, l_ref, rtol=0, atol=1e-3 * scale)
    assert np.array_equal(l_ours.argmax(-1), l_ref.argmax(-1))


def test_llama_cpp_tokenization_matches_the_original(converted, smollm2_gguf):
    llama_cpp = _llama_cpp()
    toks = {}
    for label, path in (("orig", smollm2_gguf), ("ours", converted["f16"])):
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        toks[label] = [
            (
                llm.tokenize(t.encode(), add_bos=True, special=True),
                llm.tokenize(t.encode(), add_bos=False, special=False),
            )
            for t in TEXTS
        ]
        llm.close()
    assert toks["ours"] == toks["orig"]
    # The special-token text is one id each when parsed as special.
    assert toks["orig"][5][0].count(1) == 2 and toks["orig"][5][0].count(2) == 1


def test_hf_tokenizers_reads_the_written_tokenizer_like_llama_cpp(converted, smollm2_gguf):
    tokenizers = pytest.importorskip("tokenizers")
    llama_cpp = _llama_cpp()
    tok = tokenizers.Tokenizer.from_file(str(converted["hf"] / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        want = llm.tokenize(text.encode(), add_bos=False, special=True)
        got = tok.encode(text, add_special_tokens=False).ids
        assert got == want, text
        # Decoding gives the text back (byte-level BPE is lossless).
        assert tok.decode(got, skip_special_tokens=False) == text
    llm.close()


@pytest.mark.parametrize(
    "fmt,ftype_name",
    [("bf16", "LLAMA_FTYPE_MOSTLY_BF16"), ("f32", "LLAMA_FTYPE_ALL_F32"), ("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0")],
)
def test_other_types_equal_llama_cpp(converted, smollm2_gguf, example_bin, fmt, ftype_name):
    llama_cpp = _llama_cpp()
    out = converted["dir"] / f"roundtrip-{fmt}.gguf"
    _run(example_bin, converted["hf"], out, "--fmt", fmt)
    ref = converted["dir"] / f"reference-{fmt}.gguf"
    _quantize_with_llama_cpp(llama_cpp, smollm2_gguf, ref, getattr(llama_cpp, ftype_name))
    ours = gguf.GGUFReader(str(out))
    theirs = gguf.GGUFReader(str(ref))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type, a.name
        same = np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes()
        if fmt == "q8_0" and a.name == "token_embd.weight":
            # llama.cpp copies the original Q8_0 blocks; qtool re-encodes their f32 values.
            # Re-encoding a Q8_0 block can move its fp16 scale by rounding, so compare values.
            da = gguf.quants.dequantize(a.data, a.tensor_type)
            db = gguf.quants.dequantize(b.data, b.tensor_type)
            np.testing.assert_allclose(da, db, rtol=0, atol=np.abs(db).max() / 127 * 1e-2)
            continue
        assert same, a.name


def test_unknown_gguf_architecture_is_refused(tmp_path, example_bin):
    w = gguf.GGUFWriter(str(tmp_path / "gemma.gguf"), "gemma")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    proc = _run(example_bin, tmp_path / "gemma.gguf", out, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error:") and "'gemma'" in err, err
    assert "llama (LlamaForCausalLM" in err and "qwen2" in err and "qwen3" in err, err
    assert not out.exists()


def test_unknown_hf_architecture_is_refused(tmp_path, example_bin):
    from safetensors.numpy import save_file

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    save_file({"wte.weight": np.zeros((4, 8), dtype=np.float32)}, str(d / "model.safetensors"))
    out = tmp_path / "out.gguf"
    proc = _run(example_bin, d, out, check=False)
    assert proc.returncode == 2
    assert "'GPT2LMHeadModel'" in proc.stderr and "MistralForCausalLM" in proc.stderr, proc.stderr
    assert not out.exists()
