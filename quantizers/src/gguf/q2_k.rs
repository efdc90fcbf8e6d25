//! Q2_K: 256-element super-blocks of sixteen 16-element sub-blocks, `x = d·sc·q − dmin·m` with
//! 4-bit sub-block scales/mins and 2-bit levels (2.625 bits per weight).
//!
//! Layout (ggml `block_q2_K`): `scales[16]` (scale in the low nibble, min in the high),
//! `qs[64]`, `d`, `dmin` (fp16). For each 128-element half `h`, byte `32h + l` holds elements
//! `128h + l`, `+32`, `+64`, `+96` in bit pairs 0, 2, 4, 6.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{
    f32_to_fp16, fp16_to_f32, importance_weights, make_qkx2_quants, make_qp_quants, nearest_int,
    sum_in_order, sum_squares, Qkx2Search, ScaleMin, QK_K,
};
use super::simd::make_qkx2_quants_x8;
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ2K>() as u64 == GgmlType::Q2_K.type_size());

/// `quantize_row_q2_K_ref`'s sub-block search: absolute error weighted by `|x|`.
const SEARCH: Qkx2Search =
    Qkx2Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };

/// Scales and mins are quantized to 4 bits against their maxima.
const Q4SCALE: f32 = 15.0;

/// Packs 256 two-bit levels into Q2_K/Q3_K's `qs` order.
pub(crate) fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for h in 0..2 {
        let l0 = &levels[128 * h..128 * h + 128];
        for l in 0..32 {
            qs[32 * h + l] = l0[l] | (l0[l + 32] << 2) | (l0[l + 64] << 4) | (l0[l + 96] << 6);
        }
    }
}

impl BlockCodec for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK: usize = QK_K;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = fp16_to_f32(b.d);
            let min = fp16_to_f32(b.dmin);
            for h in 0..2 {
                let q = &b.qs[32 * h..32 * h + 32];
                for j in 0..4 {
                    let shift = 2 * j;
                    for half in 0..2 {
                        let sc = b.scales[8 * h + 2 * j + half];
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        let base = 128 * h + 32 * j + 16 * half;
                        for l in 0..16 {
                            y[base + l] = dl * ((q[16 * half + l] >> shift) & 3) as f32 - ml;
                        }
                    }
                }
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let mut levels = [0u8; QK_K];
            let mut scales = [0.0f32; 16];
            let mut mins = [0.0f32; 16];
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            let mut weights = [0.0f32; QK_K];
            for (w, &v) in weights.iter_mut().zip(x) {
                *w = v.abs();
            }
            let mut found = [ScaleMin { scale: 0.0, min: 0.0 }; 16];
            for h in 0..2 {
                let half = 128 * h..128 * h + 128;
                found[8 * h..8 * h + 8].copy_from_slice(&make_qkx2_quants_x8(
                    SEARCH,
                    &x[half.clone()],
                    &weights[half.clone()],
                    &mut levels[half],
                ));
            }
            for (j, &sm) in found.iter().enumerate() {
                scales[j] = sm.scale;
                mins[j] = sm.min;
                if sm.scale > max_scale {
                    max_scale = sm.scale;
                }
                if sm.min > max_min {
                    max_min = sm.min;
                }
            }
            // ggml stores the int levels into bytes as they are (no clamp), so they wrap.
            if max_scale > 0.0 {
                let iscale = Q4SCALE / max_scale;
                for (q, &s) in b.scales.iter_mut().zip(&scales) {
                    *q = nearest_int(iscale * s) as u8;
                }
                b.d = f32_to_fp16(max_scale / Q4SCALE);
            } else {
                b.scales = [0; 16];
                b.d = f32_to_fp16(0.0);
            }
            if max_min > 0.0 {
                let iscale = Q4SCALE / max_min;
                for (q, &m) in b.scales.iter_mut().zip(&mins) {
                    *q |= (nearest_int(iscale * m) << 4) as u8;
                }
                b.dmin = f32_to_fp16(max_min / Q4SCALE);
            } else {
                b.dmin = f32_to_fp16(0.0);
            }
            finish_block(x, &mut levels, b);
        }
    }

    /// `quantize_row_q2_K_impl`: weights `qw·sqrt(mean(x²) + x²)`, a 37-step squared-error
    /// search per sub-block, and scales/mins quantized by weighted least squares.
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        let search = Qkx2Search { nmax: 3, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false };
        for ((x, qw), b) in
            row.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(out.iter_mut())
        {
            let sigma2 = sum_squares(x) / QK_K as f32;
            let mut levels = [0u8; QK_K];
            let mut laux = [0u8; 16];
            let (mut scales, mut mins, mut sw) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
            for j in 0..16 {
                let sub = 16 * j..16 * j + 16;
                let mut w = [0.0f32; 16];
                importance_weights(&x[sub.clone()], &qw[sub.clone()], sigma2, &mut w);
                sw[j] = sum_in_order(&w);
                let sm = make_qkx2_quants(search, &x[sub.clone()], &w, &mut levels[sub], &mut laux);
                scales[j] = sm.scale;
                mins[j] = sm.min;
            }
            let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            b.d = f32_to_fp16(dm);
            b.dmin = f32_to_fp16(mm);
            for j in 0..16 {
                b.scales[j] = ls[j] | (lm[j] << 4);
            }
            finish_block(x, &mut levels, b);
        }
    }
}

/// Shared tail of both quantizers: final levels against the stored scales and mins (sub-blocks
/// with a zero step keep their search levels), then the 2-bit packing.
fn finish_block(x: &[f32], levels: &mut [u8; QK_K], b: &mut BlockQ2K) {
    let (df, dminf) = (fp16_to_f32(b.d), fp16_to_f32(b.dmin));
    for j in 0..16 {
        let dj = df * (b.scales[j] & 0xF) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dminf * (b.scales[j] >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            levels[i] = nearest_int((x[i] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    pack_2bit(levels, &mut b.qs);
}
