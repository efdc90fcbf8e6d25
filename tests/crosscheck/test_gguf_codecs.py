"""GGML block codecs: qtool against gguf-py and against llama.cpp itself, bit for bit.

Needs `cargo build -p qtool-quantizers --examples` (the `gguf_codec` example).

(a) dequantize: qtool == gguf-py's `gguf.quants.dequantize` on random valid blocks, and
    qtool == ggml's own `dequantize_row_*` (llama.cpp's `libggml-base`) for every type.
(b) quantize: qtool == gguf-py's quantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4).
(c) quantize: qtool == llama.cpp's `ggml_quantize_chunk` (no importance matrix, i.e. the
    `quantize_row_*_ref` functions `llama-quantize` runs) for every type qtool quantizes, on
    random rows of several distributions and on adversarial rows.
(d) importance-weighted quantize: qtool == `ggml_quantize_chunk` with an imatrix (the
    `quantize_row_*_impl` functions of `llama-quantize --imatrix`).

The llama.cpp checks need `pip install llama-cpp-python` (it builds llama.cpp and ships
libggml-base.so); without it they skip with that reason. Everything else always runs.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq
from gguf.constants import GGML_QUANT_SIZES

# Types qtool decodes (block types) and the subset it quantizes.
DEQUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "MXFP4"]
QUANT_TYPES = DEQUANT_TYPES
# gguf-py 0.19 has no Q8_K codec.
GGUF_PY_DEQUANT = [t for t in DEQUANT_TYPES if t != "Q8_K"]
GGUF_PY_QUANT = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4"]
PLAIN_TYPES = ["F16", "BF16"]

# Byte offsets of the fp16 fields inside each block (ggml-common.h), kept finite in random blocks.
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "MXFP4": [],
}

N_PER_ROW = 512  # two k-quant super-blocks, sixteen legacy blocks per row
RANDOM_ROWS = 96  # per distribution


def block_info(name: str) -> tuple[int, int]:
    if name == "Q8_K":
        return 256, 292
    return GGML_QUANT_SIZES[T[name]]


# ---------------------------------------------------------------------------------------------
# qtool side: the gguf_codec example


@pytest.fixture(scope="module")
def codec(example_bin, module_tmp):
    exe = example_bin("gguf_codec")
    work = module_tmp("gguf_codec")

    def quantize(ty: str, x: np.ndarray) -> bytes:
        src, dst = work / "in.f32", work / "out.bin"
        src.write_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
        run(exe, "quantize", ty, src, dst)
        return dst.read_bytes()

    def quantize_rows(ty: str, x: np.ndarray, n_per_row: int) -> bytes:
        src, dst = work / "in.f32", work / "out.bin"
        src.write_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
        run(exe, "quantize-rows", ty, n_per_row, src, dst)
        return dst.read_bytes()

    def dequantize(ty: str, data: bytes) -> np.ndarray:
        src, dst = work / "in.bin", work / "out.f32"
        src.write_bytes(data)
        run(exe, "dequantize", ty, src, dst)
        return np.frombuffer(dst.read_bytes(), dtype="<f4")

    def quantize_rows_weighted(ty: str, x: np.ndarray, n_per_row: int, imatrix: np.ndarray) -> bytes:
        src, imx, dst = work / "in.f32", work / "imatrix.f32", work / "out.bin"
        src.write_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
        imx.write_bytes(np.ascontiguousarray(imatrix, dtype="<f4").tobytes())
        run(exe, "quantize-rows-weighted", ty, n_per_row, imx, src, dst)
        return dst.read_bytes()

    codec.quantize, codec.quantize_rows, codec.dequantize = quantize, quantize_rows, dequantize
    codec.quantize_rows_weighted = quantize_rows_weighted
    return codec


def run(exe: Path, *args) -> None:
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"gguf_codec {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}")


# ---------------------------------------------------------------------------------------------
# llama.cpp side: libggml-base from llama-cpp-python, through ctypes


class Ggml:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_int64, ctypes.c_void_p,
        ]

    def row_fn(self, prefix: str, ty: str, suffix: str = ""):
        # ggml-quants.c exports quantize_row_<t>_ref / dequantize_row_<t> (t as in q4_K, mxfp4).
        name = prefix + ty.lower().replace("_k", "_K") + suffix
        fn = getattr(self.lib, name)
        fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        return fn

    def quantize(self, ty: str, x: np.ndarray, n_per_row: int, imatrix: np.ndarray | None = None) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            assert imatrix.size == n_per_row
        block, size = block_info(ty)
        dst = np.zeros(x.size // block * size, dtype=np.uint8)
        if ty == "Q8_K":
            # Not in ggml_quantize_chunk, and its traits leave from_float_ref unset; the
            # reference function itself is exported.
            self.row_fn("quantize_row_", ty, "_ref")(x.ctypes.data, dst.ctypes.data, x.size)
        else:
            nrows = x.size // n_per_row
            imx = None if imatrix is None else imatrix.ctypes.data
            written = self.lib.ggml_quantize_chunk(int(T[ty]), x.ctypes.data, dst.ctypes.data, 0, nrows, n_per_row, imx)
            assert written == dst.size, (ty, written, dst.size)
        return dst.tobytes()

    def dequantize(self, ty: str, data: bytes) -> np.ndarray:
        block, size = block_info(ty)
        src = np.frombuffer(data, dtype=np.uint8).copy()
        out = np.zeros(len(data) // size * block, dtype=np.float32)
        self.row_fn("dequantize_row_", ty)(src.ctypes.data, out.ctypes.data, out.size)
        return out


@pytest.fixture(scope="module")
def ggml() -> Ggml:
    try:
        import llama_cpp
    except ImportError as e:
        pytest.skip(f"skipped: llama-cpp-python is not importable ({e}); pip install llama-cpp-python")
    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("libggml-base.so*")) + sorted(libdir.glob("libggml-base.dylib"))
    assert candidates, f"llama_cpp is installed but {libdir} has no libggml-base"
    return Ggml(ctypes.CDLL(str(candidates[0])))


# ---------------------------------------------------------------------------------------------
# Inputs


def random_blocks(ty: str, n_blocks: int, rng: np.random.Generator) -> bytes:
    """Random block bytes whose fp16 scales are finite (normal, subnormal or zero)."""
    block, size = block_info(ty)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if ty == "Q8_K":
        d = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-8, 3, n_blocks)).astype("<f4")
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
        return raw.tobytes()
    for off in FP16_FIELDS[ty]:
        h = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint32).astype(np.uint16)
        h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/NaN exponent -> a finite one
        h[:4] = [0x0000, 0x8000, 0x0001, 0x83FF]  # zeros and subnormals
        raw[:, off:off + 2] = h.astype("<u2").view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


def random_rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = (RANDOM_ROWS, N_PER_ROW)
    scales = 10.0 ** rng.uniform(-4, 3, size=(RANDOM_ROWS, 1))
    return {
        "normal": rng.standard_normal(n) * scales,
        "uniform": rng.uniform(-1, 1, n) * scales,
        "laplace": rng.laplace(size=n) * scales,
        "student_t2": rng.standard_t(2, size=n) * scales,
        "offset_normal": (rng.standard_normal(n) + rng.uniform(-3, 3, (RANDOM_ROWS, 1))) * scales,
        # Values on a coarse grid hit rounding ties (x.5 after scaling) in every quantizer.
        "half_grid": np.round(rng.uniform(-64, 64, n) * 2) / 2,
        "quarter_grid_small": np.round(rng.uniform(-4, 4, n) * 4) / 4,
    }


def adversarial_rows() -> dict[str, np.ndarray]:
    z = np.zeros(N_PER_ROW, dtype=np.float32)
    rows = {
        "zeros": z,
        "negative_zeros": -z,
        "constant_pos": z + 0.37,
        "constant_neg": z - 1234.5,
        "single_nonzero": z.copy(),
        "single_nonzero_neg": z.copy(),
        "all_negative": -np.abs(np.random.default_rng(11).standard_normal(N_PER_ROW)) - 0.25,
        "all_positive": np.abs(np.random.default_rng(12).standard_normal(N_PER_ROW)) + 0.25,
        "huge_outlier": np.random.default_rng(13).standard_normal(N_PER_ROW) * 1e-3,
        "fp16_overflow_scale": np.random.default_rng(14).standard_normal(N_PER_ROW) * 1e7,
        "subnormals": np.array([np.float32(1e-45) * (i % 53) * (-1) ** i for i in range(N_PER_ROW)]),
        "tiny_normals": np.random.default_rng(15).standard_normal(N_PER_ROW) * 1e-30,
        "fp16_subnormal_scale": np.random.default_rng(16).standard_normal(N_PER_ROW) * 1e-6,
        "alternating_sign": np.array([(-1.0) ** i * (1 + i % 7) for i in range(N_PER_ROW)]),
        "ramp": np.linspace(-1, 1, N_PER_ROW),
        "one_block_hot": np.concatenate([np.zeros(N_PER_ROW - 32), np.linspace(1, 32, 32)]),
        "max_equals_minus_min": np.tile([1.0, -1.0], N_PER_ROW // 2),
    }
    rows["single_nonzero"][100] = 3.0
    rows["single_nonzero_neg"][300] = -0.01
    rows["huge_outlier"][7] = 60000.0
    rows["huge_outlier"][400] = -45000.0
    return {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}


def all_rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = list(random_rows(rng).values()) + [r[None, :] for r in adversarial_rows().values()]
    return np.concatenate(parts).astype(np.float32)


def assert_same_bytes(ty: str, ours: bytes, theirs: bytes, n_per_row: int, names=None) -> None:
    if ours == theirs:
        return
    _, size = block_info(ty)
    row_bytes = n_per_row // block_info(ty)[0] * size
    a = np.frombuffer(ours, np.uint8).reshape(-1, row_bytes)
    b = np.frombuffer(theirs, np.uint8).reshape(-1, row_bytes)
    bad = np.nonzero((a != b).any(axis=1))[0]
    first = bad[0]
    col = np.nonzero(a[first] != b[first])[0][0]
    raise AssertionError(
        f"{ty}: {len(bad)} of {len(a)} rows differ; first row {first}"
        f"{' (' + names[first] + ')' if names else ''}, byte {col} (block {col // size}, offset {col % size}): "
        f"qtool {a[first, col]:#04x} vs reference {b[first, col]:#04x}"
    )


def assert_same_bits(ty: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, ty
    a, b = ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32)
    bad = np.nonzero(a != b)[0]
    assert bad.size == 0, (
        f"{ty}: {bad.size} values differ; first at {bad[0]}: qtool {ours[bad[0]]!r} vs reference {theirs[bad[0]]!r}"
    )


def row_names() -> list[str]:
    names = []
    for k in random_rows(np.random.default_rng(0)):
        names += [f"{k}[{i}]" for i in range(RANDOM_ROWS)]
    return names + list(adversarial_rows())


# ---------------------------------------------------------------------------------------------
# (a) dequantize


@pytest.mark.parametrize("ty", GGUF_PY_DEQUANT)
def test_dequantize_matches_gguf_py_bit_for_bit(codec, ty):
    data = random_blocks(ty, 2048, np.random.default_rng(100 + DEQUANT_TYPES.index(ty)))
    ours = codec.dequantize(ty, data)
    theirs = gq.dequantize(np.frombuffer(data, dtype=np.uint8), T[ty]).reshape(-1)
    assert_same_bits(ty, ours, theirs)


@pytest.mark.parametrize("ty", DEQUANT_TYPES)
def test_dequantize_matches_llama_cpp_bit_for_bit(codec, ggml, ty):
    data = random_blocks(ty, 2048, np.random.default_rng(200 + DEQUANT_TYPES.index(ty)))
    assert_same_bits(ty, codec.dequantize(ty, data), ggml.dequantize(ty, data))


# ---------------------------------------------------------------------------------------------
# (b) quantize against gguf-py


# gguf-py picks the signed maximum with argmax, so an all -0.0 block gets max = -0.0 and
# d = -0.0/-8 = +0.0; ggml starts from max = 0.0 and never replaces it, so d = 0.0/-8 = -0.0.
# qtool follows ggml (checked against llama.cpp below); the blocks differ only in d's sign bit.
GGUF_PY_SIGN_OF_ZERO = {("Q4_0", "negative_zeros"), ("Q5_0", "negative_zeros")}


@pytest.mark.parametrize("ty", GGUF_PY_QUANT)
def test_quantize_matches_gguf_py_byte_for_byte(codec, ty):
    x = all_rows(300)
    names = row_names()
    row_bytes = N_PER_ROW // block_info(ty)[0] * block_info(ty)[1]
    ours = np.frombuffer(codec.quantize(ty, x), np.uint8).reshape(-1, row_bytes).copy()
    theirs = gq.quantize(x, T[ty]).reshape(-1, row_bytes).copy()
    for i, name in enumerate(names):
        if (ty, name) in GGUF_PY_SIGN_OF_ZERO:
            d_sign_bytes = np.arange(1, row_bytes, block_info(ty)[1])  # high byte of each fp16 d
            assert (ours[i, d_sign_bytes] == 0x80).all() and (theirs[i, d_sign_bytes] == 0x00).all()
            ours[i, d_sign_bytes] = theirs[i, d_sign_bytes]
    assert_same_bytes(ty, ours.tobytes(), theirs.tobytes(), N_PER_ROW, names)


# ---------------------------------------------------------------------------------------------
# (c) quantize against llama.cpp


@pytest.mark.parametrize("ty", QUANT_TYPES + PLAIN_TYPES)
def test_quantize_matches_llama_cpp_byte_for_byte(codec, ggml, ty):
    x = all_rows(400)
    ours = codec.quantize(ty, x)
    theirs = ggml.quantize(ty, x, N_PER_ROW)
    if ty in PLAIN_TYPES:
        assert ours == theirs, ty
    else:
        assert_same_bytes(ty, ours, theirs, N_PER_ROW, row_names())
    print(f"{ty}: {x.shape[0]} rows of {N_PER_ROW} byte-identical to llama.cpp")


@pytest.mark.parametrize("ty", ["Q4_K", "Q6_K", "Q8_0"])
def test_parallel_row_quantization_matches_llama_cpp(codec, ggml, ty):
    # Many rows so rayon splits the work; the bytes must not depend on how.
    x = np.random.default_rng(500).standard_normal((257, 1024)).astype(np.float32)
    assert_same_bytes(ty, codec.quantize_rows(ty, x, 1024), ggml.quantize(ty, x, 1024), 1024)


@pytest.mark.parametrize("ty", ["Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K"])
def test_dequantize_of_llama_cpp_quantization_matches(codec, ggml, ty):
    x = all_rows(600)
    data = ggml.quantize(ty, x, N_PER_ROW)
    assert_same_bits(ty, codec.dequantize(ty, data), ggml.dequantize(ty, data))


# ---------------------------------------------------------------------------------------------
# (d) importance-weighted quantize against llama.cpp

# Q8_K has no ggml_quantize_chunk entry; every other quantizer takes the imatrix (Q8_0 and
# MXFP4 ignore it, which this checks too).
WEIGHTED_TYPES = [t for t in QUANT_TYPES if t != "Q8_K"]


def imatrices(rng: np.random.Generator) -> dict[str, np.ndarray]:
    lognormal = np.exp(rng.standard_normal(N_PER_ROW) * 2).astype(np.float32)
    sparse = lognormal.copy()
    sparse[rng.random(N_PER_ROW) < 0.1] = 0.0
    return {
        "lognormal": lognormal,
        "with_zeros": sparse,
        "ones": np.ones(N_PER_ROW, dtype=np.float32),
        "one_zero_block": np.concatenate([np.zeros(256), np.full(N_PER_ROW - 256, 0.5)]).astype(np.float32),
    }


@pytest.mark.parametrize("ty", WEIGHTED_TYPES)
def test_weighted_quantize_matches_llama_cpp_byte_for_byte(codec, ggml, ty):
    x = all_rows(700)
    for name, imatrix in imatrices(np.random.default_rng(701)).items():
        ours = codec.quantize_rows_weighted(ty, x, N_PER_ROW, imatrix)
        theirs = ggml.quantize(ty, x, N_PER_ROW, imatrix)
        try:
            assert_same_bytes(ty, ours, theirs, N_PER_ROW, row_names())
        except AssertionError as e:
            raise AssertionError(f"imatrix {name}: {e}") from None
    print(f"{ty}: {x.shape[0]} rows x {len(imatrices(np.random.default_rng(0)))} imatrices byte-identical")


# ---------------------------------------------------------------------------------------------
# Real weights: SmolLM2-135M-Instruct Q4_1 (Q4_1, Q8_0 and F32 tensors)


@pytest.fixture(scope="module")
def smollm2_tensors(smollm2_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(smollm2_gguf)
    wanted = {"token_embd.weight"} | {t.name for t in reader.tensors if t.name.startswith(("blk.0.", "blk.29."))}
    return [t for t in reader.tensors if t.name in wanted]


def test_real_model_tensors_decode_like_gguf_py(codec, smollm2_tensors):
    seen = set()
    for t in smollm2_tensors:
        ty = t.tensor_type.name
        seen.add(ty)
        data = np.ascontiguousarray(t.data).tobytes()
        theirs = gq.dequantize(np.frombuffer(data, np.uint8), t.tensor_type).reshape(-1)
        assert_same_bits(f"{t.name} ({ty})", codec.dequantize(ty, data), theirs)
    assert seen == {"Q4_1", "Q8_0", "F32"}, seen


def test_real_weights_requantize_like_llama_cpp(codec, ggml, smollm2_tensors):
    (down,) = [t for t in smollm2_tensors if t.name == "blk.0.ffn_down.weight"]
    n_per_row = int(down.shape[0])  # ne[0] = 1536, six super-blocks per row
    x = gq.dequantize(np.ascontiguousarray(down.data), down.tensor_type).reshape(-1, n_per_row)
    imatrix = np.exp(np.random.default_rng(800).standard_normal(n_per_row)).astype(np.float32)
    for ty in QUANT_TYPES:
        assert_same_bytes(ty, codec.quantize(ty, x), ggml.quantize(ty, x, n_per_row), n_per_row)
        if ty in WEIGHTED_TYPES:
            ours = codec.quantize_rows_weighted(ty, x, n_per_row, imatrix)
            assert_same_bytes(ty, ours, ggml.quantize(ty, x, n_per_row, imatrix), n_per_row)
    print(f"{len(QUANT_TYPES)} types on {x.shape[0]} real rows of {n_per_row} byte-identical")
