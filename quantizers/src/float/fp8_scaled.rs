//! FP8 (E4M3 / E5M2) with multiplicative scales: `W ≈ fp8 · scale`.
//!
//! Two producers, two orders of operations, both reproduced exactly:
//!
//! **ComfyUI / comfy-kitchen** (per-tensor only; formats.md §1.2, §1.3.1; CK `tensor/fp8.py`
//! `TensorCoreFP8Layout.quantize` and `backends/eager/quantization.py::quantize_per_tensor_fp8`):
//! ```text
//! scale = (amax(|W|) / fmax)          computed on the weight's dtype, then .to(float32)
//! r     = (1.0 / scale).to(W.dtype)   reciprocal in f32, rounded to the weight's dtype
//! q     = clamp(W * r, ±fmax).to(fp8) product rounded to the weight's dtype
//! ```
//! With a bf16 weight the scale carries bf16 precision, the reciprocal is rounded to bf16 and
//! each product is rounded to bf16 before the FP8 cast (a double rounding the bytes show).
//!
//! **compressed-tensors** (`float-quantized`, §2.1–2.2; `calculate_qparams` + `_quantize`):
//! ```text
//! scale = amax_g / ((q_max − q_min) / 2) = amax_g / 448   in the weight's dtype, per group g
//! scale = eps(dtype) where scale == 0
//! q     = clamp(W / scale + 0, ±448).to(float8_e4m3fn)    division rounded to the weight's
//!                                                          dtype; `+ 0` is the zero point
//! ```
//! with groups: the whole tensor (`tensor`, scale shape `[1]`), one per output row (`channel`,
//! `[N, 1]`) or 2-D tiles (`block`, `[cdiv(N,br), cdiv(K,bc)]`; compressed-tensors zero-pads to
//! whole tiles before observing and truncates after, which changes no amax). compressed-tensors
//! quantizes floats to E4M3 only (`calculate_range` uses the E4M3 range for 8-bit floats).
//!
//! Where they differ: ComfyUI multiplies by a rounded reciprocal, compressed-tensors divides by
//! the scale; ComfyUI stores the scale as F32, compressed-tensors in the weight's dtype; an
//! all-zero tensor gives ComfyUI `0·inf = NaN` everywhere (we write zero codes and keep the
//! scale 0, which dequantizes to the exact zeros ComfyUI meant) and compressed-tensors the scale
//! `eps`. Scales are the same number, `amax/448`, in both. Dequantization is
//! `(q · scale)` rounded to the weight's dtype in both (`q.to(dtype) * scale`).
//!
//! Negative zero: ComfyUI keeps it (`-0.0 · r = -0.0` → `0x80`). compressed-tensors creates a
//! zero point of zeros even for symmetric schemes (`initialize_qparams(force_zero_point=True)`,
//! the default; the compressor drops it from the checkpoint afterwards) and `_quantize` adds it
//! before the cast, so `-0.0 + 0 = +0.0` → `0x00`; a small negative that only rounds to zero in
//! the cast keeps its sign (`0x80`).

use qtool_formats::codec::{Fp8Format, Overflow};

use rayon::prelude::*;

use super::{
    cdiv, clamp_sym, prepare, prepare_amax, ComputeDType, FloatError, Matrix, Options, PAR_CHUNK,
};

/// How many weights share one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output row (compressed-tensors `channel`).
    Channel,
    /// One scale per `rows × cols` tile (compressed-tensors `block`, usually 128×128).
    Block { rows: usize, cols: usize },
}

/// A quantized FP8 tensor with its scales, container-agnostic.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Scaled {
    pub format: Fp8Format,
    pub rows: usize,
    pub cols: usize,
    /// FP8 codes, row-major `[rows, cols]`.
    pub data: Vec<u8>,
    pub granularity: Granularity,
    /// Multiplicative dequantization scales, row-major in `scale_shape`; every value is exactly
    /// representable in `scale_dtype`.
    pub scales: Vec<f32>,
    /// `[]` (ComfyUI scalar), `[1]`, `[N, 1]` or `[cdiv(N,br), cdiv(K,bc)]`.
    pub scale_shape: Vec<usize>,
    /// The dtype the scale tensor is written in: F32 for ComfyUI, the weight's dtype for
    /// compressed-tensors.
    pub scale_dtype: ComputeDType,
    /// The weight's dtype, in which dequantization rounds its products.
    pub compute: ComputeDType,
}

impl Granularity {
    fn validate(self) -> Result<Self, FloatError> {
        match self {
            Granularity::Block { rows: 0, .. } | Granularity::Block { cols: 0, .. } => {
                Err(FloatError::Unsupported {
                    scheme: "fp8 block",
                    reason: "block dimensions must be at least 1".into(),
                })
            }
            g => Ok(g),
        }
    }

    /// The compressed-tensors scale shape for a `[rows, cols]` weight.
    fn scale_shape(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Granularity::Tensor => vec![1],
            Granularity::Channel => vec![rows, 1],
            Granularity::Block { rows: br, cols: bc } => vec![cdiv(rows, br), cdiv(cols, bc)],
        }
    }

    /// Index of the scale that covers element `(r, c)`.
    #[inline]
    fn scale_index(self, r: usize, c: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Channel => r,
            Granularity::Block { rows: br, cols: bc } => (r / br) * cdiv(cols, bc) + c / bc,
        }
    }
}

/// ComfyUI / comfy-kitchen per-tensor FP8 (`float8_e4m3fn` / `float8_e5m2` layers and the
/// legacy `scaled_fp8` checkpoints, whose `scale_weight` is the same number).
pub fn quantize_comfy(
    m: &Matrix<'_>,
    format: Fp8Format,
    opts: &Options,
) -> Result<Fp8Scaled, FloatError> {
    let (x, amax) = prepare_amax(m, opts)?;
    let dt = opts.compute;
    let fmax = format.max();
    let scale = dt.round(amax / fmax);
    let mut data = vec![0u8; x.len()];
    // Element-wise, so splitting the work changes no byte.
    let chunks = data.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK));
    if amax == 0.0 {
        // ComfyUI: 1/0 = inf and 0·inf = NaN. Zero codes (sign kept) mean what it meant.
        chunks.for_each(|(out, xs)| {
            for (o, &v) in out.iter_mut().zip(xs) {
                *o =
                    format.encode(if v == 0.0 { v } else { v * f32::INFINITY }, Overflow::Saturate);
            }
        });
    } else {
        let r = dt.round(1.0 / scale);
        if !r.is_finite() {
            return Err(FloatError::ReciprocalOverflow { scale, amax, dtype: dt });
        }
        if dt == ComputeDType::BF16 {
            // Every `round(v·r)` is a bf16 value: its code is a lookup by the bf16 bit pattern
            // (the table holds exactly what the general path computes for each of the 2^16).
            let lut: Vec<u8> = (0..=u16::MAX)
                .map(|h| {
                    let y = f32::from_bits(u32::from(h) << 16);
                    format.encode(clamp_sym(y, fmax), Overflow::Saturate)
                })
                .collect();
            chunks.for_each(|(out, xs)| {
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = lut[(dt.round(v * r).to_bits() >> 16) as usize];
                }
            });
        } else {
            chunks.for_each(|(out, xs)| {
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = format.encode(clamp_sym(dt.round(v * r), fmax), Overflow::Saturate);
                }
            });
        }
    }
    Ok(Fp8Scaled {
        format,
        rows: m.rows(),
        cols: m.cols(),
        data,
        granularity: Granularity::Tensor,
        scales: vec![scale],
        scale_shape: vec![],
        scale_dtype: ComputeDType::F32,
        compute: dt,
    })
}

/// compressed-tensors `float-quantized` FP8 (E4M3) with `tensor`, `channel` or `block` scales.
pub fn quantize_compressed_tensors(
    m: &Matrix<'_>,
    granularity: Granularity,
    opts: &Options,
) -> Result<Fp8Scaled, FloatError> {
    let granularity = granularity.validate()?;
    let x = prepare(m, opts)?;
    let dt = opts.compute;
    let (rows, cols) = (m.rows(), m.cols());
    let format = Fp8Format::E4M3Fn;
    let fmax = format.max();
    let scale_shape = granularity.scale_shape(rows, cols);
    let n_scales: usize = scale_shape.iter().product();
    let mut amax = vec![0.0f32; n_scales];
    for r in 0..rows {
        for c in 0..cols {
            let v = x[r * cols + c];
            if v.is_finite() {
                let s = &mut amax[granularity.scale_index(r, c, cols)];
                *s = s.max(v.abs());
            }
        }
    }
    let eps = dt.eps();
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| {
            let s = dt.round(a / fmax);
            if s == 0.0 {
                eps
            } else {
                s
            }
        })
        .collect();
    let mut data = Vec::with_capacity(x.len());
    for r in 0..rows {
        for c in 0..cols {
            let s = scales[granularity.scale_index(r, c, cols)];
            // `scaled += zero_point` with a zero point of +0: turns −0.0 into +0.0, nothing else.
            let q = clamp_sym(dt.round(x[r * cols + c] / s) + 0.0, fmax);
            data.push(format.encode(q, Overflow::Saturate));
        }
    }
    Ok(Fp8Scaled {
        format,
        rows,
        cols,
        data,
        granularity,
        scales,
        scale_shape,
        scale_dtype: dt,
        compute: dt,
    })
}

impl Fp8Scaled {
    /// Reassembles a tensor read from a checkpoint, checking every length against the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        format: Fp8Format,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        granularity: Granularity,
        scales: Vec<f32>,
        scale_dtype: ComputeDType,
        compute: ComputeDType,
    ) -> Result<Self, FloatError> {
        let granularity = granularity.validate()?;
        let n = rows.checked_mul(cols).ok_or(FloatError::Shape {
            rows,
            cols,
            expected: None,
            got: data.len(),
        })?;
        if data.len() != n {
            return Err(FloatError::PartLength { part: "fp8 data", expected: n, got: data.len() });
        }
        let scale_shape = granularity.scale_shape(rows, cols);
        let ns: usize = scale_shape.iter().product();
        if scales.len() != ns {
            return Err(FloatError::PartLength {
                part: "fp8 scales",
                expected: ns,
                got: scales.len(),
            });
        }
        Ok(Fp8Scaled {
            format,
            rows,
            cols,
            data,
            granularity,
            scales,
            scale_shape,
            scale_dtype,
            compute,
        })
    }

    /// `q · scale`, rounded to the weight's dtype, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len());
        for r in 0..self.rows {
            for c in 0..self.cols {
                let s = self.scales[self.granularity.scale_index(r, c, self.cols)];
                out.push(self.compute.round(self.format.decode(self.data[r * self.cols + c]) * s));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(compute: ComputeDType) -> Options {
        Options { compute, allow_nonfinite: false }
    }

    #[test]
    fn comfy_per_tensor_known_vector() {
        let w = [448.0f32, -224.0, 1.0, 0.0, -0.0, 0.5];
        let m = Matrix::new(&w, 2, 3).unwrap();
        let q = quantize_comfy(&m, Fp8Format::E4M3Fn, &Options::default()).unwrap();
        assert_eq!(q.scales, [1.0]);
        assert_eq!(q.scale_shape, Vec::<usize>::new());
        assert_eq!(q.data, [0x7E, 0xF6, 0x38, 0x00, 0x80, 0x30]);
        assert_eq!(q.dequantize(), w);
    }

    #[test]
    fn comfy_bf16_rounds_scale_reciprocal_and_product() {
        // amax = 3: scale = 3/448 rounded to bf16; 1/scale rounded to bf16; x·r rounded to bf16.
        let w = [3.0f32, 1.0, 0.3];
        let m = Matrix::new(&w, 1, 3).unwrap();
        let q = quantize_comfy(&m, Fp8Format::E4M3Fn, &opts(ComputeDType::BF16)).unwrap();
        let scale = ComputeDType::BF16.round(3.0 / 448.0);
        assert_eq!(q.scales, [scale]);
        assert_ne!(scale, 3.0 / 448.0, "the scale carries bf16 precision");
        let r = ComputeDType::BF16.round(1.0 / scale);
        let x = ComputeDType::BF16.round(0.3);
        let expect = Fp8Format::E4M3Fn.encode(ComputeDType::BF16.round(x * r), Overflow::Saturate);
        assert_eq!(q.data[2], expect);
        // The max element may exceed 448 after rounding and is clamped, never NaN.
        assert!(q.data.iter().all(|&b| b & 0x7F != 0x7F));
    }

    #[test]
    fn comfy_zero_tensor_gives_zero_codes() {
        let w = [0.0f32, -0.0, 0.0, 0.0];
        let m = Matrix::new(&w, 2, 2).unwrap();
        let q = quantize_comfy(&m, Fp8Format::E5M2, &Options::default()).unwrap();
        assert_eq!(q.data, [0x00, 0x80, 0x00, 0x00]);
        assert_eq!(q.scales, [0.0]);
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn comfy_f16_reciprocal_overflow_is_an_error() {
        let w = [1e-3f32, 0.0];
        let m = Matrix::new(&w, 1, 2).unwrap();
        let err = quantize_comfy(&m, Fp8Format::E4M3Fn, &opts(ComputeDType::F16)).unwrap_err();
        assert!(matches!(err, FloatError::ReciprocalOverflow { .. }), "{err}");
        assert!(quantize_comfy(&m, Fp8Format::E4M3Fn, &opts(ComputeDType::F32)).is_ok());
    }

    #[test]
    fn ct_channel_scales_per_row_and_eps_for_zero_rows() {
        let w = [448.0f32, 1.0, 0.0, -0.0, 2.0, -896.0];
        let m = Matrix::new(&w, 3, 2).unwrap();
        let q = quantize_compressed_tensors(&m, Granularity::Channel, &Options::default()).unwrap();
        assert_eq!(q.scale_shape, [3, 1]);
        assert_eq!(q.scales, [1.0, f32::EPSILON, 2.0]);
        assert_eq!(q.data, [0x7E, 0x38, 0x00, 0x00, 0x38, 0xFE], "−0.0 + zero point = +0");
        let tiny = [1.0f32, -1e-30];
        let q = quantize_compressed_tensors(
            &Matrix::new(&tiny, 1, 2).unwrap(),
            Granularity::Tensor,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(q.data[1], 0x80, "a negative that rounds to zero keeps its sign");
        let q16 = quantize_compressed_tensors(&m, Granularity::Channel, &opts(ComputeDType::BF16))
            .unwrap();
        assert_eq!(q16.scales[1], 0.0078125, "bf16 eps");
    }

    #[test]
    fn ct_block_covers_partial_tiles() {
        let (rows, cols) = (5, 7);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let m = Matrix::new(&w, rows, cols).unwrap();
        let g = Granularity::Block { rows: 4, cols: 4 };
        let q = quantize_compressed_tensors(&m, g, &Options::default()).unwrap();
        assert_eq!(q.scale_shape, [2, 2]);
        // Tile (1,1) holds rows 4.., cols 4..: max element 34.
        assert_eq!(q.scales[3], 34.0 / 448.0);
        assert_eq!(q.scales[0], 24.0 / 448.0);
        let d = q.dequantize();
        for (a, b) in d.iter().zip(&w) {
            assert!((a - b).abs() <= b.abs() / 16.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn nonfinite_policy() {
        let w = [1.0f32, f32::NAN, f32::INFINITY, -2.0];
        let m = Matrix::new(&w, 2, 2).unwrap();
        let err = quantize_comfy(&m, Fp8Format::E4M3Fn, &Options::default()).unwrap_err();
        assert!(matches!(err, FloatError::NonFinite { index: 1, row: 0, col: 1, .. }));
        let allow = Options { allow_nonfinite: true, ..Default::default() };
        let q = quantize_comfy(&m, Fp8Format::E4M3Fn, &allow).unwrap();
        assert_eq!(q.scales, [2.0 / 448.0], "amax of the finite elements");
        assert_eq!(q.data[1] & 0x7F, 0x7F, "NaN stays NaN");
        assert_eq!(q.data[2], 0x7E, "inf saturates");
        assert_eq!(q.data[3], 0xFE);
        let q = quantize_compressed_tensors(&m, Granularity::Tensor, &allow).unwrap();
        assert_eq!(q.data[2], 0x7E);
    }

    #[test]
    fn from_parts_rejects_absurd_shapes_without_panicking() {
        let g = Granularity::Block { rows: 128, cols: 128 };
        for (rows, cols) in [(usize::MAX, 2), (usize::MAX, usize::MAX)] {
            let r = Fp8Scaled::from_parts(
                Fp8Format::E4M3Fn,
                rows,
                cols,
                vec![0; 4],
                g,
                vec![1.0],
                ComputeDType::F32,
                ComputeDType::F32,
            );
            assert!(r.is_err());
        }
    }

    #[test]
    fn from_parts_checks_lengths() {
        let g = Granularity::Block { rows: 128, cols: 128 };
        let err = Fp8Scaled::from_parts(
            Fp8Format::E4M3Fn,
            200,
            300,
            vec![0; 60000],
            g,
            vec![1.0; 5],
            ComputeDType::BF16,
            ComputeDType::BF16,
        )
        .unwrap_err();
        assert_eq!(err, FloatError::PartLength { part: "fp8 scales", expected: 6, got: 5 });
        let err = Fp8Scaled::from_parts(
            Fp8Format::E4M3Fn,
            2,
            2,
            vec![0; 3],
            Granularity::Tensor,
            vec![1.0],
            ComputeDType::F32,
            ComputeDType::F32,
        )
        .unwrap_err();
        assert_eq!(err, FloatError::PartLength { part: "fp8 data", expected: 4, got: 3 });
    }
}
