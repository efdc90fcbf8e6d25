//! Q4_K: 256-element super-blocks of eight 32-element sub-blocks, `x = d·sc·q − dmin·m` with
//! 6-bit sub-block scales/mins and 4-bit levels (4.5 bits per weight).
//!
//! Layout (ggml `block_q4_K`): `d`, `dmin` (fp16), `scales[12]` (eight 6-bit scales and mins,
//! packed as [`super::common::get_scale_min_k4`] reads them), `qs[128]`: for each 64-element
//! chunk `c`, byte `32c + l` holds element `64c + l` (low nibble) and `64c + 32 + l` (high).

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{
    f32_to_fp16, fp16_to_f32, get_scale_min_k4, importance_weights, make_qp_quants, nearest_int,
    pack_k4_levels, pack_k4_scales, rms_plus_abs_weights, sum_in_order, sum_squares, Qkx2Search,
    QK_K,
};
use super::simd::make_qkx2_quants_x8;
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockQ4K>() as u64 == GgmlType::Q4_K.type_size());

/// `quantize_row_q4_K_ref`'s sub-block search: 21 candidate scales from `(nmax - 1)/range`
/// upward in steps of 0.1, squared error weighted by `rms + |x|`.
const SEARCH: Qkx2Search =
    Qkx2Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };

/// Sub-block search and scale packing shared with Q5_K: returns `d`, `dmin`, the packed scales
/// and the final levels (0..=nmax) of all 256 elements.
pub(crate) fn quantize_k4_superblock(
    x: &[f32],
    search: Qkx2Search,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut weights = [0.0f32; QK_K];
    for j in 0..8 {
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().expect("32-element sub-block");
        weights[32 * j..32 * j + 32].copy_from_slice(&rms_plus_abs_weights(xs));
    }
    let found = make_qkx2_quants_x8(search, &x[..QK_K], &weights, &mut levels);
    let scales: [f32; 8] = std::array::from_fn(|j| found[j].scale);
    let mins: [f32; 8] = std::array::from_fn(|j| found[j].min);
    let (d, dmin, packed) = pack_k4_scales(&scales, &mins);
    requantize_k4(x, d, dmin, &packed, search.nmax, &mut levels);
    (d, dmin, packed, levels)
}

/// The importance-weighted super-block of Q4_K/Q5_K (`quantize_row_q{4,5}_K_impl`): weights
/// `qw·sqrt(2·mean(x²) + x²)`, a wider 37-step search per sub-block, and the sub-block scales
/// and mins themselves quantized by weighted least squares (`make_qp_quants`) instead of
/// against their maxima. `clamp_levels` is Q5_K's extra `MIN(63, ...)`, which Q4_K lacks.
pub(crate) fn quantize_k4_superblock_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_levels: bool,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let search = Qkx2Search { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false };
    let sigma2 = 2.0 * sum_squares(&x[..QK_K]) / QK_K as f32;
    let mut levels = [0u8; QK_K];
    let mut weights = [0.0f32; QK_K];
    let mut sw = [0.0f32; 8];
    for (j, swj) in sw.iter_mut().enumerate() {
        let sub = 32 * j..32 * j + 32;
        importance_weights(&x[sub.clone()], &qw[sub.clone()], sigma2, &mut weights[sub.clone()]);
        *swj = sum_in_order(&weights[sub]);
    }
    let found = make_qkx2_quants_x8(search, &x[..QK_K], &weights, &mut levels);
    let scales: [f32; 8] = std::array::from_fn(|j| found[j].scale);
    let mins: [f32; 8] = std::array::from_fn(|j| found[j].min);
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_levels {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    let packed = pack_k4_levels(&ls, &lm);
    let (d, dmin) = (f32_to_fp16(d_block), f32_to_fp16(m_block));
    requantize_k4(x, d, dmin, &packed, nmax, &mut levels);
    (d, dmin, packed, levels)
}

/// Final levels against the stored (fp16, 6-bit) scales and mins; a sub-block whose step is
/// zero keeps the levels its search found, as ggml does.
fn requantize_k4(
    x: &[f32],
    d: [u8; 2],
    dmin: [u8; 2],
    packed: &[u8; 12],
    nmax: i32,
    levels: &mut [u8; QK_K],
) {
    let (df, dminf) = (fp16_to_f32(d), fp16_to_f32(dmin));
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dj = df * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dminf * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
}

/// Q4_K's nibble order: chunk `c`, byte `32c + l` = element `64c + l` | element `64c + 32 + l` << 4.
fn pack_q4k(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 2]) {
    for c in 0..4 {
        for l in 0..32 {
            qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
        }
    }
}

impl BlockCodec for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK: usize = QK_K;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = fp16_to_f32(b.d);
            let min = fp16_to_f32(b.dmin);
            for c in 0..4 {
                let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
                let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
                let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                let q = &b.qs[32 * c..32 * c + 32];
                let y = &mut y[64 * c..64 * c + 64];
                for l in 0..32 {
                    y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let (d, dmin, scales, levels) = quantize_k4_superblock(x, SEARCH);
            b.d = d;
            b.dmin = dmin;
            b.scales = scales;
            pack_q4k(&levels, &mut b.qs);
        }
    }

    /// `quantize_row_q4_K_impl`, see [`quantize_k4_superblock_weighted`].
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for ((x, qw), b) in
            row.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(out.iter_mut())
        {
            let levels;
            (b.d, b.dmin, b.scales, levels) = quantize_k4_superblock_weighted(x, qw, 15, false);
            pack_q4k(&levels, &mut b.qs);
        }
    }
}
