"""qtool's safetensors reader and writer against the `safetensors` Python package.

(a) Files qtool writes (the `rewrite_safetensors` example, single file and sharded) are read by
    `safetensors` (`deserialize`, `safe_open`, `safetensors.numpy.load_file`) with the same
    names, dtypes, shapes, bytes and metadata as the input.
(b) Files `safetensors` writes are read by qtool identically: the example's JSON listing
    (dtype, shape, absolute offset, byte count) matches an independent parse of the header here,
    and what qtool writes back holds the same bytes.

Build first: `cargo build --workspace --examples`.
"""

import json
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as stnp

# numpy / ml_dtypes dtype -> the header code the safetensors format assigns it (formats.md §8).
DTYPE_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}


def rewrite(example_bin, src: Path, dst: Path, max_shard_size=None) -> dict:
    args = [str(example_bin("rewrite_safetensors")), str(src), str(dst)]
    if max_shard_size is not None:
        args += ["--max-shard-size", str(max_shard_size)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def raw_tensors(paths) -> dict:
    """name -> (dtype code, shape, bytes) over all files, via the reference deserializer."""
    out = {}
    for path in paths:
        for name, view in safetensors.deserialize(Path(path).read_bytes()):
            assert name not in out, f"{name} in two files"
            out[name] = (view["dtype"], list(view["shape"]), bytes(view["data"]))
    return out


def parse_header(path: Path):
    """An independent reading of the container: (metadata, {name: entry}, data start)."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    return metadata, header, 8 + n


def shard_files(written):
    return [Path(p) for p in written if p.endswith(".safetensors")]


def random_tensors(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shapes = [(), (0, 3), (7,), (3, 5), (2, 3, 4)]
    tensors = {}
    for i, name in enumerate(DTYPE_CODES):
        dtype = np.dtype(bool) if name == "bool" else np.dtype(getattr(ml_dtypes, name, name))
        for j, shape in enumerate(shapes):
            count = int(np.prod(shape))
            if name == "bool":
                arr = rng.integers(0, 2, size=shape).astype(bool)
            else:
                # Every bit pattern, NaNs and infinities included: the container must not care.
                raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
                arr = raw.view(dtype).reshape(shape)
            tensors[f"layer.{i}.{name}.{j}"] = arr
    return tensors


def assert_matches_arrays(tensors: dict, got: dict):
    assert sorted(got) == sorted(tensors)
    for name, arr in tensors.items():
        dtype, shape, data = got[name]
        assert dtype == DTYPE_CODES[arr.dtype.name], name
        assert shape == list(arr.shape), name
        # Bytes, not values: NaN payloads and -0.0 must survive too.
        assert data == arr.tobytes(), name


# --- (a) files written by qtool, read by safetensors ------------------------------------


def test_minilm_rewritten_single_file_loads_identically(example_bin, minilm_safetensors, tmp_path):
    out = tmp_path / "model.safetensors"
    report = rewrite(example_bin, minilm_safetensors, out)
    assert report["written"] == [str(out)]

    want = stnp.load_file(minilm_safetensors)
    got = stnp.load_file(out)
    assert sorted(got) == sorted(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), name
    with safetensors.safe_open(minilm_safetensors, "np") as f_in, safetensors.safe_open(out, "np") as f_out:
        assert f_out.metadata() == f_in.metadata()


def test_minilm_rewritten_sharded_loads_identically(example_bin, minilm_safetensors, tmp_path):
    limit = 20_000_000
    out = tmp_path / "model.safetensors"
    report = rewrite(example_bin, minilm_safetensors, out, max_shard_size=limit)
    shards = shard_files(report["written"])
    assert len(shards) > 1
    assert not out.exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())

    want = stnp.load_file(minilm_safetensors)
    got = {}
    for shard in shards:
        part = stnp.load_file(shard)
        with safetensors.safe_open(shard, "np") as f:
            assert f.metadata() == {"format": "pt"}
            assert sorted(f.keys()) == sorted(
                t for t, s in index["weight_map"].items() if s == shard.name
            )
        sizes = [a.nbytes for a in part.values()]
        assert sum(sizes) <= limit or len(sizes) == 1, f"{shard.name} exceeds the limit"
        got.update(part)
    assert sorted(got) == sorted(want) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in want.values())
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), name


@pytest.mark.parametrize("max_shard_size", [None, 64, 1000])
def test_numpy_file_with_every_dtype_round_trips(example_bin, tmp_path, max_shard_size):
    tensors = random_tensors(seed=7)
    metadata = {"format": "np", "note": "ünïcode \"quoted\"", "_quantization_metadata": "{\"a\": 1}"}
    src = tmp_path / "in.safetensors"
    stnp.save_file(tensors, src, metadata=metadata)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    report = rewrite(example_bin, src, out_dir / "model.safetensors", max_shard_size)
    shards = shard_files(report["written"])
    assert (len(shards) > 1) == (max_shard_size is not None)

    assert_matches_arrays(tensors, raw_tensors(shards))
    for shard in shards:
        with safetensors.safe_open(shard, "np") as f:
            assert f.metadata() == metadata
    if max_shard_size is not None:
        index = json.loads((out_dir / "model.safetensors.index.json").read_text())
        assert sorted(index["weight_map"]) == sorted(tensors)
        assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())


# --- (b) files written by safetensors, read by qtool ------------------------------------


def test_qtool_lists_python_written_file_like_its_header(example_bin, tmp_path):
    tensors = random_tensors(seed=11)
    src = tmp_path / "in.safetensors"
    stnp.save_file(tensors, src, metadata={"k": "v"})
    report = rewrite(example_bin, src, tmp_path / "out.safetensors")

    metadata, header, data_start = parse_header(src)
    assert report["metadata"] == metadata
    listed = report["tensors"]
    assert sorted(t["name"] for t in listed) == sorted(header)
    # Container order: by data offset.
    assert [t["offset"] for t in listed] == sorted(t["offset"] for t in listed)
    for t in listed:
        entry = header[t["name"]]
        begin, end = entry["data_offsets"]
        assert t["dtype"] == entry["dtype"]
        assert t["shape"] == entry["shape"]
        assert t["offset"] == data_start + begin
        assert t["nbytes"] == end - begin
        assert t["file"] == str(src)
    # What qtool read is what it wrote back.
    assert raw_tensors([tmp_path / "out.safetensors"]) == raw_tensors([src])


def test_qtool_reads_python_written_sharded_checkpoint(example_bin, tmp_path):
    tensors = random_tensors(seed=3)
    names = sorted(tensors)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        stnp.save_file({n: tensors[n] for n in part}, ckpt / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(a.nbytes for a in tensors.values())
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )

    out = tmp_path / "merged.safetensors"
    report = rewrite(example_bin, ckpt, out)
    assert [Path(f).name for f in report["files"]] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert_matches_arrays(tensors, raw_tensors([out]))


def test_corrupt_input_is_refused_and_writes_nothing(example_bin, tmp_path):
    src = tmp_path / "in.safetensors"
    stnp.save_file({"w": np.ones((4, 4), np.float32)}, src)
    blob = src.read_bytes()
    src.write_bytes(blob[:-3])  # the data section is now shorter than the header says
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [str(example_bin("rewrite_safetensors")), str(src), str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and str(src) in proc.stderr and "'w'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]
    with pytest.raises(Exception):
        safetensors.deserialize(src.read_bytes())
