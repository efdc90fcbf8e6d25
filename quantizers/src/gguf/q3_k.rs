//! Q3_K: 256-element super-blocks of sixteen 16-element sub-blocks, `x = d·(sc − 32)·(q − 4)`
//! with 6-bit sub-block scales and 3-bit levels (3.4375 bits per weight).
//!
//! Layout (ggml `block_q3_K`): `hmask[32]`, `qs[64]`, `scales[12]`, `d` (fp16). The low two
//! bits of each level are packed as in Q2_K; the third bit of element `e` is bit `e / 32` of
//! `hmask[e % 32]`, and a *cleared* bit means "subtract 4". Sub-block scale `j` has its low
//! nibble in `scales[j % 8]` (low nibble for `j < 8`, high otherwise) and its top two bits in
//! bit pair `j / 4` of `scales[8 + j % 4]`.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{
    f32_to_fp16, fp16_to_f32, importance_weights, make_q3_quants_rmse, make_qx_quants, nearest_int,
    sum_in_order, sum_squares, QK_K,
};
use super::q2_k::pack_2bit;
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ3K>() as u64 == GgmlType::Q3_K.type_size());

/// The signed 6-bit scale of sub-block `j` (already offset by −32).
fn scale(scales: &[u8; 12], j: usize) -> i32 {
    let low = if j < 8 { scales[j] & 0xF } else { scales[j - 8] >> 4 };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(low | (high << 4)) - 32
}

impl BlockCodec for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK: usize = QK_K;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d_all = fp16_to_f32(b.d);
            for h in 0..2 {
                let q = &b.qs[32 * h..32 * h + 32];
                for j in 0..4 {
                    let shift = 2 * j;
                    let m = 1u8 << (4 * h + j);
                    for half in 0..2 {
                        let dl = d_all * scale(&b.scales, 8 * h + 2 * j + half) as f32;
                        let base = 128 * h + 32 * j + 16 * half;
                        for l in 0..16 {
                            let k = 16 * half + l;
                            let low = i32::from((q[k] >> shift) & 3);
                            let sub = if b.hmask[k] & m != 0 { 0 } else { 4 };
                            y[base + l] = dl * (low - sub) as f32;
                        }
                    }
                }
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let mut levels = [0i8; QK_K];
            let mut scales = [0.0f32; 16];
            let mut max_scale = 0.0f32;
            let mut amax = 0.0f32;
            for j in 0..16 {
                scales[j] = make_q3_quants_rmse(
                    4,
                    &x[16 * j..16 * j + 16],
                    &mut levels[16 * j..16 * j + 16],
                );
                if scales[j].abs() > amax {
                    amax = scales[j].abs();
                    max_scale = scales[j];
                }
            }
            b.scales = [0; 12];
            if max_scale != 0.0 {
                let iscale = -32.0f32 / max_scale;
                for (j, &s) in scales.iter().enumerate() {
                    // ggml narrows to int8_t before clamping.
                    let l = (i32::from(nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                    if j < 8 {
                        b.scales[j] = l & 0xF;
                    } else {
                        b.scales[j - 8] |= (l & 0xF) << 4;
                    }
                    b.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
                }
                b.d = f32_to_fp16(1.0 / iscale);
            } else {
                b.d = f32_to_fp16(0.0);
            }
            finish_block(x, &mut levels, b);
        }
    }

    /// `quantize_row_q3_K_impl`: weights `qw·sqrt(2·mean(x²) + x²)` in a symmetric weighted
    /// least-squares search per sub-block, and the sixteen scales themselves quantized the same
    /// way (weighted by each sub-block's total weight) rather than against their maximum.
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for ((x, qw), b) in
            row.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(out.iter_mut())
        {
            let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
            let mut levels = [0i8; QK_K];
            let (mut scales, mut sw) = ([0.0f32; 16], [0.0f32; 16]);
            for j in 0..16 {
                let sub = 16 * j..16 * j + 16;
                let mut w = [0.0f32; 16];
                importance_weights(&x[sub.clone()], &qw[sub.clone()], sigma2, &mut w);
                sw[j] = sum_in_order(&w);
                let mut l = [0u8; 16];
                scales[j] = make_qx_quants(4, &x[sub.clone()], &mut l, Some(&w));
                for (dst, &v) in levels[sub].iter_mut().zip(&l) {
                    *dst = v as i8;
                }
            }
            let mut ls = [0u8; 16];
            let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
            b.scales = [0; 12];
            for (j, &l) in ls.iter().enumerate() {
                if j < 8 {
                    b.scales[j] = l & 0xF;
                } else {
                    b.scales[j - 8] |= (l & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            b.d = f32_to_fp16(d_block);
            finish_block(x, &mut levels, b);
        }
    }
}

/// Shared tail of both quantizers: final levels against the stored scales (sub-blocks with a
/// zero step keep their search levels), then the high-bit mask and the 2-bit packing.
fn finish_block(x: &[f32], levels: &mut [i8; QK_K], b: &mut BlockQ3K) {
    let d = fp16_to_f32(b.d);
    for j in 0..16 {
        let dj = d * scale(&b.scales, j) as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    b.hmask = [0; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (e, (&lv, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
        let mut v = lv as u8;
        if lv > 3 {
            b.hmask[e % 32] |= 1 << (e / 32);
            v -= 4;
        }
        *lo = v;
    }
    pack_2bit(&low, &mut b.qs);
}
