//! The legacy 32-element GGML blocks: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Layouts from ggml `src/ggml-common.h`; quantizers follow `quantize_row_*_ref` in
//! `src/ggml-quants.c`, which is what `llama-quantize` runs when no importance matrix is given.
//! Nibble order: element `j` of a block sits in the low nibble of byte `j`, element `j + 16` in
//! its high nibble; Q5's fifth bits are a little-endian u32 with bit `j` for element `j`.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{
    f32_to_fp16, fp16_to_f32, importance_weights, make_qkx2_quants, make_qx_quants, sum_squares,
    trunc_to_i8, Qkx2Search,
};
use super::BlockCodec;

const QK: usize = 32;

/// `block_q4_0`: `x = d·(q - 8)`, q in 0..=15.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// `block_q4_1`: `x = d·q + m`, q in 0..=15.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// `block_q5_0`: `x = d·(q - 16)`, q in 0..=31.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `block_q5_1`: `x = d·q + m`, q in 0..=31.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `block_q8_0`: `x = d·q`, q a signed byte.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

const _: () = assert!(size_of::<BlockQ4_0>() as u64 == GgmlType::Q4_0.type_size());
const _: () = assert!(size_of::<BlockQ4_1>() as u64 == GgmlType::Q4_1.type_size());
const _: () = assert!(size_of::<BlockQ5_0>() as u64 == GgmlType::Q5_0.type_size());
const _: () = assert!(size_of::<BlockQ5_1>() as u64 == GgmlType::Q5_1.type_size());
const _: () = assert!(size_of::<BlockQ8_0>() as u64 == GgmlType::Q8_0.type_size());

/// Minimum and maximum as the asymmetric legacy types scan them (NaN never replaces a bound).
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The asymmetric search of the weighted Q4_1/Q5_1 quantizers (ggml's `make_qkx3_quants`
/// parameters: 37 candidate scales from `(nmax - 0.9)/range` in steps of 0.05).
const fn weighted_search(nmax: i32) -> Qkx2Search {
    Qkx2Search { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false }
}

/// Runs `f` on each block of a row with its importance weights `qw·sqrt(sigma2 + x²)`, where
/// `sigma2` is the mean square of the WHOLE row (so the weighted legacy quantizers are row-level).
fn for_each_weighted_block<B>(
    row: &[f32],
    importance: &[f32],
    out: &mut [B],
    mut f: impl FnMut(&[f32], &[f32; QK], &mut B),
) {
    let sigma2 = sum_squares(row) / row.len() as f32;
    for ((xb, qw), b) in row.chunks_exact(QK).zip(importance.chunks_exact(QK)).zip(out.iter_mut()) {
        let mut w = [0.0f32; QK];
        importance_weights(xb, qw, sigma2, &mut w);
        f(xb, &w, b);
    }
}

/// 4-bit levels, element `j` low and `j + 16` high.
fn pack_q4(l: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = l[j] | (l[j + QK / 2] << 4);
    }
    qs
}

/// 5-bit levels to the low-nibble array and the packed fifth bits.
fn pack_q5(q: &[u8; QK]) -> ([u8; 4], [u8; QK / 2]) {
    let mut qs = [0u8; QK / 2];
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (q[j], q[j + QK / 2]);
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + QK / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// Inverse of [`pack_q5`].
fn unpack_q5(qh: [u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

impl BlockCodec for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = fp16_to_f32(b.d);
            for j in 0..QK / 2 {
                y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
                y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let d = signed_absmax_value(x) / -8.0;
            let id = inverse(d);
            b.d = f32_to_fp16(d);
            // MIN(15, (int8_t)...) compares as signed before the byte is stored.
            let level = |v: f32| trunc_to_i8(v * id + 8.5).min(15) as u8;
            for j in 0..QK / 2 {
                b.qs[j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
            }
        }
    }

    /// `quantize_row_q4_0_impl`: symmetric weighted least squares (`make_qx_quants`).
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for_each_weighted_block(row, importance, out, |xb, w, b| {
            let mut l = [0u8; QK];
            b.d = f32_to_fp16(make_qx_quants(8, xb, &mut l, Some(w)));
            b.qs = pack_q4(&l);
        });
    }
}

impl BlockCodec for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = fp16_to_f32(b.d);
            let m = fp16_to_f32(b.m);
            for j in 0..QK / 2 {
                y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
                y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = inverse(d);
            b.d = f32_to_fp16(d);
            b.m = f32_to_fp16(min);
            let level = |v: f32| trunc_to_i8((v - min) * id + 0.5).min(15) as u8;
            for j in 0..QK / 2 {
                b.qs[j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
            }
        }
    }

    /// `quantize_row_q4_1_impl`: asymmetric weighted least squares (`make_qkx3_quants`).
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for_each_weighted_block(row, importance, out, |xb, w, b| {
            let (mut l, mut laux) = ([0u8; QK], [0u8; QK]);
            let sm = make_qkx2_quants(weighted_search(15), xb, w, &mut l, &mut laux);
            b.d = f32_to_fp16(sm.scale);
            b.m = f32_to_fp16(-sm.min);
            b.qs = pack_q4(&l);
        });
    }
}

impl BlockCodec for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = fp16_to_f32(b.d);
            for (yj, &q) in y.iter_mut().zip(&unpack_q5(b.qh, &b.qs)) {
                *yj = (q as i32 - 16) as f32 * d;
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        super::simd::quantize_q5_0(x, out);
    }

    /// `quantize_row_q5_0_impl`: symmetric weighted least squares (`make_qx_quants`).
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for_each_weighted_block(row, importance, out, |xb, w, b| {
            let mut l = [0u8; QK];
            b.d = f32_to_fp16(make_qx_quants(16, xb, &mut l, Some(w)));
            (b.qh, b.qs) = pack_q5(&l);
        });
    }
}

impl BlockCodec for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = fp16_to_f32(b.d);
            let m = fp16_to_f32(b.m);
            for (yj, &q) in y.iter_mut().zip(&unpack_q5(b.qh, &b.qs)) {
                *yj = q as f32 * d + m;
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let (min, max) = min_max(x);
            let d = (max - min) / 31.0;
            let id = inverse(d);
            b.d = f32_to_fp16(d);
            b.m = f32_to_fp16(min);
            let mut q = [0u8; QK];
            for (qj, &v) in q.iter_mut().zip(x) {
                // ggml casts straight to uint8_t here, without the MIN(31, ...) of the others;
                // pack_q5 keeps only five bits, as ggml's masks do.
                *qj = trunc_to_i8((v - min) * id + 0.5) as u8;
            }
            (b.qh, b.qs) = pack_q5(&q);
        }
    }

    /// `quantize_row_q5_1_impl`: asymmetric weighted least squares (`make_qkx3_quants`).
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for_each_weighted_block(row, importance, out, |xb, w, b| {
            let (mut l, mut laux) = ([0u8; QK], [0u8; QK]);
            let sm = make_qkx2_quants(weighted_search(31), xb, w, &mut l, &mut laux);
            b.d = f32_to_fp16(sm.scale);
            b.m = f32_to_fp16(-sm.min);
            (b.qh, b.qs) = pack_q5(&l);
        });
    }
}

impl BlockCodec for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = fp16_to_f32(b.d);
            for (yj, &q) in y.iter_mut().zip(&b.qs) {
                *yj = q as f32 * d;
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        super::simd::quantize_q8_0(x, out);
    }
}

/// One block of `quantize_row_q5_0_ref`: the scalar reference of [`super::simd::quantize_q5_0`].
pub(super) fn quantize_q5_0_block(x: &[f32]) -> BlockQ5_0 {
    let d = signed_absmax_value(x) / -16.0;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qj, &v) in q.iter_mut().zip(x) {
        *qj = trunc_to_i8(v * id + 16.5).min(31) as u8;
    }
    let (qh, qs) = pack_q5(&q);
    BlockQ5_0 { d: f32_to_fp16(d), qh, qs }
}

/// One block of `quantize_row_q8_0_ref`: the scalar reference of [`super::simd::quantize_q8_0`].
pub(super) fn quantize_q8_0_block(x: &[f32]) -> BlockQ8_0 {
    let mut amax = 0.0f32;
    for &v in x {
        // MAX(amax, fabsf(v)) keeps the later operand when the comparison fails (NaN).
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = inverse(d);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        // roundf: half away from zero, which is what f32::round does.
        *q = trunc_to_i8((v * id).round());
    }
    BlockQ8_0 { d: f32_to_fp16(d), qs }
}

/// `1/d`, or 0 for a zero scale (`d ? 1.0f/d : 0.0f`).
#[inline]
pub(super) fn inverse_scale(d: f32) -> f32 {
    inverse(d)
}

/// The signed value of largest magnitude, as the symmetric legacy types pick it: its sign makes
/// the scale negative so that it lands exactly on level 0.
fn signed_absmax_value(x: &[f32]) -> f32 {
    super::common::signed_absmax(x).0
}
