//! ComfyUI FP8 scaled layers, read back as `W ≈ fp8 · scale` (formats.md §1.1, §1.3.1).
//!
//! Two layouts carry the same numbers:
//! - **current** (comfy-kitchen era and mixed-precision v1): `L.weight` F8_E4M3/F8_E5M2,
//!   `L.weight_scale` F32 scalar, optionally `L.comfy_quant` (U8 JSON `{"format":
//!   "float8_e4m3fn"}`) and `L.input_scale`;
//! - **legacy** `scaled_fp8`: `L.weight` F8, `L.scale_weight` F32 scalar, optionally
//!   `L.scale_input`, plus a file-level marker tensor `scaled_fp8` (or `<prefix>.scaled_fp8`).
//!
//! Rows report the scheme as `fp8_e4m3fn_scaled/comfy` (with a `comfy_quant` marker),
//! `/legacy` (`scale_weight`) or `/weight_scale` (a bare `weight_scale`, as ComfyUI's v1
//! metadata form and compressed-tensors write it). Both scales multiply. A scale with one
//! element per output row (`[N]` or `[N, 1]`, as
//! compressed-tensors' `channel` strategy writes next to an F8 weight) is accepted too, and so is
//! a 2-D scale of shape `[cdiv(N, 128), cdiv(K, 128)]`: compressed-tensors' `block` strategy with
//! the 128×128 tiles every FP8 block checkpoint uses (DeepSeek-V3, `FP8_BLOCK`), reported as
//! `(block128)`. Other block sizes are reported as not decodable.
//!
//! # Why the product is taken in f32
//! ComfyUI dequantizes as `q.to(dtype) * scale` in the layer's compute dtype (bf16 usually),
//! and that dtype is not written in the file. The diff measures what the checkpoint *stores*,
//! so it uses `f32(q) · f32(scale)` rounded once to f32 — the value every runtime starts from
//! before its own compute-dtype rounding. The cross-check computes the same product in numpy.

use qtool_formats::codec;
use qtool_formats::{DType, TensorDType, TensorInfo, TensorRef};

use super::error::{DiffError, Side};
use super::registry::{
    comfy_format, logical_shape, ClaimContext, Dequantize, LogicalTensor, SchemeDecoder,
};
use crate::decode;

/// The ComfyUI FP8 scaled decoder (both layouts).
#[derive(Clone, Copy, Debug)]
pub struct ComfyFp8;

/// Largest element count a marker may have (ComfyUI writes 0 or 2 elements).
const MARKER_MAX_ELEMS: u64 = 2;

fn is_fp8(info: &TensorInfo) -> Option<DType> {
    match info.dtype {
        TensorDType::St(d @ (DType::F8E4M3 | DType::F8E5M2)) => Some(d),
        _ => None,
    }
}

fn is_marker(info: &TensorInfo) -> bool {
    (info.name == "scaled_fp8" || info.name.ends_with(".scaled_fp8"))
        && info.numel() <= MARKER_MAX_ELEMS
}

impl SchemeDecoder for ComfyFp8 {
    fn name(&self) -> &'static str {
        "comfy fp8 scaled"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let markers: Vec<(usize, &'a TensorInfo)> =
            cx.unclaimed().filter(|(_, t)| is_marker(t)).collect();
        for (i, t) in markers {
            cx.claim(i);
            cx.markers.push(t.name.clone());
        }
        let weights: Vec<(usize, &'a TensorInfo, DType)> = cx
            .unclaimed()
            .filter(|(_, t)| t.name.ends_with(".weight"))
            .filter_map(|(i, t)| is_fp8(t).map(|d| (i, t, d)))
            .collect();
        let mut out = Vec::new();
        for (wi, w, dtype) in weights {
            let layer = &w.name[..w.name.len() - ".weight".len()];
            // A comfy_quant naming another format (mxfp8 also stores F8 data next to a
            // `weight_scale`) is not ours.
            if let Some((_, q)) = cx.free(&format!("{layer}.comfy_quant")) {
                match comfy_format(cx, q).as_deref() {
                    Some("float8_e4m3fn" | "float8_e5m2") => {}
                    _ => continue,
                }
            }
            let (scale, legacy) = match cx.free(&format!("{layer}.weight_scale")) {
                Some(s) => (s, false),
                None => match cx.free(&format!("{layer}.scale_weight")) {
                    Some(s) => (s, true),
                    None => continue,
                },
            };
            cx.claim(wi);
            cx.claim(scale.0);
            let mut extras = Vec::new();
            for s in ["comfy_quant", "input_scale", "scale_input"] {
                if let Some((i, t)) = cx.free(&format!("{layer}.{s}")) {
                    cx.claim(i);
                    extras.push(t);
                }
            }
            let shape = logical_shape(cx.source, w);
            let view = Fp8View::new(cx, w, scale.1, dtype, &shape);
            let base = match dtype {
                DType::F8E5M2 => "fp8_e5m2_scaled",
                _ => "fp8_e4m3fn_scaled",
            };
            let granularity = match &view {
                Ok(Fp8View { scale: Scale::PerRow(_), .. }) => "(per-row)",
                Ok(Fp8View { scale: Scale::Block(_), .. }) => "(block128)",
                _ => "",
            };
            // The layout, as far as the file says: a comfy_quant marker names ComfyUI; the
            // `scale_weight` spelling is the legacy scaled_fp8 layout; a bare `weight_scale` is
            // shared by ComfyUI's v1 metadata form and compressed-tensors, told apart by
            // `quantization_config`, else named as is.
            let has_comfy_quant = extras.iter().any(|t| t.name.ends_with(".comfy_quant"));
            let layout = match (legacy, has_comfy_quant, cx.quant_method.as_deref()) {
                (true, ..) => "legacy",
                (false, true, _) => "comfy",
                (false, false, Some("compressed-tensors")) => "compressed-tensors",
                (false, false, _) => "weight_scale",
            };
            let scheme = format!("{base}{granularity}/{layout}");
            out.push(LogicalTensor {
                name: w.name.clone(),
                index: wi,
                shape,
                scheme,
                parts: vec![w, scale.1],
                extras,
                decoder: view.map(|v| Box::new(v) as Box<dyn Dequantize + 'a>),
            });
        }
        Ok(out)
    }
}

#[derive(Debug)]
enum Scale<'a> {
    Tensor(f32),
    PerRow(TensorRef<'a>),
    /// `[cdiv(N, FP8_BLOCK), cdiv(K, FP8_BLOCK)]`, one scale per 128×128 tile.
    Block(TensorRef<'a>),
}

/// The tile edge of block-scaled FP8 (compressed-tensors `block` strategy as published).
pub const FP8_BLOCK: u64 = 128;

/// `fp8 · scale`, per tensor or per row.
#[derive(Debug)]
struct Fp8View<'a> {
    weight: TensorRef<'a>,
    dtype: DType,
    side: Side,
    /// The per-tensor scale, or the per-row scale tensor (read a chunk's rows at a time, so a
    /// plan over the whole model holds no scale vectors).
    scale: Scale<'a>,
    /// Row length (last dimension) for per-row scales.
    cols: u64,
}

impl<'a> Fp8View<'a> {
    fn new(
        cx: &ClaimContext<'a>,
        weight: &'a TensorInfo,
        scale: &'a TensorInfo,
        dtype: DType,
        shape: &[u64],
    ) -> Result<Self, String> {
        let weight = cx.tensor_ref(weight);
        decode::validate(&weight).map_err(|e| e.to_string())?;
        let s = cx.tensor_ref(scale);
        match s.info.dtype {
            TensorDType::St(DType::F32 | DType::BF16 | DType::F16 | DType::F64) => {}
            other => {
                return Err(format!(
                    "scale '{}' has dtype {other}, expected a float type",
                    s.info.name
                ))
            }
        };
        let rows = if shape.len() >= 2 { shape[..shape.len() - 1].iter().product() } else { 1 };
        let cols = shape.last().copied().unwrap_or(1);
        let n = s.info.numel();
        let block = [rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
        #[derive(PartialEq)]
        enum G {
            Tensor,
            Row,
            Block,
        }
        let g = match n {
            1 => G::Tensor,
            // `[N]` / `[N, 1]` read per row even where a block grid would have that shape too.
            _ if shape.len() == 2 && s.info.shape == block && s.info.shape[0] != rows => G::Block,
            n if shape.len() == 2 && n == rows => G::Row,
            _ if shape.len() == 2 && s.info.shape == block => G::Block,
            _ => {
                return Err(format!(
                    "scale '{}' has shape {:?}: a weight of shape {shape:?} needs 1 element (per tensor), {rows} (per row) or {block:?} (128×128 blocks)",
                    s.info.name, s.info.shape
                ))
            }
        };
        // `validate` tied the element count to the bytes actually mapped.
        decode::validate(&s).map_err(|e| e.to_string())?;
        let scale = match g {
            G::Row => Scale::PerRow(s),
            G::Block => Scale::Block(s),
            // One element, whose byte count `validate` checked.
            G::Tensor => Scale::Tensor(decode::decode_all(s).map_err(|e| e.to_string())?[0]),
        };
        Ok(Fp8View { weight, dtype, side: cx.side, scale, cols })
    }
}

impl Dequantize for Fp8View<'_> {
    fn granule(&self) -> u64 {
        1
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        let (b0, b1) = (start as usize, start as usize + out.len());
        let bytes = self.weight.data.get(b0..b1).ok_or_else(|| DiffError::Layout {
            side: self.side,
            tensor: self.weight.info.name.clone(),
            msg: format!("elements {b0}..{b1} lie outside the tensor"),
        })?;
        codec::decode_f32(self.dtype, bytes, out).map_err(|e| DiffError::Layout {
            side: self.side,
            tensor: self.weight.info.name.clone(),
            msg: e.to_string(),
        })?;
        match self.scale {
            Scale::Tensor(s) => {
                for v in out.iter_mut() {
                    *v *= s;
                }
            }
            Scale::PerRow(t) => {
                let (r0, r1) = (start / self.cols, (start + out.len() as u64).div_ceil(self.cols));
                let mut rows = vec![0f32; (r1 - r0) as usize];
                decode::decode_into(t, r0, &mut rows)
                    .map_err(|source| DiffError::Decode { side: self.side, source })?;
                for (k, v) in out.iter_mut().enumerate() {
                    *v *= rows[((start + k as u64) / self.cols - r0) as usize];
                }
            }
            Scale::Block(t) => {
                // The tile rows this range touches, `[tr1 − tr0, cdiv(K, 128)]`.
                let per_row = self.cols.div_ceil(FP8_BLOCK);
                let end = start + out.len() as u64;
                let (tr0, tr1) =
                    (start / self.cols / FP8_BLOCK, end.div_ceil(self.cols).div_ceil(FP8_BLOCK));
                let mut tiles = vec![0f32; ((tr1 - tr0) * per_row) as usize];
                decode::decode_into(t, tr0 * per_row, &mut tiles)
                    .map_err(|source| DiffError::Decode { side: self.side, source })?;
                for (k, v) in out.iter_mut().enumerate() {
                    let idx = start + k as u64;
                    let (r, c) = (idx / self.cols, idx % self.cols);
                    *v *= tiles[((r / FP8_BLOCK - tr0) * per_row + c / FP8_BLOCK) as usize];
                }
            }
        }
        Ok(())
    }
}
