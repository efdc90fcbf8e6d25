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
def converted(module_tmp, smollm2_gguf, example_bin):
    """The original as an HF directory and back as an F16 GGUF, made by qtool."""
    d = module_tmp("convert")
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
    [
        ("bf16", "LLAMA_FTYPE_MOSTLY_BF16"),
        ("f32", "LLAMA_FTYPE_ALL_F32"),
        ("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"),
        ("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    ],
)
def test_other_types_equal_llama_cpp(
    converted, smollm2_gguf, example_bin, fmt, ftype_name, tmp_path
):
    llama_cpp = _llama_cpp()
    out = tmp_path / f"roundtrip-{fmt}.gguf"
    _run(example_bin, converted["hf"], out, "--fmt", fmt)
    ref = tmp_path / f"reference-{fmt}.gguf"
    if fmt in ("q8_0", "q4_k_m"):
        # A quantized conversion is the usual two-step pipeline's file: llama.cpp's own F16 of
        # the original, then llama.cpp's quantize of that F16 file.
        f16 = tmp_path / f"reference-f16-for-{fmt}.gguf"
        _quantize_with_llama_cpp(llama_cpp, smollm2_gguf, f16, llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
        _quantize_with_llama_cpp(llama_cpp, f16, ref, getattr(llama_cpp, ftype_name))
    else:
        _quantize_with_llama_cpp(llama_cpp, smollm2_gguf, ref, getattr(llama_cpp, ftype_name))
    ours = gguf.GGUFReader(str(out))
    theirs = gguf.GGUFReader(str(ref))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type, a.name
        # Also token_embd (original Q8_0 blocks): for bf16/f32 llama.cpp copies them while qtool
        # re-encodes their values, and Q8_0 re-encoding is idempotent (amax = 127 d exactly).
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name


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


# --- Semantics: llama.cpp running qtool's GGUF computes what the HF model computes -------------


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _tiny_model(root: Path, arch: str, seed: int) -> Path:
    """A random 2-layer model of `arch` as a Hugging Face directory (f32)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, ffn, layers = 64, 4, 2, 96, 2
    head_dim = 32 if arch == "qwen3" else hidden // heads  # qwen3: head_dim != hidden / heads
    alphabet = [_bytes_to_unicode()[b] for b in range(256)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + alphabet + ["ĠĠ", "Ġt"]
    vocab = len(tokens)
    tied = arch != "llama"
    cfg = {
        "architectures": {"llama": ["LlamaForCausalLM"], "qwen2": ["Qwen2ForCausalLM"], "qwen3": ["Qwen3ForCausalLM"]}[arch],
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0 if arch == "llama" else 1000000.0,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0), "model.norm.weight": 1 + w(hidden)}
    if not tied:
        t["lm_head.weight"] = w(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = 1 + w(hidden)
        t[f"{p}.post_attention_layernorm.weight"] = 1 + w(hidden)
        t[f"{p}.self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        t[f"{p}.self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        t[f"{p}.self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        t[f"{p}.self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        t[f"{p}.mlp.gate_proj.weight"] = w(ffn, hidden)
        t[f"{p}.mlp.up_proj.weight"] = w(ffn, hidden)
        t[f"{p}.mlp.down_proj.weight"] = w(hidden, ffn)
        if arch == "qwen2":
            for n, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                t[f"{p}.self_attn.{n}_proj.bias"] = w(rows * head_dim)
        if arch == "qwen3":
            t[f"{p}.self_attn.q_norm.weight"] = 1 + w(head_dim)
            t[f"{p}.self_attn.k_norm.weight"] = 1 + w(head_dim)
    d = root / f"tiny-{arch}"
    d.mkdir()
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg))
    tok = {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "byte_fallback": False,
            "vocab": {s: i for i, s in enumerate(tokens)},
            "merges": ["Ġ Ġ", "Ġ t"],
        },
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False})
    )
    return d, cfg, t


def _hf_forward(cfg, t, ids, arch):
    """The Hugging Face modelling code's forward pass, in float64 numpy (rotate-half rope)."""
    eps, H, KV, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    g = {k: v.astype(np.float64) for k, v in t.items()}

    def rms(x, wt):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * wt

    def rope(x, pos):
        inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        rot = np.concatenate([-x2, x1], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = g["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms(x, g[f"{p}.input_layernorm.weight"])
        proj = {}
        for n in "qkv":
            y = h @ g[f"{p}.self_attn.{n}_proj.weight"].T
            if f"{p}.self_attn.{n}_proj.bias" in g:
                y = y + g[f"{p}.self_attn.{n}_proj.bias"]
            proj[n] = y.reshape(T, -1, hd)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if arch == "qwen3":
            q, k = rms(q, g[f"{p}.self_attn.q_norm.weight"]), rms(k, g[f"{p}.self_attn.k_norm.weight"])
        q, k = rope(q, pos), rope(k, pos)
        out = np.zeros((T, H, hd))
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for head in range(H):
            kv = head // (H // KV)
            s = q[:, head] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, -1) @ g[f"{p}.self_attn.o_proj.weight"].T
        h = rms(x, g[f"{p}.post_attention_layernorm.weight"])
        gate = h @ g[f"{p}.mlp.gate_proj.weight"].T
        up = h @ g[f"{p}.mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g[f"{p}.mlp.down_proj.weight"].T
    x = rms(x, g["model.norm.weight"])
    head = g.get("lm_head.weight", g["model.embed_tokens.weight"])
    return x @ head.T


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_llama_cpp_on_converted_gguf_matches_the_hf_forward_pass(tmp_path, example_bin, arch):
    llama_cpp = _llama_cpp()
    d, cfg, tensors = _tiny_model(tmp_path, arch, seed={"llama": 1, "qwen2": 2, "qwen3": 3}[arch])
    out = tmp_path / f"{arch}.gguf"
    _run(example_bin, d, out, "--fmt", "f32")
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == arch
    names = {t.name for t in reader.tensors}
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")
    assert ("blk.0.attn_q_norm.weight" in names) == (arch == "qwen3")
    assert ("output.weight" in names) == (arch == "llama")
    ids = [5, 77, 3, 200, 150, 9, 42, 42, 120, 7, 250, 33]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    want = _hf_forward(cfg, tensors, np.array(ids), arch)
    # f32 arithmetic in llama.cpp against a float64 reference.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
    # And the model's prediction is the same token everywhere.
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_to_hf_recovers_the_original_tensors_and_config(tmp_path, example_bin, arch):
    from safetensors.numpy import load_file

    d, cfg, tensors = _tiny_model(tmp_path, arch, seed=10)
    g = tmp_path / f"{arch}.gguf"
    _run(example_bin, d, g, "--fmt", "f32")
    back = tmp_path / "back"
    _run(example_bin, g, back)
    got = load_file(str(back / "model.safetensors"))
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    new_cfg = json.loads((back / "config.json").read_text())
    for key, value in cfg.items():
        assert new_cfg[key] == value, key
    # And converting again gives the same GGUF tensors and metadata.
    g2 = tmp_path / f"{arch}-again.gguf"
    _run(example_bin, back, g2, "--fmt", "f32")
    a, b = gguf.GGUFReader(str(g)), gguf.GGUFReader(str(g2))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes(), x.name
    for key in a.fields:
        if key.startswith((f"{arch}.", "tokenizer.")):
            assert _field_values(a, key) == _field_values(b, key), key


# --- Pre-tokenizer table: each tokenizer.json pre-tokenizer qtool maps splits text like the
# llama.cpp pre-tokenizer it is mapped to. Checked with HF `tokenizers` (reading the
# tokenizer.json) against llama.cpp (reading the GGUF qtool wrote from it).

_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


PRE_TOKENIZERS = {
    "gpt-2": (_byte_level(True), True, False),
    "smollm": ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)]}, False, False),
    "starcoder": ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)]}, True, False),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [_split(_LLAMA3_RE), _byte_level(False)]}, False, True),
    "qwen2": ({"type": "Sequence", "pretokenizers": [_split(_QWEN2_RE), _byte_level(False)]}, False, False),
}

PRE_TEXTS = [
    "12345 and 1234567, x=42;",
    "Hello  world\n\n  indented\n\tTAB   end  ",
    "(abc) [ab] 'S 's 're 'VE don't I'LL",
    "Ünïcödé 日本語 🤖 ab  \r\n\r\n xyz",
    "ab12ab 3abab   ",
]


@pytest.mark.parametrize("pre", list(PRE_TOKENIZERS))
def test_pre_tokenizer_table_matches_llama_cpp(tmp_path, example_bin, pre):
    tokenizers = pytest.importorskip("tokenizers")
    llama_cpp = _llama_cpp()
    d, _, _ = _tiny_model(tmp_path, "llama", seed=4)
    alphabet = _bytes_to_unicode()
    sp, nl = alphabet[ord(" ")], alphabet[ord("\n")]
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    # Merges that straddle the splits the pre-tokenizers disagree on: digit runs, space and
    # newline runs, punctuation before letters, contractions; plus a whole-word token that no
    # merge reaches ("xyz", found only with ignore_merges).
    pairs = [
        ("1", "2"), ("12", "3"), ("123", "4"), ("4", "5"), (sp, sp), (sp + sp, sp), (nl, nl),
        (sp, nl), (sp, "a"), ("a", "b"), ("(", "ab"), ("(ab", "c"), ("'", "S"), ("'", "s"),
        ("'", "re"), ("r", "e"), (sp, "ab"), ("a", "n"), ("an", "d"), (sp, "and"),
    ]
    merges = []
    for a, b in pairs:
        for piece in (a, b, a + b):
            vocab.setdefault(piece, len(vocab))
        merges.append(f"{a} {b}")
    vocab.setdefault("xyz", len(vocab))
    tok["model"]["merges"] = merges
    tok["model"]["ignore_merges"] = PRE_TOKENIZERS[pre][2]
    tok["pre_tokenizer"] = PRE_TOKENIZERS[pre][0]
    (d / "tokenizer.json").write_text(json.dumps(tok))
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["clean_up_tokenization_spaces"] = PRE_TOKENIZERS[pre][1]
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = len(vocab)
    (d / "config.json").write_text(json.dumps(cfg))
    # The embedding must have a row per token.
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t[name] = np.resize(t[name], (len(vocab), t[name].shape[1])).astype(np.float32)
    save_file(t, str(d / "model.safetensors"))

    out = tmp_path / "tok.gguf"
    _run(example_bin, d, out, "--fmt", "f32")
    assert gguf.GGUFReader(str(out)).fields["tokenizer.ggml.pre"].contents() == pre
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    for text in PRE_TEXTS:
        want = hf.encode(text, add_special_tokens=False).ids
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert got == want, (pre, text)
    llm.close()


# --- SentencePiece-style (byte-fallback BPE) tokenizers ----------------------------------------

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer splits text into pieces; the pieces become ids.",
    "Llama models use a byte fallback for characters they have never seen.",
    "Numbers like 1234 and 56789 appear in text, as do    runs of spaces.",
    "The the the quick quick brown brown fox fox dog dog text text pieces pieces.",
]

_SPM_TEXTS = [
    "The quick brown fox",
    "  leading spaces and   inner   runs ",
    "unseen: Ωmega ñandú 日本 🤖 \n new\nlines",
    "pieces become ids 1234",
    "",
]


def _spm_tokenizer_json(tokenizers):
    from tokenizers import decoders, models, normalizers, processors, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tk = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens, show_progress=False)
    tk.train_from_iterator(_CORPUS * 20, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok = json.loads(tk.to_str())
    # As in Llama's tokenizer.json, the byte tokens are vocabulary entries, not added tokens.
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] not in byte_tokens]
    return tok


def test_sentencepiece_style_tokenizer_matches_llama_cpp_both_ways(tmp_path, example_bin):
    tokenizers = pytest.importorskip("tokenizers")
    llama_cpp = _llama_cpp()
    from safetensors.numpy import load_file, save_file

    d, _, _ = _tiny_model(tmp_path, "llama", seed=5)
    tok = _spm_tokenizer_json(tokenizers)
    n = len(tok["model"]["vocab"])
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True})
    )
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = n
    (d / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(d / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t[name] = np.resize(t[name], (n, t[name].shape[1])).astype(np.float32)
    save_file(t, str(d / "model.safetensors"))

    out = tmp_path / "spm.gguf"
    _run(example_bin, d, out, "--fmt", "f32")
    r = gguf.GGUFReader(str(out))
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert types[0] == 2 and types[1] == 3 and types[2] == 3  # unknown, control, control
    assert types[3 + 0x41] == 6  # <0x41> is a byte token
    assert r.fields["tokenizer.ggml.add_space_prefix"].contents() is True

    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    for text in _SPM_TEXTS:
        want = hf.encode(text, add_special_tokens=True).ids
        got = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert got == want, text
    # Merges are in play (not one piece per character), and unseen characters fall back to bytes.
    assert len(llm.tokenize(b"The quick brown fox", add_bos=False)) < 8
    assert 3 + 0xF0 in llm.tokenize("🤖".encode(), add_bos=False)

    # Back to HF: the tokenizer.json qtool writes from the GGUF tokenizes like llama.cpp.
    back = tmp_path / "back"
    _run(example_bin, out, back)
    hf2 = tokenizers.Tokenizer.from_file(str(back / "tokenizer.json"))
    for text in _SPM_TEXTS:
        want = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert hf2.encode(text, add_special_tokens=True).ids == want, text
        assert hf2.decode(want, skip_special_tokens=True) == text
    llm.close()
