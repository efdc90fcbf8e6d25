//! Q6_K: 256-element super-blocks of sixteen 16-element sub-blocks, `x = d·sc·(q − 32)` with
//! signed 8-bit sub-block scales and 6-bit levels (6.5625 bits per weight).
//!
//! Layout (ggml `block_q6_K`): `ql[128]`, `qh[64]`, `scales[16]` (i8), `d` (fp16). For each
//! 128-element half `h` and `l < 32`: `ql[64h + l]` holds the low four bits of elements
//! `128h + l` (low nibble) and `128h + 64 + l` (high); `ql[64h + 32 + l]` those of `+32` and
//! `+96`; `qh[32h + l]` the top two bits of `+0, +32, +64, +96` in bit pairs 0, 2, 4, 6.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{f32_to_fp16, fp16_to_f32, nearest_int, GROUP_MAX_EPS, QK_K};
use super::simd::make_qx_quants_x8;
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ6K>() as u64 == GgmlType::Q6_K.type_size());

impl BlockCodec for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK: usize = QK_K;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = fp16_to_f32(b.d);
            for h in 0..2 {
                let ql = &b.ql[64 * h..64 * h + 64];
                let qh = &b.qh[32 * h..32 * h + 32];
                let sc = &b.scales[8 * h..8 * h + 8];
                let y = &mut y[128 * h..128 * h + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * sc[is] as f32 * q1 as f32;
                    y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                    y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                    y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                }
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            quantize_block(x, None, b);
        }
    }

    /// `quantize_row_q6_K_impl`: the same as the reference with the importance as the
    /// least-squares weights of every sub-block search.
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for ((x, qw), b) in
            row.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(out.iter_mut())
        {
            quantize_block(x, Some(qw), b);
        }
    }
}

/// One super-block of `quantize_row_q6_K_ref` (`qw` = None) or `_impl` (importance weights).
fn quantize_block(x: &[f32], qw: Option<&[f32]>, b: &mut BlockQ6K) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for h in 0..2 {
        let half = 128 * h..128 * h + 128;
        let found = make_qx_quants_x8(
            32,
            &x[half.clone()],
            &mut levels[half.clone()],
            qw.map(|q| &q[half]),
        );
        scales[8 * h..8 * h + 8].copy_from_slice(&found);
    }
    for &s in &scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = BlockQ6K::zeroed();
        return;
    }
    let iscale = -128.0f32 / max_scale;
    b.d = f32_to_fp16(1.0 / iscale);
    for (q, &s) in b.scales.iter_mut().zip(&scales) {
        *q = nearest_int(iscale * s).min(127) as i8;
    }
    let d = fp16_to_f32(b.d);
    for j in 0..16 {
        let dj = d * b.scales[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as u8;
        }
    }
    for h in 0..2 {
        let l0 = &levels[128 * h..128 * h + 128];
        for l in 0..32 {
            let (a, bb, c, e) = (l0[l], l0[l + 32], l0[l + 64], l0[l + 96]);
            b.ql[64 * h + l] = (a & 0xF) | ((c & 0xF) << 4);
            b.ql[64 * h + l + 32] = (bb & 0xF) | ((e & 0xF) << 4);
            b.qh[32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}
