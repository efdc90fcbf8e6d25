//! MXFP4 (OCP microscaling FP4): 32 E2M1 values sharing one E8M0 power-of-two scale.
//!
//! Layout (ggml `block_mxfp4`): `e` (E8M0), `qs[16]`: element `j` in the low nibble of byte `j`,
//! element `j + 16` in the high nibble. ggml stores E2M1 magnitudes doubled (0, 1, 2, 3, 4, 6,
//! 8, 12) and halves the scale instead, so every product is exact in f32.

use bytemuck::{Pod, Zeroable};
use qtool_formats::GgmlType;

use super::common::{e8m0_to_f32_half, trunc_to_i8};
use super::BlockCodec;

const QK: usize = 32;

/// Doubled E2M1 values by 4-bit code (bit 3 = sign).
const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; QK / 2],
}

const _: () = assert!(size_of::<BlockMxfp4>() as u64 == GgmlType::MXFP4.type_size());

/// The code whose value times `d` is nearest to `x`; the lowest code wins ties, as ggml's
/// exhaustive search does (so +0 beats −0).
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

impl BlockCodec for BlockMxfp4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const BLOCK: usize = QK;

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = e8m0_to_f32_half(b.e);
            for j in 0..QK / 2 {
                y[j] = KVALUES[(b.qs[j] & 0xF) as usize] as f32 * d;
                y[j + QK / 2] = KVALUES[(b.qs[j] >> 4) as usize] as f32 * d;
            }
        }
    }

    /// `quantize_row_mxfp4_ref`: shared exponent `floor(log2(amax)) − 2` (so amax lands in
    /// [4, 8)·scale, i.e. on the top codes), each element to its nearest code.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let mut amax = 0.0f32;
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                }
            }
            // f32::log2 is the platform log2f, as in ggml. Exponents below the E8M0 range (amax
            // under 2^-125) wrap modulo 256 exactly as ggml's float-to-byte cast does.
            let e =
                if amax > 0.0 { trunc_to_i8(amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
            let d = e8m0_to_f32_half(e);
            b.e = e;
            for j in 0..QK / 2 {
                b.qs[j] = best_index(x[j], d) | (best_index(x[j + QK / 2], d) << 4);
            }
        }
    }
}
