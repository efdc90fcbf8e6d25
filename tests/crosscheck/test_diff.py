"""`diff` against a numpy recomputation of every metric on the same dequantized arrays.

The candidates are written here, independently of qtool: FP8 scaled checkpoints in ComfyUI's
current layout (`L.weight` F8_E4M3 + `L.weight_scale` F32 scalar + `L.comfy_quant` U8 JSON) and
in the legacy layout (`L.scale_weight` + a `scaled_fp8` marker), quantized with numpy and
ml_dtypes; a Hugging Face-named F32 copy of SmolLM2's GGUF, dequantized by gguf-py and with the
q/k rows un-permuted by numpy. The metrics definitions (and their edge-case conventions) are
those documented in `quantizers/src/diff/metrics.rs`.

Runs the example program `diff` (`cargo build --examples -p qtool-quantizers`).
"""

import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES

TINY = FIXTURES / "tiny-llama" / "model.safetensors"
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REL = 1e-9

ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.uint8): "U8",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors file written by hand (safetensors.numpy has no FP8 dtypes)."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.tobytes()
        header[name] = {
            "dtype": ST_DTYPES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_bf16(path: Path) -> dict:
    """safetensors.numpy returns BF16 as ml_dtypes.bfloat16 arrays."""
    return load_file(str(path))


def is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{p}." in name for p in LINEAR)


def quantize_fp8(w: np.ndarray):
    """ComfyUI per-tensor FP8: scale = amax/448 (f32), codes = e4m3fn(clamp(w / scale))."""
    w32 = w.astype(np.float32)
    amax = np.float32(np.abs(w32).max())
    scale = np.float32(amax / np.float32(448.0))
    codes = np.clip(w32 / scale, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn)
    return codes, scale


def make_fp8(tmp: Path, legacy: bool) -> tuple[Path, dict]:
    """Writes the FP8 candidate; returns it and the dequantized arrays numpy expects."""
    src = load_bf16(TINY)
    out, expect = {}, {}
    for name, w in src.items():
        if not is_linear(name):
            out[name] = w
            continue
        layer = name[: -len(".weight")]
        codes, scale = quantize_fp8(w)
        out[name] = codes
        if legacy:
            out[f"{layer}.scale_weight"] = np.array(scale, dtype=np.float32)
        else:
            out[f"{layer}.weight_scale"] = np.array(scale, dtype=np.float32)
            conf = json.dumps({"format": "float8_e4m3fn"}).encode()
            out[f"{layer}.comfy_quant"] = np.frombuffer(conf, dtype=np.uint8)
        expect[name] = (codes.astype(np.float32) * scale, codes.nbytes + 4)
    if legacy:
        out["scaled_fp8"] = np.zeros((0,), dtype=ml_dtypes.float8_e4m3fn)
    path = tmp / ("legacy.safetensors" if legacy else "comfy.safetensors")
    write_safetensors(path, out)
    return path, expect


def numpy_metrics(w: np.ndarray, q: np.ndarray) -> dict:
    w = w.astype(np.float64).ravel()
    q = q.astype(np.float64).ravel()
    e = w - q
    se, sw, sq, swq = (e * e).sum(), (w * w).sum(), (q * q).sum(), (w * q).sum()
    n = w.size
    mse = se / n if n else 0.0
    if se == 0:
        rel, sqnr, cos = 0.0, math.inf, 1.0
    elif sw == 0:
        rel, sqnr, cos = math.inf, -math.inf, 0.0
    else:
        rel = math.sqrt(se) / math.sqrt(sw)
        sqnr = 10 * math.log10(sw / se)
        cos = 0.0 if sq == 0 else swq / (math.sqrt(sw) * math.sqrt(sq))
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "max_abs": float(np.abs(e).max()) if n else 0.0,
        "rel_fro": rel,
        "sqnr_db": sqnr,
        "cosine": cos,
    }


def num(x) -> float:
    return float(x)  # "inf" / "-inf" / "nan" strings included


def assert_close(got, want, what):
    got = num(got)
    if math.isinf(want) or want == 0:
        assert got == want, f"{what}: {got} != {want}"
    else:
        assert abs(got - want) <= REL * abs(want), f"{what}: {got} != {want}"


@pytest.fixture(scope="session")
def diff_bin(example_bin):
    return example_bin("diff")


def run_diff(diff_bin, *args, check=True):
    proc = subprocess.run(
        [str(diff_bin), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def diff_json(diff_bin, *args):
    return json.loads(run_diff(diff_bin, *args, "--json").stdout)


def check_against_numpy(report, ref: dict, expect: dict):
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == set(ref), "every REF tensor has exactly one row"
    sizes = []
    for name, w in ref.items():
        row = rows[name]
        assert row["status"] == "compared", row
        w32 = w.astype(np.float32)
        q, nbytes = expect.get(name, (w32, w.nbytes))
        want = numpy_metrics(w32, q)
        for k, v in want.items():
            assert_close(row[k], v, f"{name}.{k}")
        assert row["shape"] == list(w.shape)
        assert_close(row["bits_per_weight"], nbytes * 8 / w.size, f"{name}.bpw")
        sizes.append((nbytes, w.nbytes, w.size, want["sqnr_db"]))
    s = report["summary"]
    finite = [x[3] for x in sizes if math.isfinite(x[3])]
    assert_close(s["mean_sqnr_db"], sum(finite) / len(finite), "mean_sqnr_db")
    assert_close(s["worst_sqnr_db"], min(x[3] for x in sizes), "worst_sqnr_db")
    assert_close(
        s["bits_per_weight"], sum(x[0] for x in sizes) * 8 / sum(x[2] for x in sizes), "bpw"
    )
    assert_close(s["size_ratio"], sum(x[0] for x in sizes) / sum(x[1] for x in sizes), "ratio")


def test_fp8_comfy_current_layout_matches_numpy(diff_bin, tmp_path):
    cand, expect = make_fp8(tmp_path, legacy=False)
    ref = load_bf16(TINY)
    report = diff_json(diff_bin, TINY, cand)
    check_against_numpy(report, ref, expect)
    rows = {r["name"]: r for r in report["rows"]}
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert q["scheme"] == "fp8_e4m3fn_scaled/comfy" and q["ref_scheme"] == "BF16"
    assert 20 < num(q["sqnr_db"]) < 40, "FP8 E4M3 per-tensor is ~30 dB on Gaussian weights"
    assert rows["model.norm.weight"]["sqnr_db"] == "inf"
    assert report["cand_markers"] == []


def test_fp8_legacy_layout_matches_numpy(diff_bin, tmp_path):
    cand, expect = make_fp8(tmp_path, legacy=True)
    report = diff_json(diff_bin, TINY, cand)
    check_against_numpy(report, load_bf16(TINY), expect)
    assert report["cand_markers"] == ["scaled_fp8"]
    schemes = {r["scheme"] for r in report["rows"] if r["name"] in expect}
    assert schemes == {"fp8_e4m3fn_scaled/legacy"}


def quantize_nvfp4(w: np.ndarray, layout: str):
    """NVFP4 written by numpy + ml_dtypes (the algorithm is only a plausible producer; what is
    checked is how the stored bytes decode). Returns the parts and numpy's dequantization."""
    w32 = w.astype(np.float32)
    n, k = w32.shape
    ts = np.float32(np.abs(w32).max() / np.float32(2688.0))
    bamax = np.abs(w32).reshape(n, k // 16, 16).max(axis=2)
    bs = np.clip(bamax / np.float32(6.0) / ts, 0, 448).astype(ml_dtypes.float8_e4m3fn)
    eff = (ts * bs.astype(np.float32)).astype(np.float32)
    eff_e = np.repeat(eff, 16, axis=1)
    x = np.where(eff_e > 0, w32 / np.where(eff_e > 0, eff_e, 1), 0)
    q = np.clip(x, -6, 6).astype(ml_dtypes.float4_e2m1fn)
    codes = q.view(np.uint8) & 0x0F
    deq = (q.astype(np.float32) * eff_e).astype(np.float32)
    if layout == "comfy":
        packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
        r, c = n, k // 16
        rp, cp = -(-r // 128) * 128, -(-c // 4) * 4
        padded = np.zeros((rp, cp), dtype=np.uint8)
        padded[:r, :c] = bs.view(np.uint8)
        blocks = padded.reshape(rp // 128, 128, cp // 4, 4).transpose(0, 2, 1, 3)
        scales = blocks.reshape(-1, 4, 32, 4).transpose(0, 2, 1, 3).reshape(rp, cp)
        scales = scales.view(ml_dtypes.float8_e4m3fn)
    else:
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        scales = bs
    return packed.astype(np.uint8), scales, ts, deq


@pytest.mark.parametrize("layout", ["modelopt", "comfy"])
def test_nvfp4_layouts_match_numpy(diff_bin, tmp_path, layout):
    src = load_bf16(TINY)
    out, expect = {}, {}
    for name, w in src.items():
        if not is_linear(name):
            out[name] = w
            continue
        layer = name[: -len(".weight")]
        packed, scales, ts, deq = quantize_nvfp4(w, layout)
        out[name] = packed
        out[f"{layer}.weight_scale"] = scales
        out[f"{layer}.weight_scale_2"] = np.array(ts, dtype=np.float32)
        if layout == "comfy":
            conf = json.dumps({"format": "nvfp4"}).encode()
            out[f"{layer}.comfy_quant"] = np.frombuffer(conf, dtype=np.uint8)
        expect[name] = (deq, packed.nbytes + scales.nbytes + 4)
    cand = tmp_path / f"nvfp4_{layout}.safetensors"
    write_safetensors(cand, out)
    report = diff_json(diff_bin, TINY, cand)
    check_against_numpy(report, src, expect)
    schemes = {r["scheme"] for r in report["rows"] if r["name"] in expect}
    assert schemes == {f"nvfp4/{layout}"}
    q = next(r for r in report["rows"] if r["name"] == "model.layers.0.mlp.up_proj.weight")
    assert 15 < num(q["sqnr_db"]) < 25, "NVFP4 is ~20 dB on Gaussian weights"


def quantize_ct_int4(w: np.ndarray, group: int, asymmetric: bool):
    """compressed-tensors pack-quantized INT4 written by numpy: codes q + 8 packed eight per
    int32 along K (element k at bits 4·(k % 8)); zero points packed along N the same way."""
    w32 = w.astype(np.float32)
    n, k = w32.shape
    g = w32.reshape(n, k // group, group)
    if asymmetric:
        lo, hi = np.minimum(g.min(axis=2), 0), np.maximum(g.max(axis=2), 0)
        scale = ((hi - lo) / np.float32(15.0)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale)
        zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint32)  # unsigned zero
    else:
        scale = (np.abs(g).max(axis=2) / np.float32(7.5)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale)
        zero = np.full(scale.shape, 8, dtype=np.uint32)
    codes = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint32)
    deq = ((codes.astype(np.float32) - zero[..., None].astype(np.float32)) * scale[..., None])
    codes = codes.reshape(n, k)
    words = np.zeros((n, k // 8), dtype=np.uint32)
    for t in range(8):
        words |= codes[:, t::8] << np.uint32(4 * t)
    parts = {
        "weight_packed": words.view(np.int32),
        "weight_scale": scale,
        "weight_shape": np.array([n, k], dtype=np.int64),
    }
    if asymmetric:
        zp = np.zeros((-(-n // 8), k // group), dtype=np.uint32)
        for t in range(8):
            rows = zero[t::8]
            zp[: rows.shape[0]] |= rows << np.uint32(4 * t)
        parts["weight_zero_point"] = zp.view(np.int32)
    return parts, deq.reshape(n, k).astype(np.float32)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_ct_int4_matches_numpy(diff_bin, tmp_path, asymmetric):
    src = load_bf16(TINY)
    out, expect = {}, {}
    for name, w in src.items():
        if not is_linear(name):
            out[name] = w
            continue
        layer = name[: -len(".weight")]
        parts, deq = quantize_ct_int4(w, 32, asymmetric)
        for part, arr in parts.items():
            out[f"{layer}.{part}"] = arr
        stored = sum(a.nbytes for p, a in parts.items() if p != "weight_shape")
        expect[name] = (deq, stored)
    cand = tmp_path / "w4a16.safetensors"
    write_safetensors(cand, out)
    report = diff_json(diff_bin, TINY, cand)
    check_against_numpy(report, src, expect)
    schemes = {r["scheme"] for r in report["rows"] if r["name"] in expect}
    assert schemes == {"int4_g32/compressed-tensors"}


def test_worst_sorts_by_numpy_sqnr(diff_bin, tmp_path):
    cand, expect = make_fp8(tmp_path, legacy=False)
    ref = load_bf16(TINY)
    report = diff_json(diff_bin, TINY, cand, "--worst", "4")
    want = sorted(
        expect, key=lambda n: numpy_metrics(ref[n].astype(np.float32), expect[n][0])["sqnr_db"]
    )[:4]
    assert [r["name"] for r in report["rows"]] == want


def test_same_result_for_any_thread_count(diff_bin, tmp_path):
    cand, _ = make_fp8(tmp_path, legacy=False)
    one = run_diff(diff_bin, TINY, cand, "--json", "--threads", "1").stdout
    many = run_diff(diff_bin, TINY, cand, "--json", "--threads", "3").stdout
    assert one == many


def test_identical_files_and_shards(diff_bin):
    for cand in (TINY, FIXTURES / "tiny-llama-sharded"):
        report = diff_json(diff_bin, TINY, cand)
        s = report["summary"]
        assert s["compared"] == 21 and s["identical"] == 21
        assert s["only_ref"] == s["only_cand"] == s["not_compared"] == 0
        for row in report["rows"]:
            assert row["sqnr_db"] == "inf" and row["cosine"] == 1.0 and row["mse"] == 0.0


def test_smollm2_gguf_against_itself_is_infinite(diff_bin, smollm2_gguf):
    import gguf

    reader = gguf.GGUFReader(str(smollm2_gguf))
    report = diff_json(diff_bin, smollm2_gguf, smollm2_gguf)
    assert report["summary"]["compared"] == len(reader.tensors)
    assert report["summary"]["identical"] == len(reader.tensors)
    by_name = {r["name"]: r for r in report["rows"]}
    for t in reader.tensors:
        row = by_name[t.name]
        assert row["cosine"] == 1.0 and row["sqnr_db"] == "inf"
        assert row["scheme"] == t.tensor_type.name
        assert_close(row["bits_per_weight"], int(t.n_bytes) * 8 / int(t.n_elements), t.name)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF q/k rows back to HF order: the inverse of llama.cpp's
    reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TO_HF = {
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


def test_smollm2_gguf_matches_hf_names_through_qk_permutation(diff_bin, smollm2_gguf, tmp_path):
    """REF = the GGUF; CAND = its first two blocks dequantized by gguf-py under HF names, with
    q/k rows un-permuted in numpy. Matching through names and the permutation must find every
    pair identical; the other GGUF tensors are listed as only in REF."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(smollm2_gguf))
    kv = {f.name: f for f in reader.fields.values()}
    n_head = int(kv["llama.attention.head_count"].parts[-1][0])
    n_kv = int(kv["llama.attention.head_count_kv"].parts[-1][0])
    out = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] != "blk" or int(parts[1]) >= 2:
            continue
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        role = parts[2]
        if role == "attn_q":
            w = unpermute(w, n_head)
        elif role == "attn_k":
            w = unpermute(w, n_kv)
        out[f"model.layers.{parts[1]}.{GGUF_TO_HF[role]}.{parts[3]}"] = np.ascontiguousarray(w)
    cand = tmp_path / "hf.safetensors"
    write_safetensors(cand, out)
    report = diff_json(diff_bin, smollm2_gguf, cand)
    compared = [r for r in report["rows"] if r["status"] == "compared"]
    assert len(compared) == len(out) == 18
    for r in compared:
        assert r["sqnr_db"] == "inf", r
        assert r["qk_permuted"] == (r["role"] in ("q", "k")), r
        assert r["cand_name"] in out
    assert report["summary"]["only_ref"] == len(reader.tensors) - 18
    # Without the permutation the q rows would not match: the GGUF's own q is not HF-ordered.
    q0 = out["model.layers.0.self_attn.q_proj.weight"]
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    raw = dequantize(t.data, t.tensor_type).reshape(q0.shape)
    assert not np.array_equal(raw, q0)


def test_shape_mismatch_is_exit_2_naming_the_tensor(diff_bin, tmp_path):
    src = load_bf16(TINY)
    src["model.norm.weight"] = np.zeros((65,), dtype=ml_dtypes.bfloat16)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, src)
    proc = run_diff(diff_bin, TINY, bad, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "model.norm.weight" in proc.stderr
    assert "[64]" in proc.stderr and "[65]" in proc.stderr


def test_plot_is_valid_svg_and_renders(diff_bin, tmp_path):
    cand, _ = make_fp8(tmp_path, legacy=False)
    svg = tmp_path / "sqnr.svg"
    run_diff(diff_bin, TINY, cand, "--plot", svg)
    import xml.etree.ElementTree as ET

    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    roles = ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down")
    assert len(lines) == len(roles), "one series per role in the blocks"
    texts = [t.text for t in root.iter(f"{ns}text")]
    for role in roles:
        assert role in texts, f"direct label {role} missing"
    tool = shutil.which("rsvg-convert")
    if tool is None:
        pytest.skip("skipped: rsvg-convert not installed (apt-get install librsvg2-bin)")
    png = tmp_path / "sqnr.png"
    subprocess.run([tool, "-o", str(png), str(svg)], check=True, timeout=60)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (960, 560)


# --- the `qtool diff` subcommand (same library; checks the CLI contract around it) ---------


@pytest.fixture(scope="session")
def qtool_diff(run_qtool):
    probe = run_qtool("diff", "--help", check=False)
    if probe.returncode != 0:
        pytest.skip("skipped: this qtool build has no `diff` subcommand")
    return lambda *args, check=True: run_qtool("diff", *args, check=check)


def test_cli_json_is_the_library_report(qtool_diff, diff_bin, tmp_path):
    cand, _ = make_fp8(tmp_path, legacy=False)
    cli = json.loads(qtool_diff(TINY, cand, "--json").stdout)
    lib = diff_json(diff_bin, TINY, cand)
    assert cli["reference"] == str(TINY) and cli["candidate"] == str(cand)
    assert cli["schema_version"] == 1
    assert cli["rows"] == lib["rows"] and cli["summary"] == lib["summary"]
    assert "threshold" not in cli


def test_cli_fail_below_sqnr_sets_exit_code(qtool_diff, tmp_path):
    cand, _ = make_fp8(tmp_path, legacy=False)
    worst = num(json.loads(qtool_diff(TINY, cand, "--json").stdout)["summary"]["worst_sqnr_db"])
    ok = qtool_diff(TINY, cand, "--fail-below-sqnr", worst - 0.01, "--json")
    assert json.loads(ok.stdout)["threshold"]["passed"] is True
    bad = qtool_diff(TINY, cand, "--fail-below-sqnr", worst + 0.01, "--json", check=False)
    assert bad.returncode == 1, bad.stderr
    t = json.loads(bad.stdout)["threshold"]
    assert t["passed"] is False and t["failing"] == [json.loads(ok.stdout)["summary"]["worst_tensor"]]
    text = qtool_diff(TINY, cand, "--fail-below-sqnr", worst + 0.01, check=False)
    assert text.returncode == 1 and "below" in text.stdout


def test_cli_bad_input_is_exit_2_and_leaves_no_plot(qtool_diff, tmp_path):
    plot = tmp_path / "out.svg"
    proc = qtool_diff(TINY, FIXTURES / "tiny.gguf", "--plot", plot, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "model.embed_tokens.weight" in proc.stderr
    assert not plot.exists()
    proc = qtool_diff(TINY, TINY, "--filter", "(", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --filter")


def test_cli_table_marks_worst_and_writes_plot(qtool_diff, tmp_path):
    cand, _ = make_fp8(tmp_path, legacy=False)
    plot = tmp_path / "sqnr.svg"
    proc = qtool_diff(TINY, cand, "--plot", plot)
    worst = json.loads(qtool_diff(TINY, cand, "--json").stdout)["summary"]["worst_tensor"]
    marked = [line for line in proc.stdout.splitlines() if line.startswith("| ! ")]
    assert len(marked) == 3 and any(worst in line for line in marked)
    assert plot.read_text().startswith("<svg")


# --- every layout `qtool quantize` writes is read back by diff -----------------------------

QUANTIZE_CASES = [
    # fmt, layout, scheme diff reports for the linear layers, SQNR window (dB)
    ("fp8_e4m3fn_scaled", "comfy", "fp8_e4m3fn_scaled/comfy", (25, 40)),
    ("fp8_e4m3fn_scaled", "comfy-legacy", "fp8_e4m3fn_scaled/legacy", (25, 40)),
    ("fp8_e4m3fn_scaled", "compressed-tensors", "fp8_e4m3fn_scaled/compressed-tensors", (25, 40)),
    ("fp8_e5m2_scaled", "comfy", "fp8_e5m2_scaled/comfy", (18, 30)),
    ("fp4_scaled", "comfy", "nvfp4/comfy", (15, 25)),
    ("fp4_scaled", "modelopt", "nvfp4/modelopt", (15, 25)),
    ("nvfp4", "compressed-tensors", "nvfp4/compressed-tensors", (15, 25)),
]


@pytest.mark.parametrize("fmt,layout,scheme,window", QUANTIZE_CASES)
def test_diff_reads_what_quantize_writes(run_qtool, diff_bin, tmp_path, fmt, layout, scheme, window):
    if run_qtool("quantize", "--help", check=False).returncode != 0:
        pytest.skip("skipped: this qtool build has no `quantize` subcommand")
    out = tmp_path / "q"
    run_qtool("quantize", FIXTURES / "tiny-llama", "-o", out, "--fmt", fmt, "--layout", layout)
    report = diff_json(diff_bin, TINY, out)
    s = report["summary"]
    assert (s["compared"], s["only_ref"], s["only_cand"], s["not_compared"]) == (21, 0, 0, 0)
    for row in report["rows"]:
        if is_linear(row["name"]):
            assert row["scheme"] == scheme, row
            assert window[0] < num(row["sqnr_db"]) < window[1], row
        else:
            assert row["sqnr_db"] == "inf", row


def test_smollm2_f16_vs_q4_k_m_matches_numpy(run_qtool, diff_bin, smollm2_gguf, tmp_path):
    """The issue's headline pair: SmolLM2 F16 (made by llama.cpp itself from the Q4_1 package
    file) against its Q4_K_M written by `qtool quantize`; every row's metrics recomputed in numpy
    from gguf-py's dequantization of both files."""
    import gguf

    llama_quantize = pytest.importorskip(
        "test_gguf_quantize", reason="skipped: needs the llama.cpp helpers"
    ).llama_quantize
    pytest.importorskip("llama_cpp", reason="skipped: llama-cpp-python is not installed")
    f16 = tmp_path / "smollm2-f16.gguf"
    proc = llama_quantize(smollm2_gguf, f16, "F16", allow_requantize=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q4 = tmp_path / "smollm2-q4_k_m.gguf"
    run_qtool("quantize", f16, "-o", q4, "--fmt", "q4_k_m")

    report = diff_json(diff_bin, f16, q4)
    rows = {r["name"]: r for r in report["rows"]}
    ref = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    cand = {t.name: t for t in gguf.GGUFReader(str(q4)).tensors}
    assert set(rows) == set(ref) == set(cand)
    kinds = set()
    for name, t in ref.items():
        c = cand[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        q = gguf.quants.dequantize(c.data, c.tensor_type)
        row = rows[name]
        assert row["status"] == "compared", row
        assert row["scheme"] == c.tensor_type.name, row
        for k, v in numpy_metrics(w, q).items():
            assert_close(row[k], v, f"{name}.{k}")
        assert_close(row["bits_per_weight"], int(c.n_bytes) * 8 / int(c.n_elements), name)
        kinds.add(c.tensor_type.name)
    # Q4_K_M on SmolLM2 (576-wide rows fall back from Q4_K to Q5_0, from Q6_K to Q8_0).
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"} <= kinds, kinds
    assert 20 < num(report["summary"]["mean_sqnr_db"]) < 40
