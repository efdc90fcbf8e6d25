//! Finding the quantized linear layers of a checkpoint: for each one, its stored parts (the bytes
//! a kernel consumes), its layout, and a CPU decoder for the reference.
//!
//! The grouping of a layer's tensors is not redone here: `qtool_quantizers::diff`'s decoder
//! registry already claims, per layout, a weight with its scales, zero points and markers and can
//! decode it back to `f32`. Verify reads the registry's verdict (the logical tensor's `scheme`
//! string, whose spelling the diff tests pin) and turns it into a [`LayerFormat`] that names the
//! kernel's parameters, plus the layer's parts by *role* (the name after the layer stem:
//! `qweight`, `weight_scale`, `B`, ...). Layouts the registry recognises but cannot decode are
//! kept as [`Unrunnable`] entries so the report can say why they were not verified.

use qtool_formats::{
    Checkpoint, DType, GgmlType, TensorDType, TensorInfo, TensorRef, TensorSource,
};
use qtool_quantizers::diff::{Dequantize, Input, LogicalTensor, Registry, Side};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Result, VerifyError};

/// FP8 scale granularity, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Granularity {
    Tensor,
    Channel,
    /// 128×128 tiles (compressed-tensors `block`).
    Block128,
}

/// The three NVFP4 layouts (formats.md §1.3.2, §2.4, §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nvfp4Layout {
    /// Even element in the high nibble, swizzled block scales, `weight_scale_2` multiplier.
    Comfy,
    /// Even element in the low nibble, linear block scales, `weight_scale_2` multiplier.
    ModelOpt,
    /// Like ModelOpt but `weight_packed` and a `weight_global_scale` divisor.
    CompressedTensors,
}

/// Which tool's int packing a layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntFamily {
    /// `qweight`/`qzeros`/`scales` (and `g_idx`); `v2` when zero points are stored as true zeros.
    Gptq {
        v2: bool,
    },
    Awq,
    /// compressed-tensors `pack-quantized`.
    CompressedTensors,
}

/// What a layer is, in the terms a kernel needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFormat {
    Fp8 {
        e5m2: bool,
        granularity: Fp8Granularity,
    },
    Nvfp4 {
        layout: Nvfp4Layout,
    },
    /// `group: None` is one group per row (per channel).
    Int {
        family: IntFamily,
        bits: u32,
        group: Option<usize>,
        act_order: bool,
    },
    Marlin {
        bits: u32,
        group: Option<usize>,
    },
    Gguf {
        ty: GgmlType,
    },
}

/// The dtype a layer's kernel takes its activations in; the CPU reference rounds the seeded
/// activations to it too, so both sides multiply the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActDType {
    F32,
    F16,
    BF16,
}

impl ActDType {
    /// Rounds `x` to this dtype (and back to `f32`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            ActDType::F32 => x,
            ActDType::F16 => half::f16::from_f32(x).to_f32(),
            ActDType::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

impl LayerFormat {
    /// Reads the registry's scheme string (`fp8_e4m3fn_scaled(per-row)/compressed-tensors`,
    /// `nvfp4/comfy`, `int4_g128/gptq(v1)`, `int4_channel/marlin` ...) or, for a tensor the
    /// catch-all decoder took, its dtype (a GGML block type, or a bare F8 weight).
    pub fn parse(scheme: &str, main: &TensorInfo) -> Option<LayerFormat> {
        if let Some(rest) = scheme
            .strip_prefix("fp8_e4m3fn_scaled")
            .or_else(|| scheme.strip_prefix("fp8_e5m2_scaled"))
        {
            let granularity = if rest.starts_with("(per-row)") {
                Fp8Granularity::Channel
            } else if rest.starts_with("(block128)") {
                Fp8Granularity::Block128
            } else if rest.starts_with('/') {
                Fp8Granularity::Tensor
            } else {
                return None;
            };
            return Some(LayerFormat::Fp8 { e5m2: scheme.starts_with("fp8_e5m2"), granularity });
        }
        let nvfp4 = match scheme {
            "nvfp4/comfy" => Some(Nvfp4Layout::Comfy),
            "nvfp4/modelopt" => Some(Nvfp4Layout::ModelOpt),
            "nvfp4/compressed-tensors" => Some(Nvfp4Layout::CompressedTensors),
            _ => None,
        };
        if let Some(layout) = nvfp4 {
            return Some(LayerFormat::Nvfp4 { layout });
        }
        if let Some(rest) = scheme.strip_prefix("int") {
            let (spec, family) = rest.split_once('/')?;
            let (bits, grouping) = spec.split_once('_')?;
            let bits: u32 = bits.parse().ok()?;
            let (group, act_order) = match grouping {
                "channel" => (None, false),
                "actorder" => (None, true),
                g => (Some(g.strip_prefix('g')?.parse().ok()?), false),
            };
            let family = match family {
                "marlin" => return Some(LayerFormat::Marlin { bits, group }),
                "gptq(v1)" => IntFamily::Gptq { v2: false },
                "gptq(v2)" => IntFamily::Gptq { v2: true },
                "awq" => IntFamily::Awq,
                "compressed-tensors" => IntFamily::CompressedTensors,
                _ => return None,
            };
            return Some(LayerFormat::Int { family, bits, group, act_order });
        }
        // The catch-all decoder's tensors: the scheme is the dtype's name.
        if main.shape.len() != 2 || scheme != main.dtype.name() {
            return None;
        }
        match main.dtype {
            TensorDType::Ggml(ty)
                if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) =>
            {
                Some(LayerFormat::Gguf { ty })
            }
            TensorDType::St(d @ (DType::F8E4M3 | DType::F8E5M2))
                if main.name.ends_with(".weight") =>
            {
                Some(LayerFormat::Fp8 {
                    e5m2: d == DType::F8E5M2,
                    granularity: Fp8Granularity::Tensor,
                })
            }
            _ => None,
        }
    }

    /// What the layer's kernel multiplies activations in.
    pub fn activation(&self) -> ActDType {
        match self {
            LayerFormat::Fp8 { .. } | LayerFormat::Nvfp4 { .. } => ActDType::BF16,
            LayerFormat::Int { .. } | LayerFormat::Marlin { .. } => ActDType::F16,
            LayerFormat::Gguf { .. } => ActDType::F32,
        }
    }
}

/// One stored tensor of a layer.
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    /// The name after the layer stem (`weight`, `weight_scale`, `qzeros`, `B` ...).
    pub role: &'a str,
    pub tensor: TensorRef<'a>,
}

/// A quantized linear layer, ready to be run and referenced.
#[derive(Debug)]
pub struct Layer<'a> {
    /// The weight's name (`model.layers.0.mlp.up_proj.weight`, `blk.0.ffn_up.weight`).
    pub name: String,
    /// The registry's scheme string, shown in reports.
    pub scheme: String,
    pub format: LayerFormat,
    /// Output features (rows of `W`).
    pub n: usize,
    /// Input features.
    pub k: usize,
    pub parts: Vec<Part<'a>>,
    decoder: Box<dyn Dequantize + 'a>,
}

/// A layer that looks quantized but cannot be verified, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unrunnable {
    pub name: String,
    pub scheme: String,
    pub reason: String,
}

/// Everything discovery found.
#[derive(Debug)]
pub struct Discovered<'a> {
    pub layers: Vec<Layer<'a>>,
    pub unrunnable: Vec<Unrunnable>,
    /// Tensors in the checkpoint, for messages.
    pub tensors: usize,
}

/// Elements per parallel decode task (rounded to the decoder's granule).
const DECODE_CHUNK: u64 = 1 << 18;

impl<'a> Layer<'a> {
    /// The bytes of the part with this role.
    pub fn part(&self, role: &str) -> Option<TensorRef<'a>> {
        self.parts.iter().find(|p| p.role == role).map(|p| p.tensor)
    }

    /// Like [`Layer::part`], but a missing part is an error naming the layer.
    pub fn require(&self, role: &str) -> Result<TensorRef<'a>> {
        self.part(role).ok_or_else(|| VerifyError::Layer {
            layer: self.name.clone(),
            msg: format!("has no '{role}' part (parts: {})", self.roles().join(", ")),
        })
    }

    pub fn roles(&self) -> Vec<&str> {
        self.parts.iter().map(|p| p.role).collect()
    }

    /// `W[n, k]` row-major, decoded on the CPU by the scheme that wrote it.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        decode_whole(self.decoder.as_ref(), self.n as u64 * self.k as u64, &self.name)
    }
}

/// All `total` values of a decoder, decoded in parallel chunks (each chunk's values do not
/// depend on the chunking).
pub fn decode_whole(decoder: &dyn Dequantize, total: u64, name: &str) -> Result<Vec<f32>> {
    let granule = decoder.granule().max(1);
    let chunk = DECODE_CHUNK.div_ceil(granule) * granule;
    let mut out = vec![0f32; total as usize];
    out.par_chunks_mut(chunk as usize).enumerate().try_for_each(|(i, c)| {
        decoder.decode(i as u64 * chunk, c).map_err(|e| VerifyError::Layer {
            layer: name.to_string(),
            msg: format!("CPU dequantization failed: {e}"),
        })
    })?;
    Ok(out)
}

/// The stem of a layer: its weight name without `.weight` / `.weight_packed` / `.qweight` /
/// `.B` (GGUF names keep their `.weight` since every part is the one tensor).
fn stem(name: &str) -> &str {
    [".weight", ".qweight", ".weight_packed", ".B"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The registry's decoders for a checkpoint (GPTQ v1/v2 and the producer from `config.json`).
pub fn input(checkpoint: &Checkpoint) -> Input<'_> {
    Input::from_checkpoint(checkpoint)
}

/// Every quantized linear layer of `source`, in checkpoint order. `keep` filters by weight name.
pub fn discover<'a>(input: &Input<'a>, keep: &dyn Fn(&str) -> bool) -> Result<Discovered<'a>> {
    let source: &'a dyn TensorSource = input.source;
    let decoded = Registry::standard().decode(input, Side::Cand)?;
    let mut layers = Vec::new();
    let mut unrunnable = Vec::new();
    for t in decoded.tensors {
        let LogicalTensor { name, shape, scheme, parts, extras, decoder, .. } = t;
        if !keep(&name) {
            continue;
        }
        let Some(main) = parts.first().copied() else { continue };
        let format = LayerFormat::parse(&scheme, main);
        // A dtype name the catch-all took that is not quantized (BF16 norms, F32 biases ...).
        let plain_unquantized = format.is_none() && scheme == main.dtype.name();
        if plain_unquantized {
            continue;
        }
        let why_not =
            |reason: String| Unrunnable { name: name.clone(), scheme: scheme.clone(), reason };
        let Some(format) = format else {
            let reason = match &decoder {
                Err(e) => e.clone(),
                Ok(_) => format!("layout '{scheme}' has no kernel in qtool"),
            };
            unrunnable.push(why_not(reason));
            continue;
        };
        let decoder = match decoder {
            Ok(d) => d,
            Err(e) => {
                unrunnable.push(why_not(e));
                continue;
            }
        };
        let (n, k) = match shape.as_slice() {
            [n, k] if *n > 0 && *k > 0 => (*n as usize, *k as usize),
            _ => {
                unrunnable.push(why_not(format!("shape {shape:?} is not a 2-D linear weight")));
                continue;
            }
        };
        let st = stem(&main.name);
        let role_of = |info: &'a TensorInfo| -> &'a str {
            match info.name.strip_prefix(st).and_then(|r| r.strip_prefix('.')) {
                Some(r) if !r.is_empty() => r,
                _ => "weight",
            }
        };
        let parts = parts
            .iter()
            .chain(extras.iter())
            .map(|&info| Part {
                role: role_of(info),
                tensor: TensorRef { info, data: source.data(info) },
            })
            .collect();
        layers.push(Layer { name, scheme, format, n, k, parts, decoder });
    }
    Ok(Discovered { layers, unrunnable, tensors: source.tensors().len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dtype: TensorDType, shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            file: 0,
            offset: 0,
            nbytes: 0,
        }
    }

    #[test]
    fn scheme_strings_of_the_registry() {
        let w = info("l.weight", TensorDType::St(DType::U8), &[64, 32]);
        let cases = [
            (
                "fp8_e4m3fn_scaled/comfy",
                Some(LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Tensor }),
            ),
            (
                "fp8_e5m2_scaled/legacy",
                Some(LayerFormat::Fp8 { e5m2: true, granularity: Fp8Granularity::Tensor }),
            ),
            (
                "fp8_e4m3fn_scaled(per-row)/compressed-tensors",
                Some(LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Channel }),
            ),
            (
                "fp8_e4m3fn_scaled(block128)/compressed-tensors",
                Some(LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Block128 }),
            ),
            ("nvfp4/comfy", Some(LayerFormat::Nvfp4 { layout: Nvfp4Layout::Comfy })),
            (
                "nvfp4/compressed-tensors",
                Some(LayerFormat::Nvfp4 { layout: Nvfp4Layout::CompressedTensors }),
            ),
            (
                "int4_g128/gptq(v1)",
                Some(LayerFormat::Int {
                    family: IntFamily::Gptq { v2: false },
                    bits: 4,
                    group: Some(128),
                    act_order: false,
                }),
            ),
            (
                "int4_actorder/gptq(v2)",
                Some(LayerFormat::Int {
                    family: IntFamily::Gptq { v2: true },
                    bits: 4,
                    group: None,
                    act_order: true,
                }),
            ),
            (
                "int8_channel/compressed-tensors",
                Some(LayerFormat::Int {
                    family: IntFamily::CompressedTensors,
                    bits: 8,
                    group: None,
                    act_order: false,
                }),
            ),
            ("int4_g64/marlin", Some(LayerFormat::Marlin { bits: 4, group: Some(64) })),
            ("int4_gx/marlin", None),
            ("mxfp8/comfy", None),
            ("fp8_e4m3fn_scaledX", None),
        ];
        for (scheme, want) in cases {
            assert_eq!(LayerFormat::parse(scheme, &w), want, "{scheme}");
        }
    }

    #[test]
    fn dtype_named_tensors() {
        let q4k = info("blk.0.ffn_up.weight", TensorDType::Ggml(GgmlType::Q4_K), &[256, 64]);
        assert_eq!(
            LayerFormat::parse("Q4_K", &q4k),
            Some(LayerFormat::Gguf { ty: GgmlType::Q4_K })
        );
        let f16 = info("blk.0.ffn_up.weight", TensorDType::Ggml(GgmlType::F16), &[256, 64]);
        assert_eq!(LayerFormat::parse("F16", &f16), None);
        let norm = info("blk.0.attn_norm.weight", TensorDType::Ggml(GgmlType::Q8_0), &[256]);
        assert_eq!(LayerFormat::parse("Q8_0", &norm), None);
        let f8 = info("l.weight", TensorDType::St(DType::F8E5M2), &[8, 8]);
        assert_eq!(
            LayerFormat::parse("F8_E5M2", &f8),
            Some(LayerFormat::Fp8 { e5m2: true, granularity: Fp8Granularity::Tensor })
        );
        let bf16 = info("l.weight", TensorDType::St(DType::BF16), &[8, 8]);
        assert_eq!(LayerFormat::parse("BF16", &bf16), None);
    }

    #[test]
    fn stems_and_activation_dtypes() {
        assert_eq!(stem("a.b.weight"), "a.b");
        assert_eq!(stem("a.qweight"), "a");
        assert_eq!(stem("a.weight_packed"), "a");
        assert_eq!(stem("a.B"), "a");
        assert_eq!(LayerFormat::Marlin { bits: 4, group: None }.activation(), ActDType::F16);
        assert_eq!(LayerFormat::Gguf { ty: GgmlType::Q8_0 }.activation(), ActDType::F32);
        assert_eq!(ActDType::BF16.round(1.0 + 1.0 / 512.0), 1.0);
    }
}
