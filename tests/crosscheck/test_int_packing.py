"""Cross-check of qtool's INT4/INT8 weight-only quantization and packings against an independent
numpy implementation written from /work/shared/formats.md (§2.1, §2.3, §3.1, §3.2, §4.2-§4.4),
byte for byte, on random weights including act-order g_idx and exact rounding ties.

qtool side: the example program `int_packing` (build with
`cargo build -p qtool-quantizers --examples`).

The reference packages themselves (AutoGPTQ, AutoAWQ, compressed-tensors, vLLM's
`marlin_utils`) all import torch, which this venv does not have; they are for the GPU device
run. Everything below is numpy only.
"""

import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------
# Independent reference (numpy, float32 throughout, np.round = round half to even = torch.round)
# --------------------------------------------------------------------------------------------

F32 = np.float32


def groups_of(k, group, g_idx):
    """Column -> group map and the number of groups."""
    if g_idx is not None:
        g = np.asarray(g_idx, dtype=np.int64)
    elif group == -1:
        g = np.zeros(k, dtype=np.int64)
    else:
        g = np.arange(k) // group
    n_groups = 1 if group == -1 else k // group
    return g, n_groups


def group_min_max(w, gmap, n_groups):
    n = w.shape[0]
    mn = np.empty((n_groups, n), F32)
    mx = np.empty((n_groups, n), F32)
    for g in range(n_groups):
        cols = np.nonzero(gmap == g)[0]
        mn[g] = w[:, cols].min(axis=1)
        mx[g] = w[:, cols].max(axis=1)
    return mn, mx


def ref_quantize(w, bits, group, sym, convention, g_idx):
    """Returns unsigned codes [N,K], scales [G,N] f32, unsigned zeros [G,N]."""
    n, k = w.shape
    maxq = F32(2**bits - 1)
    mid = F32(2 ** (bits - 1))
    gmap, n_groups = groups_of(k, group, g_idx)
    mn, mx = group_min_max(w, gmap, n_groups)

    if convention == "gptq":  # AutoGPTQ quantizer.find_params
        xmin = np.minimum(mn, F32(0))
        xmax = np.maximum(mx, F32(0))
        if sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        both0 = (xmin == 0) & (xmax == 0)
        xmin = np.where(both0, F32(-1), xmin)
        xmax = np.where(both0, F32(1), xmax)
        scale = (xmax - xmin) / maxq
        zero = np.full_like(scale, mid) if sym else np.round(-xmin / scale)
    elif convention == "awq":  # AutoAWQ pseudo_quantize_tensor, zero_point=True
        scale = np.maximum(mx - mn, F32(1e-5)) / maxq
        zero = np.clip(-np.round(mn / scale), F32(0), maxq)
    elif convention == "ct":  # compressed-tensors calculate_qparams
        qmin, qmax = -mid, maxq - mid
        xmin = np.minimum(mn, F32(0))
        xmax = np.maximum(mx, F32(0))
        if sym:
            scale = np.maximum(np.abs(xmin), np.abs(xmax)) / (maxq / F32(2))
            zp = np.zeros_like(scale)
        else:
            scale = (xmax - xmin) / maxq
            with np.errstate(invalid="ignore", divide="ignore"):
                zp = np.round(np.clip(qmin - xmin / scale, qmin, qmax))
            zp = np.where(scale == 0, F32(0), zp)  # all-zero group (0/0 in the source)
        scale = np.where(scale == 0, np.finfo(F32).eps, scale).astype(F32)
        zero = zp + mid
    else:
        raise ValueError(convention)

    scale = scale.astype(F32)
    zero = zero.astype(F32)
    s_col = scale[gmap].T  # [N, K]
    z_col = zero[gmap].T
    if convention in ("gptq", "awq"):
        codes = np.clip(np.round(w / s_col) + z_col, F32(0), maxq)
    else:
        t = w / s_col + (z_col - mid)
        codes = np.round(np.clip(t, -mid, maxq - mid)) + mid
    return codes.astype(np.uint8), scale, zero.astype(np.uint8)


def pack_last_axis(vals, bits, order=None):
    """Packs the last axis: field i of word j holds element pf*j + order[i], at bits b*i."""
    pf = 32 // bits
    v = vals.astype(np.uint32)
    v = v.reshape(*v.shape[:-1], v.shape[-1] // pf, pf)
    if order is not None:
        v = v[..., order]
    shifts = (np.arange(pf, dtype=np.uint32) * bits).astype(np.uint32)
    return np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint32).view(np.int32)


def ref_gptq(codes, zeros, bits, v1):
    q_kn = codes.T  # [K, N]
    # qweight: packed along K -> pack last axis of q_nk, then transpose to [K/pf, N]
    qweight = pack_last_axis(q_kn.T, bits).T
    z = zeros.astype(np.int64) - (1 if v1 else 0)
    qzeros = pack_last_axis(z.astype(np.uint32), bits)
    return np.ascontiguousarray(qweight), qzeros


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def ref_awq(codes, zeros):
    return pack_last_axis(codes.T, 4, AWQ_ORDER), pack_last_axis(zeros, 4, AWQ_ORDER)


def ref_ct(codes, scales, zeros, bits, sym):
    weight_packed = pack_last_axis(codes, bits)
    weight_scale = np.ascontiguousarray(scales.T)
    zp = None
    if not sym:
        # pack_to_int32(zp, packed_dim=0): transpose, pack along N, transpose back -> [N/pf, G]
        zp = np.ascontiguousarray(pack_last_axis(zeros, bits).T)
    return weight_packed, weight_scale, zp


def ref_marlin_perm(bits):
    """get_weight_perm, written as formats.md §4.2 states it."""
    perm = []
    for i in range(32):
        perm1 = []
        col = i // 4
        for block in [0, 1]:
            for row in [2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1]:
                perm1.append(16 * row + col + 8 * block)
        for j in range(4):
            perm.extend([p + 256 * j for p in perm1])
    perm = np.array(perm)
    interleave = np.array([0, 2, 4, 6, 1, 3, 5, 7] if bits == 4 else [0, 2, 1, 3])
    return perm.reshape((-1, len(interleave)))[:, interleave].ravel()


SCALE_PERM = [i + 8 * j for i in range(8) for j in range(8)]
SCALE_PERM_SINGLE = [2 * i + j for i in range(4) for j in [0, 1, 8, 9, 16, 17, 24, 25]]


def ref_marlin_weights(q_w, bits):
    """marlin_permute_weights + pack, as the numpy reshape/transpose chain of §4.2."""
    k, n = q_w.shape
    tile = 16
    w = q_w.reshape((k // tile, tile, n // tile, tile)).transpose(0, 2, 1, 3)
    w = w.reshape((k // tile, n * tile))
    w = w.reshape((-1, 1024))[:, ref_marlin_perm(bits)].reshape((k // tile, n * tile))
    return pack_last_axis(w, bits)


def ref_marlin_scales(s, group, k):
    n = s.shape[1]
    if group != -1 and group < k:
        s = s.reshape((-1, len(SCALE_PERM)))[:, SCALE_PERM]
    else:
        s = s.reshape((-1, len(SCALE_PERM_SINGLE)))[:, SCALE_PERM_SINGLE]
    return s.reshape((-1, n))


def ref_marlin_zp(zp, bits):
    n = zp.shape[1]
    zp = zp.reshape((-1, len(SCALE_PERM)))[:, SCALE_PERM]
    interleave = [0, 2, 4, 6, 1, 3, 5, 7] if bits == 4 else [0, 2, 1, 3]
    zp = zp.reshape((-1, len(interleave)))[:, interleave].ravel().reshape((-1, n))
    return pack_last_axis(zp, bits)


# --------------------------------------------------------------------------------------------
# Fixed facts from formats.md
# --------------------------------------------------------------------------------------------


def test_reference_perm_matches_documented_first_values():
    assert ref_marlin_perm(4)[:16].tolist() == [0, 128, 8, 136, 16, 144, 24, 152, 256, 384, 264, 392, 272, 400, 280, 408]
    assert ref_marlin_perm(8)[:8].tolist() == [0, 128, 16, 144, 8, 136, 24, 152]
    assert SCALE_PERM_SINGLE == [0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27, 4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31]


# --------------------------------------------------------------------------------------------
# qtool runs
# --------------------------------------------------------------------------------------------


def make_weight(n, k, group, seed, ties):
    rng = np.random.default_rng(seed)
    if not ties:
        w = rng.standard_normal((n, k)).astype(F32) * F32(0.05)
        w[rng.random((n, k)) < 0.002] *= F32(20)  # a few outliers
        return w
    # Multiples of 1/8 with a +-1.875 in every group: GPTQ-sym scale 0.25, CT-sym 0.25, so
    # x / s lands exactly on .5 often and the half-to-even rule decides the code.
    w = rng.integers(-15, 16, size=(n, k)).astype(F32) * F32(0.125)
    step = k if group == -1 else group
    w[:, ::step] = np.where(rng.random((n, k // step)) < 0.5, F32(1.875), F32(-1.875))
    return w


def make_act_order(k, group, seed):
    """GPTQ desc_act without static groups: g_idx[perm[i]] = i // G."""
    perm = np.random.default_rng(seed + 1).permutation(k)
    g = np.empty(k, np.int32)
    g[perm] = np.arange(k) // group
    return g


def run_qtool(example_bin, tmp: Path, w, bits, group, sym, convention, g_idx):
    n, k = w.shape
    wpath = tmp / "w.f32"
    w.astype("<f4").tofile(wpath)
    cmd = [
        str(example_bin("int_packing")),
        "--weight", str(wpath), "--n", str(n), "--k", str(k), "--bits", str(bits),
        "--group", str(group), "--sym", "1" if sym else "0", "--convention", convention,
        "--out", str(tmp / "out"),
    ]
    if g_idx is not None:
        g_idx.astype("<i4").tofile(tmp / "g_idx.i32")
        cmd += ["--g-idx", str(tmp / "g_idx.i32")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp / "out"
    manifest = (out / "manifest.txt").read_text().splitlines()

    def load(name, dtype, shape):
        return np.fromfile(out / f"{name}.bin", dtype=dtype).reshape(shape)

    return out, manifest, load


def same_bytes(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.tobytes() != b.tobytes():
        bad = np.nonzero(a.view(np.uint8).ravel() != b.view(np.uint8).ravel())[0]
        raise AssertionError(f"{bad.size} bytes differ, first at byte {bad[0]}")


CASES = []
for convention, syms in (("gptq", (True, False)), ("awq", (False,)), ("ct", (True, False))):
    for sym in syms:
        for bits in (4, 8):
            for group in (32, 64, 128, -1):
                for act in (False, True):
                    if act and group == -1:
                        continue
                    CASES.append((convention, sym, bits, group, act))


@pytest.mark.parametrize("ties", [False, True], ids=["normal", "ties"])
@pytest.mark.parametrize(
    "convention,sym,bits,group,act",
    CASES,
    ids=[f"{c}-{'sym' if s else 'asym'}-{b}bit-g{g}{'-act' if a else ''}" for c, s, b, g, a in CASES],
)
def test_int_packing_matches_numpy(example_bin, tmp_path, convention, sym, bits, group, act, ties):
    n, k = (128, 256) if group != 64 else (192, 384)
    seed = zlib.crc32(f"{convention}-{sym}-{bits}-{group}-{act}-{ties}".encode())
    w = make_weight(n, k, group, seed, ties)
    g_idx = make_act_order(k, group, seed) if act else None
    out, manifest, load = run_qtool(example_bin, tmp_path, w, bits, group, sym, convention, g_idx)

    n_groups = 1 if group == -1 else k // group
    pf = 32 // bits
    codes, scales, zeros = ref_quantize(w, bits, group, sym, convention, g_idx)

    # 1. quantization
    same_bytes(load("codes", np.uint8, (n, k)), codes)
    same_bytes(load("scales", "<f4", (n_groups, n)), scales)
    same_bytes(load("zeros", np.uint8, (n_groups, n)), zeros)
    gmap, _ = groups_of(k, group, g_idx)
    deq = (codes.astype(F32) - zeros[gmap].T.astype(F32)) * scales[gmap].T
    same_bytes(load("dequant", "<f4", (n, k)), deq)

    # 2. GPTQ v1 / v2
    qweight, qzeros_v2 = ref_gptq(codes, zeros, bits, v1=False)
    same_bytes(load("gptq_qweight", "<i4", (k // pf, n)), qweight)
    same_bytes(load("gptq_qzeros_v2", "<i4", (n_groups, n // pf)), qzeros_v2)
    same_bytes(load("gptq_scales", "<f4", (n_groups, n)), scales)
    same_bytes(load("gptq_g_idx", "<i4", (k,)), gmap.astype(np.int32))
    if (zeros == 0).any():
        assert any(line.startswith("skipped gptq_qzeros_v1") for line in manifest)
    else:
        _, qzeros_v1 = ref_gptq(codes, zeros, bits, v1=True)
        same_bytes(load("gptq_qzeros_v1", "<i4", (n_groups, n // pf)), qzeros_v1)
        # v1 <-> v2 is +-0x11111111 (4-bit) / 0x01010101 (8-bit) per word
        unit = np.uint32(0x11111111 if bits == 4 else 0x01010101)
        same_bytes((qzeros_v1.view(np.uint32) + unit).view(np.int32), qzeros_v2)
        if sym:
            assert (qzeros_v1.view(np.uint32) == (0x77777777 if bits == 4 else 0x7F7F7F7F)).all()

    # 3. AWQ GEMM (4-bit, no act-order)
    if bits == 4 and not act:
        aw, az = ref_awq(codes, zeros)
        same_bytes(load("awq_qweight", "<i4", (k, n // 8)), aw)
        same_bytes(load("awq_qzeros", "<i4", (n_groups, n // 8)), az)
        same_bytes(load("awq_scales", "<f4", (n_groups, n)), scales)
    else:
        assert any(line.startswith("skipped awq_qweight") for line in manifest)

    # 4. compressed-tensors pack-quantized
    wp, ws, wz = ref_ct(codes, scales, zeros, bits, sym)
    same_bytes(load("ct_weight_packed", "<i4", (n, k // pf)), wp)
    same_bytes(load("ct_weight_scale", "<f4", (n, n_groups)), ws)
    same_bytes(load("ct_weight_shape", "<i8", (2,)), np.array([n, k], np.int64))
    if sym:
        assert not (out / "ct_weight_zero_point.bin").exists()
    else:
        same_bytes(load("ct_weight_zero_point", "<i4", (n // pf, n_groups)), wz)
    if act:
        same_bytes(load("ct_weight_g_idx", "<i4", (k,)), g_idx)
    # formats.md §4.5: CT weight_packed transposed is GPTQ qweight
    same_bytes(wp.T, qweight)

    # 5. Marlin (GPTQ-Marlin when symmetric, AWQ-Marlin with zero points otherwise)
    if not sym and act:
        assert any("act-order" in line for line in manifest if line.startswith("skipped marlin_b"))
        return
    sort = np.argsort(gmap, kind="stable") if act else np.arange(k)
    q_w = codes.T[sort]  # rows in argsort(g_idx) order
    same_bytes(load("marlin_b", "<i4", (k // 16, n * 16 // pf)), ref_marlin_weights(q_w, bits))
    same_bytes(load("marlin_s", "<f4", (n_groups, n)), ref_marlin_scales(scales, group, k))
    if act:
        same_bytes(load("marlin_sort_indices", "<i4", (k,)), sort.astype(np.int32))
    if not sym:
        same_bytes(load("marlin_zp", "<i4", (n_groups, n // pf)), ref_marlin_zp(zeros, bits))
    else:
        assert not (out / "marlin_zp.bin").exists()
    same_bytes(load("marlin_dequant", "<f4", (n, k)), deq)


def test_marlin_refusal_is_reported(example_bin, tmp_path):
    """N = 96 breaks N % 64: qtool writes the other layouts and names the Marlin rule."""
    w = make_weight(96, 128, 32, 1, False)
    _, manifest, _ = run_qtool(example_bin, tmp_path, w, 4, 32, True, "gptq", None)
    line = next(line for line in manifest if line.startswith("skipped marlin_b"))
    assert "N_partition % 64 == 0" in line


def test_bad_weight_file_is_an_error(example_bin, tmp_path):
    (tmp_path / "w.f32").write_bytes(b"\0" * 10)
    proc = subprocess.run(
        [str(example_bin("int_packing")), "--weight", str(tmp_path / "w.f32"), "--n", "8", "--k", "32",
         "--bits", "4", "--group", "32", "--sym", "1", "--convention", "gptq", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "expected 1024 bytes, got 10" in proc.stderr
