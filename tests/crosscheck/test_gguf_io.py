"""GGUF container cross-checks between qtool and gguf-py (the reference reader/writer of llama.cpp).

(a) gguf-py reads qtool's rewrite of a real llama.cpp GGUF with identical KVs, tensor infos and
    tensor bytes (and the rewrite is byte-identical, since the input already has llama.cpp's layout);
(b) qtool reads a file written by gguf-py's GGUFWriter (all scalar types, flat and nested arrays,
    F32/F16/Q8_0 tensors) with the same content, and rewrites it byte for byte;
(c) qtool's GGML type table agrees with gguf-py's GGMLQuantizationType / GGML_QUANT_SIZES, except
    for the documented, asserted exceptions.

Needs `cargo build --workspace --examples` (the `rewrite_gguf` example of qtool-formats).
"""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402


@pytest.fixture(scope="module")
def rewrite_gguf(example_bin):
    exe = example_bin("rewrite_gguf")

    def run(*args):
        proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"rewrite_gguf {' '.join(map(str, args))} failed:\n{proc.stderr}")
        return proc.stdout

    return run


def field_view(field):
    """A field as gguf-py sees it: its value types and the exact bytes of all its parts."""
    types = [GGUFValueType(t).name for t in field.types]
    return types, b"".join(bytes(p.tobytes()) for p in field.parts)


def test_gguf_py_reads_qtool_rewrite_of_smollm2(smollm2_gguf, rewrite_gguf, tmp_path):
    out = tmp_path / "rewrite.gguf"
    rewrite_gguf(smollm2_gguf, out)

    orig, new = GGUFReader(smollm2_gguf), GGUFReader(out)
    assert list(new.fields) == list(orig.fields)
    for name, field in orig.fields.items():
        assert field_view(new.fields[name]) == field_view(field), name
        if len(field.types) <= 2:  # contents() flattens nested arrays; the bytes cover those
            assert new.fields[name].contents() == field.contents(), name

    assert len(new.tensors) == len(orig.tensors) == 272
    for a, b in zip(orig.tensors, new.tensors):
        assert (b.name, b.tensor_type, list(b.shape), b.n_bytes) == (
            a.name, a.tensor_type, list(a.shape), a.n_bytes,
        )
        assert np.array_equal(a.data.view(np.uint8), b.data.view(np.uint8)), a.name

    # llama.cpp's layout in, llama.cpp's layout out: nothing may move.
    assert out.read_bytes() == Path(smollm2_gguf).read_bytes()


def test_qtool_dump_of_smollm2_matches_gguf_py(smollm2_gguf, rewrite_gguf):
    dump = json.loads(rewrite_gguf("--dump-json", smollm2_gguf))
    ref = GGUFReader(smollm2_gguf)
    assert dump["alignment"] == ref.alignment
    assert dump["data_offset"] == ref.data_offset
    assert [kv["key"] for kv in dump["kvs"]] == list(ref.fields)[3:]  # gguf-py adds 3 header fields
    for kv in dump["kvs"]:
        field = ref.fields[kv["key"]]
        assert kv["type"] == GGUFValueType(field.types[0]).name, kv["key"]
        if kv["type"] == "ARRAY":
            assert kv["element_type"] == GGUFValueType(field.types[1]).name
        assert_same_value(unwrap(kv), field.contents(), kv["key"])
    assert len(dump["tensors"]) == len(ref.tensors)
    for t, r in zip(dump["tensors"], ref.tensors):
        assert t["name"] == r.name
        assert t["type"] == r.tensor_type.name
        assert t["shape"] == [int(d) for d in r.shape]
        assert t["offset"] == r.data_offset
        assert t["nbytes"] == r.n_bytes


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
FLOAT_TYPES = ("FLOAT32", "FLOAT64")


def unwrap(typed):
    """qtool's typed JSON value -> plain Python (nested lists for nested arrays)."""
    if typed["type"] == "ARRAY":
        if typed["element_type"] == "ARRAY":
            return [unwrap(x) for x in typed["value"]]
        if typed["element_type"] in FLOAT_TYPES:
            return [decode_float(x) for x in typed["value"]]
        return typed["value"]
    return decode_float(typed["value"]) if typed["type"] in FLOAT_TYPES else typed["value"]


def decode_float(x):
    """qtool writes non-finite floats as strings (JSON has no number for them)."""
    return NON_FINITE[x] if isinstance(x, str) else x


def assert_same_value(got, want, key):
    if isinstance(want, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(want), key
        for g, w in zip(got, want):
            assert_same_value(g, w, key)
    elif isinstance(want, float):
        assert isinstance(got, (int, float)), key
        assert (math.isnan(got) and math.isnan(want)) or float(got) == want, (key, got, want)
    else:
        assert got == want and type(got) is type(want), (key, got, want)


# Every scalar type, flat arrays of several element types, and nested arrays.
F32 = np.float32
KVS = [
    ("test.u8", 200, GGUFValueType.UINT8, None),
    ("test.i8", -100, GGUFValueType.INT8, None),
    ("test.u16", 60000, GGUFValueType.UINT16, None),
    ("test.i16", -30000, GGUFValueType.INT16, None),
    ("test.u32", 4_000_000_000, GGUFValueType.UINT32, None),
    ("test.i32", -2_000_000_000, GGUFValueType.INT32, None),
    ("test.f32", 0.1, GGUFValueType.FLOAT32, None),
    ("test.bool", True, GGUFValueType.BOOL, None),
    ("test.string", "héllo, wörld ✓", GGUFValueType.STRING, None),
    ("test.u64", 2**63 + 5, GGUFValueType.UINT64, None),
    ("test.i64", -(2**62), GGUFValueType.INT64, None),
    ("test.f64", -1e-300, GGUFValueType.FLOAT64, None),
    ("test.arr_i32", [1, -2, 3], GGUFValueType.ARRAY, None),
    ("test.arr_f32", [0.5, -1.25, 3e38], GGUFValueType.ARRAY, None),
    ("test.arr_u64", [0, 2**64 - 1], GGUFValueType.ARRAY, GGUFValueType.UINT64),
    ("test.arr_bool", [True, False, True], GGUFValueType.ARRAY, None),
    ("test.arr_str", ["a", "", "ünï"], GGUFValueType.ARRAY, None),
    ("test.arr_long", list(range(100)), GGUFValueType.ARRAY, GGUFValueType.UINT16),
    ("test.nested", [[1, 2], [3], [4, 5, 6]], GGUFValueType.ARRAY, None),
    ("test.nested_str", [["x", "y"], ["z"]], GGUFValueType.ARRAY, None),
]


def expected_float(value, vtype):
    return float(F32(value)) if vtype == GGUFValueType.FLOAT32 else value


def write_gguf_py_file(path):
    rng = np.random.default_rng(1234)
    w = GGUFWriter(path, arch="llama")
    for key, value, vtype, sub in KVS:
        w.add_key_value(key, value, vtype, sub_type=sub)
    tensors = {}
    f32 = rng.standard_normal((3, 8), dtype=np.float32)
    f16 = rng.standard_normal((5, 4)).astype(np.float16)
    x = rng.standard_normal((4, 64), dtype=np.float32)
    q8 = gguf.quants.quantize(x, GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.f32", f32)
    w.add_tensor("blk.0.f16", f16)
    w.add_tensor("blk.0.q8_0", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    tensors["blk.0.f32"] = ("F32", [8, 3], f32.tobytes())
    tensors["blk.0.f16"] = ("F16", [4, 5], f16.tobytes())
    tensors["blk.0.q8_0"] = ("Q8_0", [64, 4], q8.tobytes())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_qtool_reads_gguf_py_file(rewrite_gguf, tmp_path):
    src = tmp_path / "gguf_py.gguf"
    tensors = write_gguf_py_file(src)
    assert len(tensors["blk.0.q8_0"][2]) == 4 * 2 * 34

    dump = json.loads(rewrite_gguf("--dump-json", src))
    assert dump["version"] == 3 and dump["alignment"] == 32
    kvs = {kv["key"]: kv for kv in dump["kvs"]}
    assert [kv["key"] for kv in dump["kvs"]] == ["general.architecture"] + [k for k, *_ in KVS]
    assert kvs["general.architecture"] == {"key": "general.architecture", "type": "STRING", "value": "llama"}
    for key, value, vtype, sub in KVS:
        kv = kvs[key]
        assert kv["type"] == vtype.name, key
        if vtype == GGUFValueType.ARRAY:
            first = value[0]
            if isinstance(first, list):
                assert kv["element_type"] == "ARRAY"
                inner = kv["value"][0]["element_type"]
                assert inner == ("STRING" if isinstance(first[0], str) else "INT32"), key
            else:
                want_elem = sub or GGUFValueType.get_type(first)
                assert kv["element_type"] == want_elem.name, key
                if want_elem == GGUFValueType.FLOAT32:
                    value = [float(F32(v)) for v in value]
        assert_same_value(unwrap(kv), expected_float(value, vtype), key)

    # Metadata display form: long arrays summarised, short ones inline.
    meta = dump["metadata"]
    assert meta["test.arr_long"] == {"type": "array", "element_type": "uint16", "len": 100, "head": [0, 1, 2, 3]}
    assert meta["test.arr_i32"] == [1, -2, 3]
    assert meta["test.nested"] == [[1, 2], [3], [4, 5, 6]]

    ref = GGUFReader(src)
    data = src.read_bytes()
    assert [t["name"] for t in dump["tensors"]] == list(tensors)
    for t, r in zip(dump["tensors"], ref.tensors):
        dtype, shape, raw = tensors[t["name"]]
        assert (t["type"], t["shape"], t["nbytes"]) == (dtype, shape, len(raw))
        assert t["offset"] == r.data_offset
        assert data[t["offset"] : t["offset"] + t["nbytes"]] == raw

    # Same alignment, same order: qtool's writer must reproduce gguf-py's file exactly.
    out = tmp_path / "rewrite.gguf"
    rewrite_gguf(src, out)
    assert out.read_bytes() == data


def test_ggml_type_table_matches_gguf_py(rewrite_gguf):
    table = json.loads(rewrite_gguf("--ggml-types"))
    ours = {t["name"]: t for t in table}
    assert len(ours) == len(table), "duplicate names in qtool's table"
    assert len({t["id"] for t in table}) == len(table), "duplicate ids in qtool's table"

    # Documented exceptions, asserted so that a change on either side is noticed:
    # * Q8_1: ggml's block_q8_1 is {ggml_half d, s; int8 qs[32]} = 36 bytes; gguf-py 0.19 says 40.
    # * Q2_0 (id 42, 64 elements, 18 bytes) is newer than gguf-py 0.19, which lacks it.
    exceptions = {"Q8_1", "Q2_0"}
    assert ours["Q8_1"]["type_size"] == 36
    q8_1 = GGMLQuantizationType.Q8_1
    if GGML_QUANT_SIZES[q8_1] != (32, 36):
        assert GGML_QUANT_SIZES[q8_1] == (32, 40)
    assert (ours["Q2_0"]["id"], ours["Q2_0"]["block_size"], ours["Q2_0"]["type_size"]) == (42, 64, 18)

    theirs = {t.name: t for t in GGMLQuantizationType}
    for name, t in theirs.items():
        assert name in ours, f"gguf-py type {name} missing from qtool"
        assert ours[name]["id"] == t.value, name
        if name not in exceptions or GGML_QUANT_SIZES[t] == (ours[name]["block_size"], ours[name]["type_size"]):
            assert (ours[name]["block_size"], ours[name]["type_size"]) == GGML_QUANT_SIZES[t], name
    for name in ours:
        if name not in theirs:
            assert name in exceptions, f"qtool type {name} unknown to gguf-py and not documented"
