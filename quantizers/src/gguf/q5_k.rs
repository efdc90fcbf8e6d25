//! Q5_K: Q4_K's super-block scheme with 5-bit levels (5.5 bits per weight).
//!
//! Layout (ggml `block_q5_K`): `d`, `dmin` (fp16), `scales[12]` (as Q4_K), `qh[32]`, `qs[128]`.
//! For 64-element chunk `c`, byte `32c + l` of `qs` holds the low four bits of elements
//! `64c + l` (low nibble) and `64c + 32 + l` (high nibble); their fifth bits are bits `2c` and
//! `2c + 1` of `qh[l]`.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{fp16_to_f32, get_scale_min_k4, Qkx2Search, QK_K};
use super::q4_k::{quantize_k4_superblock, quantize_k4_superblock_weighted};
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockQ5K>() as u64 == GgmlType::Q5_K.type_size());

/// `quantize_row_q5_K_ref`'s sub-block search: 16 candidate scales from `(nmax - 0.5)/range`.
const SEARCH: Qkx2Search =
    Qkx2Search { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };

impl BlockCodec for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
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
                let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                let ql = &b.qs[32 * c..32 * c + 32];
                let y = &mut y[64 * c..64 * c + 64];
                for l in 0..32 {
                    let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                    y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                    y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                }
            }
        }
    }

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let levels;
            (b.d, b.dmin, b.scales, levels) = quantize_k4_superblock(x, SEARCH);
            pack_q5k(&levels, b);
        }
    }

    /// `quantize_row_q5_K_impl`, see [`quantize_k4_superblock_weighted`].
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        for ((x, qw), b) in
            row.chunks_exact(QK_K).zip(importance.chunks_exact(QK_K)).zip(out.iter_mut())
        {
            let levels;
            (b.d, b.dmin, b.scales, levels) = quantize_k4_superblock_weighted(x, qw, 31, true);
            pack_q5k(&levels, b);
        }
    }
}

/// Splits 5-bit levels into `qs` nibbles and `qh` bits (see the module doc for the order).
fn pack_q5k(levels: &[u8; QK_K], b: &mut BlockQ5K) {
    b.qh = [0; QK_K / 8];
    for c in 0..4 {
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let mut l1 = levels[64 * c + l];
            if l1 > 15 {
                l1 -= 16;
                b.qh[l] |= m1;
            }
            let mut l2 = levels[64 * c + 32 + l];
            if l2 > 15 {
                l2 -= 16;
                b.qh[l] |= m2;
            }
            b.qs[32 * c + l] = l1 | (l2 << 4);
        }
    }
}
