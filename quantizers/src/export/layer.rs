//! Quantizing one selected weight into the bytes of its output tensors, for every scheme and
//! layout. The arithmetic lives in [`crate::float`]; this file only picks the producer whose
//! arithmetic the layout's runtime expects and lays the results out as the plan promised.

use half::{bf16, f16};
use qtool_formats::codec::{Fp8Format, Overflow};
use qtool_formats::DType;

use crate::float::fp8_scaled::{self, Granularity};
use crate::float::mx::{self, Mxfp4Rule};
use crate::float::nvfp4::{self, Producer};
use crate::float::{FloatError, Matrix, Options};

use super::catalog::{FmtSpec, Layout, Scheme};
use super::plan::{comfy_quant_bytes, LayerPlan};

/// Quantizes `w` (row-major `[rows, cols]`, already decoded to f32) into the output parts of
/// [`super::plan::layer_outputs`], in the same order.
pub fn encode(
    fmt: &FmtSpec,
    layout: Layout,
    l: &LayerPlan,
    w: &[f32],
    allow_nonfinite: bool,
) -> Result<Vec<Vec<u8>>, FloatError> {
    let m = Matrix::new(w, l.rows, l.cols)?;
    let opts = Options { compute: l.compute, allow_nonfinite };
    let comfy_quant = || comfy_quant_bytes(fmt);
    Ok(match (fmt.scheme, layout) {
        (Scheme::Fp8Cast(f), Layout::ComfyLegacy) => vec![cast_fp8(&m, f, &opts, false)?],
        (Scheme::Fp8Cast(f), Layout::CompressedTensors) => {
            vec![cast_fp8(&m, f, &opts, true)?, scalar_in(l.dtype, 1.0)]
        }
        (Scheme::Fp8Cast(f), _) => {
            vec![cast_fp8(&m, f, &opts, false)?, 1.0f32.to_le_bytes().to_vec(), comfy_quant()]
        }
        (Scheme::Fp8Scaled(f), Layout::ComfyLegacy) => {
            let q = fp8_scaled::quantize_comfy(&m, f, &opts)?;
            vec![q.data, q.scales[0].to_le_bytes().to_vec()]
        }
        (Scheme::Fp8Scaled(_), Layout::CompressedTensors) => {
            let q = fp8_scaled::quantize_compressed_tensors(&m, Granularity::Tensor, &opts)?;
            vec![q.data, scalar_in(l.dtype, q.scales[0])]
        }
        (Scheme::Fp8Channel, _) => {
            let q = fp8_scaled::quantize_compressed_tensors(&m, Granularity::Channel, &opts)?;
            let scales = q.scales.iter().flat_map(|&s| scalar_in(l.dtype, s)).collect();
            vec![q.data, scales]
        }
        (Scheme::Fp8Scaled(f), _) => {
            let q = fp8_scaled::quantize_comfy(&m, f, &opts)?;
            vec![q.data, q.scales[0].to_le_bytes().to_vec(), comfy_quant()]
        }
        (Scheme::Nvfp4 | Scheme::Nvfp4Experimental, layout) => {
            let producer = match (fmt.scheme, layout) {
                (Scheme::Nvfp4Experimental, _) => Producer::ComfyExperimental,
                (_, Layout::Comfy) => Producer::Comfy,
                (_, Layout::CompressedTensors) => Producer::CompressedTensors,
                _ => Producer::ModelOpt,
            };
            let q = nvfp4::quantize(&m, producer, &opts)?;
            let mut parts = vec![q.packed, q.block_scales, q.global_scale.to_le_bytes().to_vec()];
            if layout == Layout::Comfy {
                parts.push(comfy_quant());
            }
            parts
        }
        (Scheme::Mxfp4, _) => {
            let q = mx::quantize_mxfp4(&m, Mxfp4Rule::CompressedTensors, &opts)?;
            vec![q.packed, q.scales]
        }
        (Scheme::Mxfp8, Layout::Comfy) => {
            let q = mx::quantize_mxfp8_comfy(&m, &opts)?;
            vec![q.data, q.scales, comfy_quant()]
        }
        (Scheme::Mxfp8, _) => {
            let q = mx::quantize_mxfp8_ct(&m, &opts)?;
            vec![q.data, q.scales]
        }
        (Scheme::IntWeight { .. }, _) => {
            return Err(FloatError::Unsupported {
                scheme: "integer weight-only",
                reason: "integer layers are encoded by export::int_layer".into(),
            })
        }
        (Scheme::Passthrough, _) => {
            return Err(FloatError::Unsupported {
                scheme: "disabled",
                reason: "a passthrough plan quantizes nothing".into(),
            })
        }
    })
}

/// A one-element scale in the weight's own dtype (compressed-tensors' scale dtype).
fn scalar_in(dtype: DType, v: f32) -> Vec<u8> {
    match dtype {
        DType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
        DType::BF16 => bf16::from_f32(v).to_le_bytes().to_vec(),
        _ => v.to_le_bytes().to_vec(),
    }
}

/// The plain `w.to(float8)` cast, saturating: torch's cast turns |x| > 448 into NaN for E4M3FN
/// (and into inf for E5M2), which no runtime wants in a weight, so out-of-range values clamp to
/// ±max instead. The input is the weight's exact value (F16/BF16/F32 widen exactly), so this
/// is a single rounding, as torch's cast is.
///
/// `plus_zero` reproduces compressed-tensors' `x / 1.0 + zero_point` with its zero point of +0,
/// which turns −0.0 into +0.0 (formats.md §2.1; see [`fp8_scaled`]).
fn cast_fp8(
    m: &Matrix<'_>,
    f: Fp8Format,
    opts: &Options,
    plus_zero: bool,
) -> Result<Vec<u8>, FloatError> {
    let cols = m.cols().max(1);
    let data = m.data();
    if !opts.allow_nonfinite {
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            return Err(FloatError::NonFinite {
                index,
                row: index / cols,
                col: index % cols,
                value: data[index],
            });
        }
    }
    Ok(data
        .iter()
        .map(|&x| f.encode(if plus_zero { x + 0.0 } else { x }, Overflow::Saturate))
        .collect())
}
