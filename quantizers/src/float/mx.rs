//! OCP microscaling formats: 32-element blocks along K sharing one E8M0 (power-of-two) scale.
//!
//! **MXFP4** (E2M1 elements) — two scale rules, stored the compressed-tensors way
//! (`mxfp4-pack-quantized`, formats.md §2.5: `weight_packed` uint8 `[N, K/2]` even→low,
//! `weight_scale` uint8 `[N, K/32]` biased exponents):
//! - [`Mxfp4Rule::Ggml`] (ggml `quantize_row_mxfp4_ref`, §5.4): `e = floor(log2(amax)) − 2 + 127`
//!   ([`e8m0::exponent_floor`]); each element becomes the code whose value `kvalues[i] · d`,
//!   `d = 2^(e−127)/2`, `kvalues = 2·E2M1`, is nearest, by exhaustive search in code order with the
//!   first minimum winning. So a tie goes to the smaller magnitude (0.75·2^(e−127) → 0.5, not 1),
//!   a value that rounds to zero gets code 0 whatever its sign, and the block maximum may exceed
//!   6·2^(e−127) (amax < 8·2^(e−127)) and saturate. The distances are f32 operations, as in C.
//!   (ggml's own GGUF block packs element j with j+16; that container layout belongs to the GGUF
//!   codecs — here the elements go to the compressed-tensors packing.)
//! - [`Mxfp4Rule::CompressedTensors`] (`generate_mx_scales` + `cast_to_fp4`, §2.5):
//!   `e = 127 + floor(log2(round_to_power_2(amax))) − 2` ([`e8m0::exponent_round_pow2`]);
//!   elements `clamp(x / 2^(e−127), ±6)` rounded to nearest-even E2M1 with the `x < 0` sign rule.
//!
//! **MXFP8** (E4M3 elements), comfy-kitchen `quantize_mxfp8` (§1.3.3): the weight is zero-padded
//! to `(roundup(N,32), roundup(K,32))`; `e = clamp(ceil(log2(max(amax/448, 2^−127))) + 127, 0,
//! 254)` ([`e8m0::exponent_ceil`]); data `clamp(x / 2^(e−127), ±448)` cast to E4M3; a zero block
//! gets `e = 0` and zero data; the scales are stored in the `to_blocked` swizzle
//! (`[roundup(Np,128), roundup(Kp/32,4)]`).
//!
//! **MXFP8** (E4M3 elements), compressed-tensors `mxfp8-quantized` (§2.5; compressed-tensors
//! 0.20 `MXFP8QuantizationCompressor`, `generate_mx_scales(num_bits=8)`): no padding, `weight`
//! E4M3 `[N, K]` and `weight_scale` uint8 `[N, K/32]` row-major; `e = 127 +
//! floor(log2(round_to_power_2(amax))) − 8` ([`e8m0::exponent_round_pow2`] — the rounding uses
//! the E2M1 mantissa width there too, so an amax rounds up iff its significand is ≥ 1.75 and the
//! block maximum never exceeds 448); data `clamp(x / 2^(e−127), ±448)` cast to E4M3 (RNE).
//!
//! Dequantization is `element · 2^(e−127)` for every rule.

use qtool_formats::codec::{Fp8Format, Overflow};

use super::e2m1::{self, NibbleOrder};
use super::{clamp_sym, e8m0, finite_amax, prepare, roundup, swizzle, FloatError, Matrix, Options};

/// Elements per block.
pub const BLOCK: usize = 32;

/// ggml's `kvalues_mxfp4`: twice the E2M1 value of each code.
const KVALUES: [f32; 16] =
    [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0];

/// Which producer's arithmetic picks the MXFP4 scales and codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mxfp4Rule {
    Ggml,
    CompressedTensors,
}

/// MXFP4 in the compressed-tensors layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mxfp4Tensor {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols/2]`, even element in the low nibble.
    pub packed: Vec<u8>,
    /// `[rows, cols/32]` biased E8M0 exponents.
    pub scales: Vec<u8>,
}

/// MXFP8 in the ComfyUI layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mxfp8Tensor {
    /// Logical shape.
    pub rows: usize,
    pub cols: usize,
    /// E4M3 codes `[roundup(rows,32), roundup(cols,32)]`.
    pub data: Vec<u8>,
    pub data_shape: [usize; 2],
    /// E8M0 exponents, swizzled, `[roundup(Np,128), roundup(Kp/32,4)]`.
    pub scales: Vec<u8>,
    pub scales_shape: [usize; 2],
}

fn require_blocks(scheme: &'static str, cols: usize) -> Result<(), FloatError> {
    if cols % BLOCK != 0 {
        return Err(FloatError::Unsupported {
            scheme,
            reason: format!("in_features {cols} is not a multiple of the block size {BLOCK}"),
        });
    }
    Ok(())
}

/// ggml's `GGML_E8M0_TO_FP32_HALF(e)` = `2^(e−128)`, built from bits (subnormal below e = 2).
fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(u32::from(e - 1) << 23)
    }
}

/// ggml `best_index_mxfp4`: the first code with the smallest `|kvalues[i]·d − x|`.
fn ggml_best_index(x: f32, d: f32) -> u8 {
    if x.is_infinite() {
        return if x > 0.0 { 7 } else { 15 }; // module policy: ±inf saturates
    }
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Quantizes a `[N, K]` weight to MXFP4 (K must be a multiple of 32).
pub fn quantize_mxfp4(
    m: &Matrix<'_>,
    rule: Mxfp4Rule,
    opts: &Options,
) -> Result<Mxfp4Tensor, FloatError> {
    let scheme = match rule {
        Mxfp4Rule::Ggml => "mxfp4 (ggml rule)",
        Mxfp4Rule::CompressedTensors => "mxfp4 (compressed-tensors rule)",
    };
    require_blocks(scheme, m.cols())?;
    let x = prepare(m, opts)?;
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks_exact(BLOCK) {
        let amax = finite_amax(block.iter().copied());
        match rule {
            Mxfp4Rule::Ggml => {
                let e = e8m0::exponent_floor(amax, 2);
                let d = e8m0_half(e);
                scales.push(e);
                codes.extend(block.iter().map(|&v| ggml_best_index(v, d)));
            }
            Mxfp4Rule::CompressedTensors => {
                let e = e8m0::exponent_round_pow2(amax, 2);
                let s = e8m0::decode(e);
                scales.push(e);
                codes.extend(block.iter().map(|&v| e2m1::encode_lt0(clamp_sym(v / s, e2m1::MAX))));
            }
        }
    }
    Ok(Mxfp4Tensor {
        rows: m.rows(),
        cols: m.cols(),
        packed: e2m1::pack(&codes, NibbleOrder::EvenLow),
        scales,
    })
}

impl Mxfp4Tensor {
    /// Reassembles a tensor read from a checkpoint, checking every part's length.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        packed: Vec<u8>,
        scales: Vec<u8>,
    ) -> Result<Self, FloatError> {
        require_blocks("mxfp4", cols)?;
        let n = rows.checked_mul(cols).ok_or(FloatError::Shape {
            rows,
            cols,
            expected: None,
            got: packed.len(),
        })?;
        if packed.len() != n / 2 {
            return Err(FloatError::PartLength {
                part: "mxfp4 packed weight",
                expected: n / 2,
                got: packed.len(),
            });
        }
        if scales.len() != n / BLOCK {
            return Err(FloatError::PartLength {
                part: "mxfp4 scales",
                expected: n / BLOCK,
                got: scales.len(),
            });
        }
        Ok(Mxfp4Tensor { rows, cols, packed, scales })
    }

    /// `e2m1 · 2^(e−127)`, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let codes = e2m1::unpack(&self.packed, NibbleOrder::EvenLow);
        codes
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .flat_map(|(blk, &e)| {
                let s = e8m0::decode(e);
                blk.iter().map(move |&c| e2m1::decode(c) * s)
            })
            .collect()
    }
}

/// MXFP8 in the compressed-tensors layout (`mxfp8-quantized`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mxfp8CtTensor {
    pub rows: usize,
    pub cols: usize,
    /// E4M3 codes `[rows, cols]`.
    pub data: Vec<u8>,
    /// `[rows, cols/32]` biased E8M0 exponents, row-major.
    pub scales: Vec<u8>,
}

/// compressed-tensors MXFP8 (K must be a multiple of 32: compressed-tensors' group strategy
/// does not pad).
///
/// torch divides by a power of two, which is exact in every compute dtype down to the
/// subnormals, so the f32 arithmetic here is the producer's. (An F16 weight whose block scale
/// 2^(e−127) lies outside f16's range is mishandled by compressed-tensors itself, which holds
/// the scale in the weight's dtype; qtool keeps the exact exponent.)
pub fn quantize_mxfp8_ct(m: &Matrix<'_>, opts: &Options) -> Result<Mxfp8CtTensor, FloatError> {
    require_blocks("mxfp8 (compressed-tensors rule)", m.cols())?;
    let x = prepare(m, opts)?;
    let fmt = Fp8Format::E4M3Fn;
    let mut data = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks_exact(BLOCK) {
        let e = e8m0::exponent_round_pow2(finite_amax(block.iter().copied()), 8);
        let s = e8m0::decode(e);
        scales.push(e);
        data.extend(
            block.iter().map(|&v| fmt.encode(clamp_sym(v / s, fmt.max()), Overflow::Saturate)),
        );
    }
    Ok(Mxfp8CtTensor { rows: m.rows(), cols: m.cols(), data, scales })
}

impl Mxfp8CtTensor {
    /// Reassembles a tensor read from a checkpoint, checking every part's length.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        scales: Vec<u8>,
    ) -> Result<Self, FloatError> {
        require_blocks("mxfp8", cols)?;
        let n = rows.checked_mul(cols).ok_or(FloatError::Shape {
            rows,
            cols,
            expected: None,
            got: data.len(),
        })?;
        if data.len() != n {
            return Err(FloatError::PartLength {
                part: "mxfp8 weight",
                expected: n,
                got: data.len(),
            });
        }
        if scales.len() != n / BLOCK {
            return Err(FloatError::PartLength {
                part: "mxfp8 scales",
                expected: n / BLOCK,
                got: scales.len(),
            });
        }
        Ok(Mxfp8CtTensor { rows, cols, data, scales })
    }

    /// `e4m3 · 2^(e−127)`, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let fmt = Fp8Format::E4M3Fn;
        self.data
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .flat_map(|(blk, &e)| {
                let s = e8m0::decode(e);
                blk.iter().map(move |&c| fmt.decode(c) * s)
            })
            .collect()
    }
}

/// comfy-kitchen MXFP8 (`mxfp8` layers).
pub fn quantize_mxfp8_comfy(m: &Matrix<'_>, opts: &Options) -> Result<Mxfp8Tensor, FloatError> {
    let x = prepare(m, opts)?;
    let (rows, cols) = (m.rows(), m.cols());
    let (rp, cp) = (roundup(rows, BLOCK), roundup(cols, BLOCK));
    let nb = cp / BLOCK;
    let fmt = Fp8Format::E4M3Fn;
    let mut data = vec![0u8; rp * cp];
    let mut scales = vec![0u8; rp * nb];
    let mut block = [0.0f32; BLOCK];
    for r in 0..rows {
        for b in 0..nb {
            for (i, v) in block.iter_mut().enumerate() {
                let c = b * BLOCK + i;
                *v = if c < cols { x[r * cols + c] } else { 0.0 };
            }
            let amax = finite_amax(block);
            if amax == 0.0 {
                continue; // e = 0, data +0
            }
            let e = e8m0::exponent_ceil(amax, fmt.max());
            scales[r * nb + b] = e;
            let s = e8m0::decode(e);
            let out = &mut data[r * cp + b * BLOCK..][..BLOCK];
            for (o, &v) in out.iter_mut().zip(&block) {
                *o = fmt.encode(clamp_sym(v / s, fmt.max()), Overflow::Saturate);
            }
        }
    }
    let scales_shape = swizzle::blocked_shape(rp, nb);
    Ok(Mxfp8Tensor {
        rows,
        cols,
        data,
        data_shape: [rp, cp],
        scales: swizzle::to_blocked(&scales, rp, nb)?,
        scales_shape,
    })
}

impl Mxfp8Tensor {
    /// Reassembles a tensor read from a checkpoint, checking every part's length.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        scales: Vec<u8>,
    ) -> Result<Self, FloatError> {
        let (rp, cp) = (roundup(rows, BLOCK), roundup(cols, BLOCK));
        let scales_shape = swizzle::blocked_shape(rp, cp / BLOCK);
        let nd = rp.checked_mul(cp).ok_or(FloatError::Shape {
            rows,
            cols,
            expected: None,
            got: data.len(),
        })?;
        if data.len() != nd {
            return Err(FloatError::PartLength {
                part: "mxfp8 weight",
                expected: nd,
                got: data.len(),
            });
        }
        let ns = scales_shape[0] * scales_shape[1];
        if scales.len() != ns {
            return Err(FloatError::PartLength {
                part: "mxfp8 scales",
                expected: ns,
                got: scales.len(),
            });
        }
        Ok(Mxfp8Tensor { rows, cols, data, data_shape: [rp, cp], scales, scales_shape })
    }

    /// `e4m3 · 2^(e−127)`, row-major `[rows, cols]` (padding dropped).
    pub fn dequantize(&self) -> Result<Vec<f32>, FloatError> {
        let [rp, cp] = self.data_shape;
        let nb = cp / BLOCK;
        let scales = swizzle::from_blocked(&self.scales, rp, nb)?;
        let fmt = Fp8Format::E4M3Fn;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(
                    fmt.decode(self.data[r * cp + c]) * e8m0::decode(scales[r * nb + c / BLOCK]),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_half_scale_matches_powers_of_two() {
        for e in 0..=254u8 {
            assert_eq!(e8m0_half(e), 2f64.powi(i32::from(e) - 128) as f32, "e = {e}");
        }
    }

    #[test]
    fn ggml_ties_go_to_the_smaller_magnitude() {
        // amax 4 → e = floor(2) − 2 + 127 = 127, d = 0.5: element units are E2M1 values.
        let mut w = [0.0f32; 32];
        w[..6].copy_from_slice(&[4.0, 0.75, 1.25, -0.25, 2.5, 5.0]);
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize_mxfp4(&m, Mxfp4Rule::Ggml, &Options::default()).unwrap();
        assert_eq!(q.scales, [127]);
        let codes = e2m1::unpack(&q.packed, NibbleOrder::EvenLow);
        assert_eq!(&codes[..6], &[6, 1, 2, 0, 4, 6], "0.75→0.5, 1.25→1, −0.25→+0, 2.5→2, 5→4");
        let ct = quantize_mxfp4(&m, Mxfp4Rule::CompressedTensors, &Options::default()).unwrap();
        let codes = e2m1::unpack(&ct.packed, NibbleOrder::EvenLow);
        assert_eq!(&codes[..6], &[6, 2, 2, 8, 4, 6], "RNE: 0.75→1, −0.25→−0");
    }

    #[test]
    fn ggml_block_max_can_saturate() {
        // amax 7.9: floor(log2 7.9) = 2 → scale 1, 7.9 is nearest to 8?? no: E2M1 max 6 → code 7.
        let mut w = [0.0f32; 32];
        w[0] = 7.9;
        w[1] = -7.9;
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize_mxfp4(&m, Mxfp4Rule::Ggml, &Options::default()).unwrap();
        assert_eq!(q.scales, [127]);
        assert_eq!(q.packed[0], 0xF7);
        assert_eq!(&q.dequantize()[..2], &[6.0, -6.0]);
    }

    #[test]
    fn ct_rounds_amax_to_a_power_of_two_first() {
        let mut w = [0.0f32; 32];
        w[0] = 7.0; // 1.75·2² → rounds up to 8 → e = 127 + 3 − 2 = 128, scale 2
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize_mxfp4(&m, Mxfp4Rule::CompressedTensors, &Options::default()).unwrap();
        assert_eq!(q.scales, [128]);
        assert_eq!(q.dequantize()[0], 8.0, "7/2 = 3.5 ties to 4 (even), ×2");
        let g = quantize_mxfp4(&m, Mxfp4Rule::Ggml, &Options::default()).unwrap();
        assert_eq!(g.scales, [127]);
        assert_eq!(g.dequantize()[0], 6.0);
    }

    #[test]
    fn mxfp4_needs_whole_blocks_and_zero_blocks_are_zero() {
        let w = [0.0f32; 48];
        let err =
            quantize_mxfp4(&Matrix::new(&w, 2, 24).unwrap(), Mxfp4Rule::Ggml, &Options::default());
        assert!(matches!(err, Err(FloatError::Unsupported { .. })));
        let w = [0.0f32; 64];
        for rule in [Mxfp4Rule::Ggml, Mxfp4Rule::CompressedTensors] {
            let q = quantize_mxfp4(&Matrix::new(&w, 2, 32).unwrap(), rule, &Options::default())
                .unwrap();
            assert_eq!(q.scales, [0, 0]);
            assert!(q.packed.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn mxfp8_pads_uses_ceil_and_swizzles() {
        let (rows, cols) = (3, 40);
        let mut w = vec![0.0f32; rows * cols];
        w[0] = 449.0; // needs scale > 1 → ceil → e = 128
        w[1] = 1.0;
        w[cols + 33] = 0.5; // row 1, block 1 (cols 32..64, partly padding): ceil(log2(0.5/448))
        let m = Matrix::new(&w, rows, cols).unwrap();
        let q = quantize_mxfp8_comfy(&m, &Options::default()).unwrap();
        assert_eq!(q.data_shape, [32, 64]);
        assert_eq!(q.scales_shape, [128, 4]);
        let rm = swizzle::from_blocked(&q.scales, 32, 2).unwrap();
        assert_eq!(rm[0], 128);
        assert_eq!(rm[1], 0, "zero block");
        assert_eq!(rm[3], (127 + (0.5f64 / 448.0).log2().ceil() as i32) as u8);
        let d = q.dequantize().unwrap();
        assert_eq!(d[0], 448.0, "449/2 = 224.5 → E4M3 224, ×2");
        assert_eq!(d[1], 1.0);
        assert_eq!(d[cols + 33], 0.5);
        assert_eq!(d.len(), rows * cols);
    }

    #[test]
    fn mxfp8_ct_rounds_amax_to_a_power_of_two_and_never_saturates() {
        let mut w = vec![0.0f32; 96];
        w[0] = 448.0; // 1.75·2⁸ rounds up to 2⁹ → e = 127 + 9 − 8 = 128, scale 2
        w[1] = -1.0;
        w[32] = 445.0; // 1.738·2⁸ rounds down → e = 127, scale 1, 445 → E4M3 448
        w[64] = -0.0; // zero block → e = 0, sign kept
        let m = Matrix::new(&w, 1, 96).unwrap();
        let q = quantize_mxfp8_ct(&m, &Options::default()).unwrap();
        assert_eq!(q.scales, [128, 127, 0]);
        assert_eq!(q.data[64], 0x80);
        let d = q.dequantize();
        assert_eq!((d[0], d[1], d[32], d[64]), (448.0, -1.0, 448.0, 0.0));
        let err = quantize_mxfp8_ct(&Matrix::new(&w[..80], 2, 40).unwrap(), &Options::default());
        assert!(matches!(err, Err(FloatError::Unsupported { .. })));
        assert!(matches!(
            Mxfp8CtTensor::from_parts(1, 96, vec![0; 96], vec![0; 2]),
            Err(FloatError::PartLength { part: "mxfp8 scales", expected: 3, got: 2 })
        ));
        assert!(Mxfp8CtTensor::from_parts(usize::MAX, 64, vec![0; 4], vec![0; 4]).is_err());
    }

    #[test]
    fn from_parts_rejects_absurd_shapes_without_panicking() {
        for (rows, cols) in [(usize::MAX, 32), (32, usize::MAX - 31), (usize::MAX, usize::MAX)] {
            assert!(Mxfp4Tensor::from_parts(rows, cols, vec![0; 4], vec![0; 4]).is_err());
            assert!(Mxfp8Tensor::from_parts(rows, cols, vec![0; 4], vec![0; 4]).is_err());
        }
    }

    #[test]
    fn from_parts_rejects_wrong_lengths() {
        assert!(matches!(
            Mxfp4Tensor::from_parts(2, 64, vec![0; 63], vec![0; 4]),
            Err(FloatError::PartLength { part: "mxfp4 packed weight", expected: 64, got: 63 })
        ));
        assert!(matches!(
            Mxfp8Tensor::from_parts(2, 64, vec![0; 32 * 64], vec![0; 7]),
            Err(FloatError::PartLength { part: "mxfp8 scales", expected: 512, got: 7 })
        ));
    }
}
