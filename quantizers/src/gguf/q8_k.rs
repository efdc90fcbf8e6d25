//! Q8_K: 256 signed bytes with one f32 scale and per-16 sums, `x = d·q`. ggml uses it for
//! activations in k-quant dot products; it also appears in GGUF files now and then.
//!
//! Layout (ggml `block_q8_K`): `d` (f32, little-endian), `qs[256]` (i8), `bsums[16]` (i16 LE,
//! the sum of each group of 16 levels).

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{nearest_int, QK_K};
use super::BlockCodec;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [u8; 2 * QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ8K>() as u64 == GgmlType::Q8_K.type_size());

impl BlockCodec for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK: usize = QK_K;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = f32::from_le_bytes(b.d);
            for (yj, &q) in y.iter_mut().zip(&b.qs) {
                *yj = d * q as f32;
            }
        }
    }

    /// `quantize_row_q8_K_ref`. For an all-zero block ggml leaves `bsums` as it found them;
    /// qtool writes zeros there so output never depends on the buffer's previous contents.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let (max, amax) = super::common::signed_absmax(x);
            if amax == 0.0 {
                *b = Self::zeroed();
                continue;
            }
            // -127 rather than -128 so that no level is -128 (ggml's AVX paths rely on it).
            let iscale = -127.0f32 / max;
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for g in 0..QK_K / 16 {
                let sum: i32 = b.qs[16 * g..16 * g + 16].iter().map(|&q| i32::from(q)).sum();
                b.bsums[2 * g..2 * g + 2].copy_from_slice(&(sum as i16).to_le_bytes());
            }
            b.d = (1.0 / iscale).to_le_bytes();
        }
    }
}
