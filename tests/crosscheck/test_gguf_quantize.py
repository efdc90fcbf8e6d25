"""GGUF → GGUF quantization: qtool's `gguf_quantize` example against llama.cpp's own
`llama_model_quantize` (through llama-cpp-python's low-level API), byte for byte.

Needs `cargo build --release -p qtool-quantizers --examples` and `pip install llama-cpp-python`
(which builds llama.cpp); without llama_cpp every test here skips with that reason.

* SmolLM2-135M (the `smollm2_gguf` Q4_1 fixture) is first turned into an F16 GGUF by llama.cpp
  itself (`MOSTLY_F16` with `allow_requantize`; qtool's F16 output of the same input must be the
  same file, and gguf-py's dequantization of the Q4_1 tensors, rounded to f16, must equal it).
  Then F16 → Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0 (and every other recipe qtool supports) with both
  tools: tensor order, types, shapes and bytes compared tensor by tensor, then whole files.
* Synthetic llama models written with gguf-py cover what SmolLM2 cannot: untied `output.weight`,
  32 layers with `ne[0]` a multiple of 256 (so `use_more_bits` picks Q6_K for real), F32 and BF16
  inputs, an 8-expert model with 3-D expert tensors, an 80-layer GQA model (llama.cpp's "70B"
  class), row lengths no block type fits, and the override options.
* `--dry-run` plans are compared line by line with llama.cpp's dry-run log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
    SKIP_REASON = ""
except Exception as exc:  # ImportError or a broken shared library
    HAVE_LLAMA_CPP = False
    SKIP_REASON = f"skipped: llama_cpp is not importable ({exc}); pip install llama-cpp-python"

pytestmark = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=SKIP_REASON)

# llama.h `enum llama_ftype`.
FTYPE_IDS = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32,
}
REQUIRED = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0"]
# Also checked byte for byte on SmolLM2 when developing (identical): Q2_K, Q3_K_S, Q3_K_L, F32;
# left out here to keep the run short (F32 alone writes 540 MB per tool).
# The slower tier (QTOOL_SLOW_TESTS=1) adds these SmolLM2 sweeps; CI runs the required five, and
# the synthetic 32-layer model below covers Q4_K_S, Q5_K_S, Q3_K_M and Q2_K in every run.
OTHERS = (
    ["Q4_K_S", "Q5_K_S", "Q5_0", "Q4_1", "Q5_1", "Q3_K_M", "BF16"]
    if os.environ.get("QTOOL_SLOW_TESTS")
    else []
)

# Runs llama_model_quantize in a child process so that llama.cpp's log (C stderr) is captured.
# argv[1] is a JSON object: input/output paths and the llama_model_quantize_params to set.
LLAMA_QUANTIZE = r"""
import ctypes, json, sys, llama_cpp
a = json.loads(sys.argv[1])
p = llama_cpp.llama_model_quantize_default_params()
for key in ("ftype", "nthread", "dry_run", "allow_requantize", "pure", "output_tensor_type",
            "token_embedding_type", "quantize_output_tensor"):
    if key in a:
        setattr(p, key, a[key])
overrides = a.get("tensor_types", [])
arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
for i, (pattern, ty) in enumerate(overrides):
    arr[i].pattern = pattern.encode()
    arr[i].type = ty
arr[len(overrides)].pattern = None
if overrides:
    p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
sys.exit(llama_cpp.llama_model_quantize(a["inp"].encode(), a["out"].encode(), ctypes.byref(p)))
"""

# gguf `GGMLQuantizationType` ids for the override parameters.
GGML_TYPE_IDS = {t.name: int(t.value) for t in gguf.GGMLQuantizationType}


def llama_quantize(inp: Path, out: Path, ftype: str, *, nthread: int = 2, dry_run: bool = False,
                   allow_requantize: bool = False, **params) -> subprocess.CompletedProcess:
    args = dict(inp=str(inp), out=str(out), ftype=FTYPE_IDS[ftype], nthread=nthread, dry_run=dry_run,
                allow_requantize=allow_requantize, **params)
    return subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE, json.dumps(args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def qtool_quantize(example_bin):
    exe = example_bin("gguf_quantize")

    def run(inp: Path, out: Path, ftype: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), str(inp), str(out), ftype, *extra],
                              capture_output=True, text=True, timeout=600)

    return run


def tensors_of(path: Path) -> list[tuple[str, str, tuple, bytes]]:
    r = gguf.GGUFReader(path)
    return [(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), bytes(t.data.tobytes()))
            for t in r.tensors]


def assert_same_gguf(ours: Path, ref: Path) -> None:
    """Tensor by tensor (order, type, shape, bytes), then metadata, then the whole file."""
    a, b = tensors_of(ours), tensors_of(ref)
    assert [t[0] for t in a] == [t[0] for t in b], "tensor order differs"
    for (name, ta, sa, da), (_, tb, sb, db) in zip(a, b):
        assert (ta, sa) == (tb, sb), f"{name}: qtool {ta} {sa}, llama.cpp {tb} {sb}"
        assert da == db, f"{name} ({ta}): bytes differ"
    ra, rb = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    assert list(ra.fields) == list(rb.fields), "metadata keys or their order differ"
    assert ours.read_bytes() == ref.read_bytes(), "files differ outside the tensor data"


def log_plan(text: str) -> list[str]:
    """The lines of llama.cpp's dry-run log that qtool reproduces."""
    keep = ("warning: ", "[", "llama_tensor_get_type: ")
    lines = [l for l in text.splitlines() if l.startswith(keep) or "tensor(s) required fallback" in l
             or "model size  =" in l or "quant size  =" in l]
    return [l for l in lines if not l.startswith("[") or " type = " in l]


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_gguf, module_tmp) -> Path:
    out = module_tmp("smollm2") / "smollm2-f16.gguf"
    proc = llama_quantize(smollm2_gguf, out, "F16", allow_requantize=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_f16_input_is_the_q4_1_model_dequantized(smollm2_gguf, smollm2_f16):
    """Independent check of the F16 starting point: gguf-py's dequantization rounded to f16."""
    src = {t.name: t for t in gguf.GGUFReader(smollm2_gguf).tensors}
    dst = {t.name: t for t in gguf.GGUFReader(smollm2_f16).tensors}
    assert set(src) == set(dst)
    checked = 0
    for name, t in src.items():
        d = dst[name]
        if t.tensor_type.name == "F32":
            assert d.tensor_type.name == "F32"
            continue
        assert d.tensor_type.name == "F16", name
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float16)
        assert np.array_equal(ref.view(np.uint16).ravel(), np.asarray(d.data).view(np.uint16).ravel()), name
        checked += 1
    assert checked == 211


def test_f16_from_q4_1_is_byte_identical(smollm2_gguf, smollm2_f16, qtool_quantize, tmp_path):
    out = tmp_path / "qtool-f16.gguf"
    proc = qtool_quantize(smollm2_gguf, out, "F16", "--allow-requantize")
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(out, smollm2_f16)


@pytest.mark.parametrize("ftype", REQUIRED + OTHERS)
def test_smollm2_matches_llama_cpp(ftype, smollm2_f16, qtool_quantize, tmp_path):
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    proc = llama_quantize(smollm2_f16, ref, ftype)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = qtool_quantize(smollm2_f16, ours, ftype, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)


@pytest.mark.parametrize("ftype", REQUIRED)
def test_smollm2_dry_run_plan_matches_llama_cpp_log(ftype, smollm2_f16, qtool_quantize, tmp_path):
    proc = llama_quantize(smollm2_f16, tmp_path / "none.gguf", ftype, dry_run=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = log_plan(proc.stderr + proc.stdout)
    ours = qtool_quantize(smollm2_f16, tmp_path / "none.gguf", ftype, "--dry-run")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == ref
    assert not (tmp_path / "none.gguf").exists()


def test_requantize_directly_from_q4_1(smollm2_gguf, qtool_quantize, tmp_path):
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    assert llama_quantize(smollm2_gguf, ref, "Q4_K_M", allow_requantize=True).returncode == 0
    proc = qtool_quantize(smollm2_gguf, ours, "Q4_K_M", "--allow-requantize")
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)


def test_requantize_refused_without_flag_like_llama_cpp(smollm2_gguf, qtool_quantize, tmp_path):
    out = tmp_path / "out.gguf"
    assert llama_quantize(smollm2_gguf, out, "Q4_K_M").returncode != 0
    out.unlink(missing_ok=True)  # llama.cpp leaves a partial file behind; qtool must not
    proc = qtool_quantize(smollm2_gguf, out, "Q4_K_M")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "--allow-requantize" in proc.stderr
    assert not out.exists()


def test_output_independent_of_thread_count(smollm2_f16, qtool_quantize, tmp_path):
    outs = []
    for n in (1, 2, 5):
        out = tmp_path / f"t{n}.gguf"
        assert qtool_quantize(smollm2_f16, out, "Q4_K_M", "--threads", str(n)).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


# ---------------------------------------------------------------------------------------------
# Synthetic llama models


def write_llama(path: Path, *, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
                n_vocab: int, tied: bool, dtype: str = "F32", n_expert: int = 0, seed: int = 0,
                extra: dict | None = None, arch: str = "llama") -> Path:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    w.add_file_type(0 if dtype == "F32" else 1 if dtype == "F16" else 32)
    w.add_string("general.name", "synthetic")

    def add(name, shape, *, norm=False):
        x = (rng.standard_normal(shape) * (0.02 if not norm else 1.0)).astype(np.float32)
        if norm or dtype == "F32":
            w.add_tensor(name, x)
        elif dtype == "F16":
            w.add_tensor(name, x.astype(np.float16))
        else:  # BF16 by truncation-free rounding to nearest even
            bits = x.view(np.uint32).astype(np.uint64)
            bf = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            w.add_tensor(name, bf, raw_shape=x.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)

    hd = n_embd // n_head
    add("token_embd.weight", (n_vocab, n_embd))
    add("output_norm.weight", (n_embd,), norm=True)
    if not tied:
        add("output.weight", (n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (n_embd,), norm=True)
        add(p + "attn_q.weight", (n_embd, n_embd))
        add(p + "attn_k.weight", (n_head_kv * hd, n_embd))
        add(p + "attn_v.weight", (n_head_kv * hd, n_embd))
        add(p + "attn_output.weight", (n_embd, n_embd))
        add(p + "ffn_norm.weight", (n_embd,), norm=True)
        if n_expert:
            add(p + "ffn_gate_inp.weight", (n_expert, n_embd))
            add(p + "ffn_gate_exps.weight", (n_expert, n_ff, n_embd))
            add(p + "ffn_up_exps.weight", (n_expert, n_ff, n_embd))
            add(p + "ffn_down_exps.weight", (n_expert, n_embd, n_ff))
        else:
            add(p + "ffn_gate.weight", (n_ff, n_embd))
            add(p + "ffn_up.weight", (n_ff, n_embd))
            add(p + "ffn_down.weight", (n_embd, n_ff))
    for name, shape in (extra or {}).items():
        add(name, shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def llama32(module_tmp) -> Path:
    d = module_tmp("llama32")
    return write_llama(d / "llama32-f32.gguf", n_layer=32, n_embd=256, n_ff=512, n_head=4, n_head_kv=1,
                       n_vocab=512, tied=False)


@pytest.mark.parametrize("ftype", REQUIRED + ["Q4_K_S", "Q5_K_S", "Q3_K_M", "Q2_K"])
def test_untied_32_layer_model_matches_llama_cpp(ftype, llama32, qtool_quantize, tmp_path):
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    assert llama_quantize(llama32, ref, ftype).returncode == 0
    proc = qtool_quantize(llama32, ours, ftype)
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)
    if ftype == "Q4_K_M":
        types = {name: t for name, t, _, _ in tensors_of(ours)}
        # use_more_bits(i, 32): layers 0-3, 28-31 and every third from 6.
        more = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
        assert [i for i in range(32) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more
        assert [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == more
        assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"


def test_bf16_input_matches_llama_cpp(tmp_path, qtool_quantize):
    src = write_llama(tmp_path / "bf16.gguf", n_layer=4, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                      n_vocab=300, tied=True, dtype="BF16", seed=3)
    for ftype in ("Q4_K_M", "Q8_0"):
        ref, ours = tmp_path / f"llama-{ftype}.gguf", tmp_path / f"qtool-{ftype}.gguf"
        assert llama_quantize(src, ref, ftype).returncode == 0
        proc = qtool_quantize(src, ours, ftype)
        assert proc.returncode == 0, proc.stderr
        assert_same_gguf(ours, ref)


def test_eight_expert_model_matches_llama_cpp(tmp_path, qtool_quantize):
    src = write_llama(tmp_path / "moe.gguf", n_layer=4, n_embd=256, n_ff=256, n_head=4, n_head_kv=4,
                      n_vocab=256, tied=False, n_expert=8, seed=5)
    for ftype in ("Q4_K_M", "Q3_K_M"):
        ref, ours = tmp_path / f"llama-{ftype}.gguf", tmp_path / f"qtool-{ftype}.gguf"
        assert llama_quantize(src, ref, ftype).returncode == 0
        proc = qtool_quantize(src, ours, ftype)
        assert proc.returncode == 0, proc.stderr
        assert_same_gguf(ours, ref)
    types = {name: t for name, t, _, _ in tensors_of(tmp_path / "qtool-Q4_K_M.gguf")}
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.0.attn_k.weight"] == "Q8_0"
    assert types["blk.0.attn_output.weight"] == "Q5_K" and types["blk.0.ffn_gate_inp.weight"] == "F32"


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q4_K_S", "Q3_K_M", "Q2_K"])
def test_70b_class_plan_matches_llama_cpp(ftype, tmp_path_factory, qtool_quantize, tmp_path):
    d = tmp_path_factory.getbasetemp() / "llama80"
    d.mkdir(exist_ok=True)
    src = d / "llama80.gguf"
    if not src.exists():
        write_llama(src, n_layer=80, n_embd=256, n_ff=32, n_head=8, n_head_kv=1, n_vocab=64,
                    tied=True, dtype="F16", seed=7)
    proc = llama_quantize(src, tmp_path / "none.gguf", ftype, dry_run=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = qtool_quantize(src, tmp_path / "none.gguf", ftype, "--dry-run")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == log_plan(proc.stderr + proc.stdout)


@pytest.fixture(scope="module")
def odd_model(module_tmp) -> Path:
    d = module_tmp("odd")
    return write_llama(d / "odd.gguf", n_layer=2, n_embd=256, n_ff=256, n_head=4, n_head_kv=4,
                       n_vocab=64, tied=True, extra={"blk.0.odd_proj.weight": (16, 48),
                                                     "blk.1.odd_proj.weight": (16, 96)})


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K"])
def test_row_lengths_without_a_block_fall_back_like_llama_cpp(ftype, odd_model, qtool_quantize, tmp_path):
    """ne[0] = 48: no 32-block type fits, so everything falls back to F16; ne[0] = 96: K-quants
    fall back to their 32-block partners."""
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    assert llama_quantize(odd_model, ref, ftype).returncode == 0
    proc = qtool_quantize(odd_model, ours, ftype)
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)
    types = {n: t for n, t, _, _ in tensors_of(ours)}
    assert types["blk.0.odd_proj.weight"] == "F16"
    dry = llama_quantize(odd_model, tmp_path / "none.gguf", ftype, dry_run=True)
    ours_dry = qtool_quantize(odd_model, tmp_path / "none.gguf", ftype, "--dry-run")
    assert ours_dry.stdout.splitlines() == log_plan(dry.stderr + dry.stdout)


OVERRIDES = {
    "tensor_types": (["--tensor-type", "attn_q=q8_0", "--tensor-type", "ffn_(up|gate)=q5_k"],
                     dict(tensor_types=[["attn_q", GGML_TYPE_IDS["Q8_0"]], ["ffn_(up|gate)", GGML_TYPE_IDS["Q5_K"]]])),
    "attn_v_partial": (["--tensor-type", r"blk\.[0-3]\.attn_v=q8_0"],
                       dict(tensor_types=[[r"blk\.[0-3]\.attn_v", GGML_TYPE_IDS["Q8_0"]]])),
    "output_type": (["--output-tensor-type", "q8_0"], dict(output_tensor_type=GGML_TYPE_IDS["Q8_0"])),
    "token_embd_type": (["--token-embedding-type", "q5_1"], dict(token_embedding_type=GGML_TYPE_IDS["Q5_1"])),
    "pure": (["--pure"], dict(pure=True)),
    "leave_output": (["--leave-output-tensor"], dict(quantize_output_tensor=False)),
}


@pytest.mark.parametrize("case", list(OVERRIDES))
def test_overrides_match_llama_cpp(case, llama32, qtool_quantize, tmp_path):
    flags, params = OVERRIDES[case]
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    proc = llama_quantize(llama32, ref, "Q4_K_M", **params)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = qtool_quantize(llama32, ours, "Q4_K_M", *flags)
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)
    dry = llama_quantize(llama32, tmp_path / "none.gguf", "Q4_K_M", dry_run=True, **params)
    ours_dry = qtool_quantize(llama32, tmp_path / "none.gguf", "Q4_K_M", "--dry-run", *flags)
    assert ours_dry.stdout.splitlines() == log_plan(dry.stderr + dry.stdout)


def test_tied_embedding_takes_the_output_type_override(smollm2_f16, qtool_quantize, tmp_path):
    """Without output.weight, --output-tensor-type also decides token_embd (llama.cpp's rule)."""
    ref, ours = tmp_path / "llama.gguf", tmp_path / "qtool.gguf"
    params = dict(output_tensor_type=GGML_TYPE_IDS["Q5_0"])
    assert llama_quantize(smollm2_f16, ref, "Q6_K", **params).returncode == 0
    proc = qtool_quantize(smollm2_f16, ours, "Q6_K", "--output-tensor-type", "q5_0")
    assert proc.returncode == 0, proc.stderr
    assert_same_gguf(ours, ref)
    assert {n: t for n, t, _, _ in tensors_of(ours)}["token_embd.weight"] == "Q5_0"


@pytest.mark.parametrize("arch,ftype", [("qwen2", "Q4_K_M"), ("qwen2", "Q4_K_S"), ("qwen3", "Q8_0"),
                                        ("qwen3", "Q5_K_M")])
def test_other_architectures_follow_the_generic_rules(arch, ftype, tmp_path, qtool_quantize):
    """llama.cpp's rules are name-based for every architecture; qtool applies them too."""
    src = write_llama(tmp_path / f"{arch}.gguf", n_layer=8, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                      n_vocab=64, tied=True, dtype="F16", arch=arch)
    proc = llama_quantize(src, tmp_path / "none.gguf", ftype, dry_run=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = qtool_quantize(src, tmp_path / "none.gguf", ftype, "--dry-run")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == log_plan(proc.stderr + proc.stdout)


def test_size_class_unknown_for_architecture_is_a_clear_error(tmp_path, qtool_quantize):
    """Q4_K_M consults llama.cpp's per-architecture 70B class for attn_v; qtool refuses to guess it."""
    src = write_llama(tmp_path / "qwen3.gguf", n_layer=8, n_embd=256, n_ff=256, n_head=4, n_head_kv=2,
                      n_vocab=64, tied=True, dtype="F16", arch="qwen3")
    out = tmp_path / "out.gguf"
    proc = qtool_quantize(src, out, "Q4_K_M")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "qwen3" in proc.stderr and "--pure" in proc.stderr
    assert not out.exists()
    assert qtool_quantize(src, out, "Q4_K_M", "--pure").returncode == 0
