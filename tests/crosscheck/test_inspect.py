"""`qtool inspect --json` against the reference readers: gguf-py's GGUFReader and safetensors'
safe_open. Tensor count, names, dtypes, shapes, byte sizes and offsets must agree exactly."""

import json
import struct
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safe_open)
import numpy as np
import pytest
from safetensors import safe_open

import gguf
from conftest import FIXTURES

# Bytes per element of the safetensors dtypes these files use (sub-byte types excluded).
ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


def safetensors_reference(files: list[Path]) -> dict[str, tuple]:
    """name -> (dtype, shape, bytes, file, absolute offset), from safe_open and the raw header."""
    out = {}
    for path in files:
        raw = path.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dtype, shape = sl.get_dtype(), list(sl.get_shape())
                nbytes = int(np.prod(shape, dtype=np.uint64)) * ST_ITEMSIZE[dtype]
                begin = header[name]["data_offsets"][0]
                out[name] = (dtype, shape, nbytes, path.name, 8 + header_len + begin)
    return out


def qtool_tensors(doc: dict) -> dict[str, tuple]:
    return {
        t["name"]: (t["dtype"], t["shape"], t["bytes"], Path(t["file"]).name, t["offset"])
        for t in doc["tensors"]
    }


def check_safetensors(doc: dict, files: list[Path]) -> None:
    ref = safetensors_reference(files)
    ours = qtool_tensors(doc)
    assert doc["format"] == "safetensors"
    assert len(doc["tensors"]) == len(ref) == doc["summary"]["tensors"]
    assert sorted(ours) == sorted(ref)
    for name, want in ref.items():
        assert ours[name] == want, name
    assert doc["summary"]["bytes"] == sum(r[2] for r in ref.values())
    assert doc["summary"]["params"] == sum(int(np.prod(r[1], dtype=np.uint64)) for r in ref.values())


def check_gguf(doc: dict, path: Path) -> None:
    reader = gguf.GGUFReader(path)
    assert doc["format"] == "gguf"
    assert len(doc["tensors"]) == len(reader.tensors) == doc["summary"]["tensors"]
    # GGUF order is tensor-info order: compare position by position.
    for ours, ref in zip(doc["tensors"], reader.tensors):
        assert ours["name"] == ref.name
        assert ours["dtype"] == ref.tensor_type.name, ref.name
        assert ours["shape"] == [int(d) for d in ref.shape], ref.name  # ne[0] first
        assert ours["bytes"] == int(ref.n_bytes), ref.name
        assert ours["offset"] == int(ref.data_offset), ref.name
    assert doc["summary"]["bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert doc["summary"]["params"] == sum(int(t.n_elements) for t in reader.tensors)
    field = reader.get_field("general.file_type")
    if field is not None:
        file_type = gguf.LlamaFileType(int(field.parts[field.data[0]][0]))
        assert doc["scheme"] == f"gguf:{file_type.name}"
        assert doc["metadata"]["general.file_type"] == int(file_type)
    arch = reader.get_field("general.architecture")
    assert doc["metadata"]["general.architecture"] == bytes(arch.parts[arch.data[0]]).decode()


def test_tiny_llama_single(qtool_json):
    doc = qtool_json("inspect", FIXTURES / "tiny-llama")
    check_safetensors(doc, [FIXTURES / "tiny-llama/model.safetensors"])
    assert doc["scheme"] == "unquantized"


def test_tiny_llama_sharded(qtool_json):
    d = FIXTURES / "tiny-llama-sharded"
    doc = qtool_json("inspect", d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted({d / f for f in index["weight_map"].values()})
    check_safetensors(doc, shards)
    assert [Path(f).name for f in doc["files"]] == [s.name for s in shards]


def test_tiny_gguf(qtool_json):
    doc = qtool_json("inspect", FIXTURES / "tiny.gguf")
    check_gguf(doc, FIXTURES / "tiny.gguf")


def test_smollm2_gguf(qtool_json, smollm2_gguf):
    doc = qtool_json("inspect", smollm2_gguf)
    check_gguf(doc, smollm2_gguf)
    assert doc["scheme"] == "gguf:MOSTLY_Q4_1"
    tokens = doc["metadata"]["tokenizer.ggml.tokens"]
    assert tokens["len"] == 49152  # long arrays are summarised, not dumped


def test_minilm_safetensors(qtool_json, minilm_safetensors):
    doc = qtool_json("inspect", minilm_safetensors)
    check_safetensors(doc, [minilm_safetensors])
    assert doc["scheme"] == "unquantized"


def test_filter_matches_python_regex(qtool_json, minilm_safetensors):
    import re

    pattern = r"encoder\.layer\.[0-2]\..*weight$"
    doc = qtool_json("inspect", minilm_safetensors, "--filter", pattern)
    with safe_open(str(minilm_safetensors), framework="numpy") as f:
        want = sorted(k for k in f.keys() if re.search(pattern, k))
    assert sorted(t["name"] for t in doc["tensors"]) == want
    assert doc["summary"]["tensors"] == len(want) > 0


def _check_stats(stats: dict, values: np.ndarray, name: str) -> None:
    x = values.astype(np.float64).ravel()
    finite = x[np.isfinite(x)]
    assert stats["count"] == x.size, name
    assert stats["nan"] == int(np.isnan(x).sum()), name
    assert stats["inf"] == int(np.isinf(x).sum()), name
    assert stats["min"] == finite.min(), name
    assert stats["max"] == finite.max(), name
    assert stats["absmax"] == np.abs(finite).max(), name
    assert stats["mean"] == pytest.approx(finite.mean(), rel=1e-9, abs=1e-12), name
    assert stats["std"] == pytest.approx(finite.std(), rel=1e-9, abs=1e-12), name


def test_stats_match_numpy_on_bf16(qtool_json):
    path = FIXTURES / "tiny-llama/model.safetensors"
    doc = qtool_json("inspect", path, "--stats")
    with safe_open(str(path), framework="numpy") as f:
        for t in doc["tensors"]:
            _check_stats(t["stats"], f.get_tensor(t["name"]), t["name"])


def test_stats_match_gguf_py_dequantize(qtool_json):
    path = FIXTURES / "tiny.gguf"
    doc = qtool_json("inspect", path, "--stats")
    reader = gguf.GGUFReader(path)
    for t, ref in zip(doc["tensors"], reader.tensors):
        values = gguf.quants.dequantize(ref.data, ref.tensor_type)
        _check_stats(t["stats"], values, ref.name)
