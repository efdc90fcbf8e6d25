//! The decoder registry: which scheme wrote each tensor of a checkpoint, and how to read it back
//! as `f32`.
//!
//! A quantized layer is stored as several container tensors (`L.weight` F8 + `L.weight_scale`
//! F32 + `L.comfy_quant` U8), but a diff compares *weights*: one logical tensor per layer. Each
//! [`SchemeDecoder`] looks at the whole tensor list of a source, claims the groups its scheme
//! wrote and turns each into one [`LogicalTensor`] that can decode itself chunk by chunk. The
//! decoders run in registry order, more specific schemes first; [`Plain`] runs last and takes
//! every tensor nobody claimed, decoding it by its own dtype (safetensors element types and GGML
//! block types through [`crate::decode`]).
//!
//! # Adding a scheme (NVFP4, MXFP8, INT4 layouts ...)
//! Write a [`SchemeDecoder`] whose `claim` recognises the scheme's parts (by names, dtypes,
//! `comfy_quant` JSON or `quantization_config`), returns a [`LogicalTensor`] with every part
//! whose bytes encode the weight in `parts` (they are what bits-per-weight counts), descriptive
//! tensors in `extras`, and a [`Dequantize`] that produces values in row-major order of the
//! logical (unpadded, unpacked) shape. Register it with [`Registry::with`], which places it
//! before the catch-all. Layouts recognised but not decodable yet are claimed by
//! [`ComfyPending`] so that their scale tensors are not reported as stray weights; their rows say
//! why they were not compared. Still pending: ComfyUI `mxfp8`, `int8_tensorwise`,
//! `convrot_w4a4`.

use std::collections::HashMap;
use std::fmt;

use qtool_formats::{ContainerFormat, TensorInfo, TensorRef, TensorSource};

use super::ct_int::CtPackQuantized;
use super::error::{DiffError, Side};
use super::fp8::ComfyFp8;
use super::gptq_awq::GptqAwq;
use super::marlin::Marlin;
use super::matching::Input;
use super::nvfp4::Nvfp4;
use crate::decode;

/// A logical tensor's values in row-major order of its logical shape, decodable by ranges so
/// memory stays O(chunk). Implementations are shared between worker threads.
pub trait Dequantize: Send + Sync + fmt::Debug {
    /// Range starts and lengths must be multiples of this many elements (a GGML block, a packed
    /// byte, a whole row for row-permuted views); only a range that ends at the tensor's end may
    /// be shorter.
    fn granule(&self) -> u64;

    /// Decodes elements `start .. start + out.len()` into `out`.
    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError>;
}

/// One weight as a diff sees it: possibly several container tensors read as one.
#[derive(Debug)]
pub struct LogicalTensor<'a> {
    /// The name of its main part (`L.weight`), as the container spells it.
    pub name: String,
    /// Position of the main part in the source's tensor list.
    pub index: usize,
    /// Logical shape, row-major (outermost first; GGUF shapes reversed).
    pub shape: Vec<u64>,
    /// What wrote it: a dtype name (`BF16`, `Q4_K`) or a scheme (`fp8_e4m3fn_scaled/comfy`).
    pub scheme: String,
    /// Container tensors whose bytes encode the values (the main part first).
    pub parts: Vec<&'a TensorInfo>,
    /// Container tensors that belong to the layer but encode no weight value (`comfy_quant`
    /// JSON, activation `input_scale`); not counted in bits per weight.
    pub extras: Vec<&'a TensorInfo>,
    /// The decoder, or why the values cannot be read.
    pub decoder: Result<Box<dyn Dequantize + 'a>, String>,
}

impl LogicalTensor<'_> {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of every part that encodes the weight (data, scales, zero points).
    pub fn stored_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.nbytes).sum()
    }

    /// `stored_bytes · 8 / numel`; `None` for an empty tensor.
    pub fn bits_per_weight(&self) -> Option<f64> {
        let n = self.numel();
        (n > 0).then(|| self.stored_bytes() as f64 * 8.0 / n as f64)
    }
}

/// The tensors of a source, as logical tensors and file-level markers.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// In the source's tensor order (by main part).
    pub tensors: Vec<LogicalTensor<'a>>,
    /// Claimed tensors that describe the file, not a layer (the legacy `scaled_fp8` marker).
    pub markers: Vec<String>,
}

/// What a decoder gets to look at, and the record of which tensors are already taken.
#[derive(Debug)]
pub struct ClaimContext<'a> {
    pub source: &'a dyn TensorSource,
    pub side: Side,
    /// `config.json` `quantization_config.quant_method`, when the checkpoint has one: names the
    /// producer where tensor names alone are ambiguous.
    pub quant_method: Option<String>,
    /// GPTQ zero points stored as true zeros (v2) instead of `zero − 1` (v1).
    pub gptq_v2: bool,
    claimed: Vec<bool>,
    by_name: HashMap<&'a str, usize>,
    pub markers: Vec<String>,
}

impl<'a> ClaimContext<'a> {
    /// An unclaimed tensor by name, with its position.
    pub fn free(&self, name: &str) -> Option<(usize, &'a TensorInfo)> {
        let i = *self.by_name.get(name)?;
        (!self.claimed[i]).then(|| (i, &self.source.tensors()[i]))
    }

    pub fn is_claimed(&self, index: usize) -> bool {
        self.claimed[index]
    }

    pub fn claim(&mut self, index: usize) {
        self.claimed[index] = true;
    }

    /// The unclaimed tensors in source order.
    pub fn unclaimed(&self) -> impl Iterator<Item = (usize, &'a TensorInfo)> + '_ {
        let source = self.source;
        source.tensors().iter().enumerate().filter(move |(i, _)| !self.claimed[*i])
    }

    pub fn tensor_ref(&self, info: &'a TensorInfo) -> TensorRef<'a> {
        TensorRef { info, data: self.source.data(info) }
    }
}

/// A scheme that can recognise its tensors in a checkpoint and decode them.
pub trait SchemeDecoder: Send + Sync + fmt::Debug {
    /// A short name for messages.
    fn name(&self) -> &'static str;

    /// Claims every group of tensors this scheme wrote that is still unclaimed and returns one
    /// logical tensor per group. Errors are for groups that are recognisably this scheme but
    /// inconsistent (a scale whose size fits no granularity).
    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError>;
}

/// An ordered list of scheme decoders ending in the catch-all [`Plain`].
#[derive(Debug)]
pub struct Registry {
    decoders: Vec<Box<dyn SchemeDecoder>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::standard()
    }
}

impl Registry {
    /// The schemes qtool decodes today: FP8 scaled (ComfyUI current and legacy layouts, per-row
    /// `weight_scale`), NVFP4 (ComfyUI, ModelOpt, compressed-tensors), compressed-tensors
    /// pack-quantized INT4/INT8, GPTQ (v1 zeros) and AWQ GEMM, vLLM legacy Marlin, the ComfyUI
    /// layouts awaiting a decoder, then every plain dtype and GGML type.
    pub fn standard() -> Self {
        Registry {
            decoders: vec![
                Box::new(ComfyFp8),
                Box::new(Nvfp4),
                Box::new(CtPackQuantized),
                Box::new(GptqAwq),
                Box::new(Marlin),
                Box::new(ComfyPending),
            ],
        }
    }

    /// Adds a decoder after the ones already registered (before the catch-all).
    pub fn with(mut self, decoder: Box<dyn SchemeDecoder>) -> Self {
        self.decoders.push(decoder);
        self
    }

    /// Splits a source into logical tensors.
    pub fn decode<'a>(&self, input: &Input<'a>, side: Side) -> Result<Decoded<'a>, DiffError> {
        let source = input.source;
        let mut cx = ClaimContext {
            source,
            side,
            quant_method: input.quant_method.clone(),
            gptq_v2: input.gptq_v2,
            claimed: vec![false; source.tensors().len()],
            by_name: source
                .tensors()
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str(), i))
                .collect(),
            markers: Vec::new(),
        };
        let mut tensors = Vec::new();
        for d in &self.decoders {
            tensors.extend(d.claim(&mut cx)?);
        }
        tensors.extend(Plain.claim(&mut cx)?);
        tensors.sort_by_key(|t| t.index);
        Ok(Decoded { tensors, markers: cx.markers })
    }
}

/// Row-major logical shape of a container shape.
pub fn logical_shape(source: &dyn TensorSource, info: &TensorInfo) -> Vec<u64> {
    match source.format() {
        ContainerFormat::Safetensors => info.shape.clone(),
        ContainerFormat::Gguf => info.shape.iter().rev().copied().collect(),
    }
}

/// The catch-all: every tensor decoded by its own dtype ([`crate::decode`]).
#[derive(Clone, Copy, Debug)]
pub struct Plain;

impl SchemeDecoder for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let free: Vec<(usize, &'a TensorInfo)> = cx.unclaimed().collect();
        let mut out = Vec::with_capacity(free.len());
        for (index, info) in free {
            cx.claim(index);
            let tensor = cx.tensor_ref(info);
            let decoder: Result<Box<dyn Dequantize + 'a>, String> = match decode::validate(&tensor)
            {
                Ok(_) => Ok(Box::new(PlainView { tensor, side: cx.side })),
                Err(e) => Err(e.to_string()),
            };
            out.push(LogicalTensor {
                name: info.name.clone(),
                index,
                shape: logical_shape(cx.source, info),
                scheme: info.dtype.name().to_string(),
                parts: vec![info],
                extras: Vec::new(),
                decoder,
            });
        }
        Ok(out)
    }
}

/// A tensor read by its own dtype; storage order is row-major logical order in both containers.
#[derive(Debug)]
struct PlainView<'a> {
    tensor: TensorRef<'a>,
    side: Side,
}

impl Dequantize for PlainView<'_> {
    fn granule(&self) -> u64 {
        decode::granule(self.tensor.info.dtype).0
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        decode::decode_into(self.tensor, start, out)
            .map_err(|source| DiffError::Decode { side: self.side, source })
    }
}

/// ComfyUI `comfy_quant` layouts qtool recognises but has no decoder for yet (`nvfp4`, `mxfp8`,
/// `int8_tensorwise`, `convrot_w4a4`, or an unknown format): the layer's parts are claimed
/// together and reported as one tensor that was not compared, with the reason.
#[derive(Clone, Copy, Debug)]
pub struct ComfyPending;

/// Suffixes of the parts a ComfyUI quantized layer may have, after `L.`.
pub(crate) const COMFY_PARTS: &[&str] = &["weight_scale", "weight_scale_2"];
pub(crate) const COMFY_EXTRAS: &[&str] = &["input_scale", "comfy_quant"];

/// The `format` of a `comfy_quant` tensor (UTF-8 JSON bytes in a U8 tensor), if readable.
pub(crate) fn comfy_format(cx: &ClaimContext<'_>, info: &TensorInfo) -> Option<String> {
    if info.nbytes > 64 * 1024 {
        return None;
    }
    let bytes = cx.source.data(info);
    let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    json.get("format")?.as_str().map(str::to_string)
}

impl SchemeDecoder for ComfyPending {
    fn name(&self) -> &'static str {
        "comfy (pending)"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let markers: Vec<(usize, &'a TensorInfo)> =
            cx.unclaimed().filter(|(_, t)| t.name.ends_with(".comfy_quant")).collect();
        let mut out = Vec::new();
        for (qi, q) in markers {
            let layer = &q.name[..q.name.len() - ".comfy_quant".len()];
            let Some((wi, w)) = cx.free(&format!("{layer}.weight")) else { continue };
            let format = comfy_format(cx, q).unwrap_or_else(|| "unreadable comfy_quant".into());
            let mut parts = vec![w];
            let mut extras = vec![q];
            cx.claim(wi);
            cx.claim(qi);
            for (suffixes, into) in [(COMFY_PARTS, &mut parts), (COMFY_EXTRAS, &mut extras)] {
                for s in suffixes {
                    if let Some((i, t)) = cx.free(&format!("{layer}.{s}")) {
                        cx.claim(i);
                        into.push(t);
                    }
                }
            }
            out.push(LogicalTensor {
                name: w.name.clone(),
                index: wi,
                shape: logical_shape(cx.source, w),
                scheme: format!("{format}/comfy"),
                parts,
                extras,
                decoder: Err(if format.starts_with("float8") {
                    // ComfyFp8 takes every float8 layer that has its scale.
                    format!("ComfyUI '{format}' layer without a '{layer}.weight_scale' tensor")
                } else {
                    format!("ComfyUI '{format}' layers have no decoder in qtool diff yet")
                }),
            });
        }
        Ok(out)
    }
}
