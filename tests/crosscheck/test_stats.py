"""`qtool inspect --stats --json` against numpy on independently decoded data.

safetensors: a file written here with the safetensors package (`serialize_file`), values drawn
from a seeded generator and decoded to float64 by numpy/ml_dtypes, with NaN and Inf planted.
GGUF: the SmolLM2 Q4_1 checkpoint's Q4_1, Q8_0 and F32 tensors, dequantized by gguf-py.

Tolerances: min/max/absmax and the nan/inf counts exact; mean and std within a relative 1e-6
(numpy sums in a different order; qtool documents f64 two-pass chunks merged by Chan's formula).
NaN/Inf are excluded from the moments and extremes on both sides; std is population (ddof=0).
"""

import math

import ml_dtypes
import numpy as np
import pytest
import safetensors

RTOL = 1e-6


def reference_stats(values: np.ndarray) -> dict:
    x = np.asarray(values, dtype=np.float64).ravel()
    finite = x[np.isfinite(x)]
    ref = {"nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum())}
    if finite.size == 0:
        ref.update(min=None, max=None, absmax=None, mean=None, std=None)
    else:
        ref.update(
            min=float(finite.min()),
            max=float(finite.max()),
            absmax=float(np.abs(finite).max()),
            mean=float(finite.mean()),
            std=float(finite.std()),
        )
    return ref


def assert_stats_match(name: str, got: dict, ref: dict) -> None:
    for key in ("nan", "inf", "min", "max", "absmax"):
        assert got[key] == ref[key], f"{name}: {key} qtool={got[key]!r} numpy={ref[key]!r}"
    for key in ("mean", "std"):
        if ref[key] is None:
            assert got[key] is None, f"{name}: {key} should be null"
            continue
        # Relative to the value; a mean that is ~0 against its spread is judged relative to a
        # thousandth of the std instead, since a relative error of a ~0 value is meaningless.
        scale = max(abs(ref[key]), ref["std"] * 1e-3, ref["absmax"] * 1e-9)
        assert math.isclose(got[key], ref[key], rel_tol=0, abs_tol=RTOL * scale), (
            f"{name}: {key} qtool={got[key]!r} numpy={ref[key]!r}"
        )


def inspect_stats(qtool_json, path) -> dict:
    doc = qtool_json("inspect", path, "--stats")
    out = {}
    for t in doc["tensors"]:
        assert "stats" in t, f"{t['name']}: no stats in --stats output"
        out[t["name"]] = t
    return out


def _make_tensors(rng: np.random.Generator) -> dict:
    """name -> (safetensors dtype, little-endian array, decoded float64 values)."""
    tensors = {}

    def add(name, st_dtype, arr):
        arr = np.ascontiguousarray(arr)
        tensors[name] = (st_dtype, arr, arr.astype(np.float64))

    base = rng.standard_normal((64, 300)).astype(np.float32) * 0.05 + 0.01
    f32 = base.copy()
    f32[3, 7] = np.nan
    f32[10, 0] = np.inf
    f32[20, 5] = -np.inf
    f32[63, 299] = np.float32(-3.3e38)  # near -FLT_MAX: the moments must not overflow
    add("plain.f32", "F32", f32.astype("<f4"))

    f16 = (base * 1000).astype(np.float16)
    f16[0, :3] = [np.nan, np.inf, -np.inf]
    f16[1, 1] = np.float16(6e-8)  # a subnormal
    add("plain.f16", "F16", f16.astype("<f2"))

    bf = (base * 1e30).astype(ml_dtypes.bfloat16)
    bf[5, 5] = np.nan
    bf[6, 6] = -np.inf
    add("plain.bf16", "BF16", bf)

    e4 = (base * 8000).astype(np.float32)
    e4 = np.clip(e4, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    codes = e4.view(np.uint8)
    codes[2, :4] = [0x7F, 0xFF, 0x7E, 0xFE]  # +NaN, -NaN, +448, -448
    codes[3, :2] = [0x01, 0x81]  # smallest subnormals
    add("fp8.e4m3", "F8_E4M3", e4)

    e5 = (base * 2e5).astype(np.float32)
    e5 = np.clip(e5, -57344, 57344).astype(ml_dtypes.float8_e5m2)
    codes = e5.view(np.uint8)
    codes[4, :5] = [0x7C, 0xFC, 0x7E, 0xFD, 0x7B]  # +inf, -inf, NaN, -NaN (payload), max
    add("fp8.e5m2", "F8_E5M2", e5)

    allnan = np.full((4,), np.nan, dtype=np.float32)
    add("degenerate.all_nan", "F32", allnan)
    add("degenerate.empty", "F32", np.zeros((0, 3), dtype=np.float32))
    return tensors


@pytest.fixture(scope="module")
def st_file(module_tmp):
    rng = np.random.default_rng(20261121)
    tensors = _make_tensors(rng)
    path = module_tmp("stats") / "mixed.safetensors"
    # The safetensors package names dtypes as numpy/ml_dtypes do ("float8_e4m3fn") and reads
    # the raw buffers, which `tensors` keeps alive across the call.
    specs = {
        name: safetensors.TensorSpec(
            dtype=arr.dtype.name, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes
        )
        for name, (_, arr, _) in tensors.items()
    }
    safetensors.serialize_file(specs, str(path))
    return path, {name: (st_dtype, values) for name, (st_dtype, _, values) in tensors.items()}


def test_safetensors_stats_match_numpy(qtool_json, st_file):
    path, decoded = st_file
    got = inspect_stats(qtool_json, path)
    assert set(got) == set(decoded)
    for name, (st_dtype, values) in decoded.items():
        assert got[name]["dtype"] == st_dtype, name
        assert got[name]["shape"] == list(values.shape), name
        assert_stats_match(name, got[name]["stats"], reference_stats(values))


def test_planted_non_finite_values_are_counted(qtool_json, st_file):
    path, _ = st_file
    got = inspect_stats(qtool_json, path)
    assert (got["plain.f32"]["stats"]["nan"], got["plain.f32"]["stats"]["inf"]) == (1, 2)
    assert (got["fp8.e4m3"]["stats"]["nan"], got["fp8.e4m3"]["stats"]["inf"]) == (2, 0)
    assert got["fp8.e4m3"]["stats"]["absmax"] == 448.0
    assert (got["fp8.e5m2"]["stats"]["nan"], got["fp8.e5m2"]["stats"]["inf"]) == (2, 2)
    assert got["fp8.e5m2"]["stats"]["absmax"] == 57344.0
    empty = got["degenerate.empty"]["stats"]
    assert (empty["nan"], empty["inf"], empty["mean"], empty["min"]) == (0, 0, None, None)


# A few tensors of each type keep the runtime low; gguf-py's dequantizer is numpy, not fast.
GGUF_PICKS = {"Q4_1": 4, "Q8_0": 1, "F32": 6}


def test_gguf_stats_match_gguf_py(qtool_json, smollm2_gguf):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(smollm2_gguf))
    got = inspect_stats(qtool_json, smollm2_gguf)
    remaining = dict(GGUF_PICKS)
    checked = 0
    for t in reader.tensors:
        ty = t.tensor_type.name
        if remaining.get(ty, 0) == 0:
            continue
        remaining[ty] -= 1
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        assert values.size == t.n_elements
        entry = got[t.name]
        assert entry["dtype"] == ty
        assert_stats_match(t.name, entry["stats"], reference_stats(values))
        checked += 1
    assert all(v == 0 for v in remaining.values()), f"SmolLM2 lacks some types: {remaining}"
    assert checked == sum(GGUF_PICKS.values())
