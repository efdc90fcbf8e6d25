//! The `--fmt` names qtool's safetensors quantizer accepts, what each one writes, and which
//! checkpoint layouts can express it.
//!
//! The twelve seed names are the ones ComfyUI / WanVideoWrapper users pick from
//! (formats.md §1.1, KJ `WanVideoModelLoader` choices). A non-`_fast` name asks for
//! `full_precision_matrix_mult` (dequantize, then matmul in the compute dtype); a `_fast` name
//! asks for a low-precision matmul. That split decides what each layout can say: a layout that
//! needs activation scales for a low-precision matmul (ModelOpt, compressed-tensors NVFP4 W4A4)
//! cannot express a `_fast` FP4 name without calibration, which `qtool quantize` does not do.

use std::fmt;

use qtool_formats::codec::Fp8Format;

/// How a checkpoint names and describes its quantized tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// ComfyUI today: per-layer `comfy_quant` JSON tensors (formats.md §1.3).
    Comfy,
    /// ComfyUI's legacy scaled FP8: `scale_weight` + a `scaled_fp8` marker (formats.md §1.1).
    ComfyLegacy,
    /// `quant_method: "compressed-tensors"` in `config.json` (formats.md §2).
    CompressedTensors,
    /// NVIDIA ModelOpt export with `hf_quant_config.json` (formats.md §5.2).
    ModelOpt,
    /// AutoGPTQ / GPTQModel `qweight`/`qzeros`/`scales`/`g_idx` + `quantize_config.json` (§3.1).
    Gptq,
    /// AutoAWQ GEMM `qweight`/`qzeros`/`scales` + `quantization_config` in `config.json` (§3.2).
    Awq,
}

impl Layout {
    pub const ALL: [Layout; 6] = [
        Layout::Comfy,
        Layout::ComfyLegacy,
        Layout::CompressedTensors,
        Layout::ModelOpt,
        Layout::Gptq,
        Layout::Awq,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Layout::Comfy => "comfy",
            Layout::ComfyLegacy => "comfy-legacy",
            Layout::CompressedTensors => "compressed-tensors",
            Layout::ModelOpt => "modelopt",
            Layout::Gptq => "gptq",
            Layout::Awq => "awq",
        }
    }

    pub fn from_name(name: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether the layout's loader needs `config.json` / side files, hence a directory output.
    pub const fn needs_config(self) -> bool {
        matches!(self, Layout::CompressedTensors | Layout::ModelOpt | Layout::Gptq | Layout::Awq)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The arithmetic a `--fmt` name applies to each selected weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Copy every tensor unchanged.
    Passthrough,
    /// Saturating cast to FP8 with an implied scale of 1.0.
    Fp8Cast(Fp8Format),
    /// FP8 with a per-tensor `amax / fp8_max` scale.
    Fp8Scaled(Fp8Format),
    /// E4M3 with one `amax / 448` scale per output channel (compressed-tensors `channel`).
    Fp8Channel,
    /// NVFP4 (E2M1, 16-element E4M3 block scales, F32 tensor scale).
    Nvfp4,
    /// ComfyUI's NVFP4 with the tensor scale fixed at 1.0.
    Nvfp4Experimental,
    /// OCP MXFP4: E2M1 in 32-element blocks with an E8M0 scale, compressed-tensors' rule.
    Mxfp4,
    /// OCP MXFP8: E4M3 in 32-element blocks with an E8M0 scale (compressed-tensors' or
    /// comfy-kitchen's rule, by layout).
    Mxfp8,
    /// Group-wise round-to-nearest integer weights of `bits` bits (W4A16 / W8A16), with the
    /// scale/zero formula of the layout's own tool (see [`crate::int::rtn`]).
    IntWeight { bits: u32 },
}

impl Scheme {
    pub const fn name(self) -> &'static str {
        match self {
            Scheme::Passthrough => "none",
            Scheme::Fp8Cast(Fp8Format::E4M3Fn) => "fp8-e4m3fn-cast",
            Scheme::Fp8Cast(Fp8Format::E5M2) => "fp8-e5m2-cast",
            Scheme::Fp8Scaled(Fp8Format::E4M3Fn) => "fp8-e4m3fn-per-tensor",
            Scheme::Fp8Scaled(Fp8Format::E5M2) => "fp8-e5m2-per-tensor",
            Scheme::Fp8Channel => "fp8-e4m3fn-per-channel",
            Scheme::Nvfp4 => "nvfp4",
            Scheme::Nvfp4Experimental => "nvfp4-unit-tensor-scale",
            Scheme::Mxfp4 => "mxfp4",
            Scheme::Mxfp8 => "mxfp8",
            Scheme::IntWeight { bits: 4 } => "int4-weight-only",
            Scheme::IntWeight { .. } => "int8-weight-only",
        }
    }
}

/// One `--fmt` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FmtSpec {
    pub name: &'static str,
    pub scheme: Scheme,
    /// Non-`_fast`: the runtime should dequantize and multiply in full precision.
    pub full_precision_mm: bool,
    pub default_layout: Layout,
    /// The layouts that can express this name, default first.
    pub layouts: &'static [Layout],
    pub summary: &'static str,
}

const E4: Fp8Format = Fp8Format::E4M3Fn;
const E5: Fp8Format = Fp8Format::E5M2;
use Layout::{Awq, Comfy, ComfyLegacy, CompressedTensors, Gptq, ModelOpt};

const ALL_LAYOUTS: &[Layout] = &[Comfy, ComfyLegacy, CompressedTensors, ModelOpt];
/// compressed-tensors quantizes 8-bit floats to E4M3 only; ModelOpt per-tensor FP8 needs a
/// calibrated `input_scale`.
const FP8_E4_LAYOUTS: &[Layout] = &[Comfy, ComfyLegacy, CompressedTensors];
/// ComfyUI's legacy loader converts every scaled file to `float8_e4m3fn` layers whatever the
/// marker dtype (formats.md §1.1), so scaled E5M2 is only expressible in the current layout.
const FP8_E5_SCALED_LAYOUTS: &[Layout] = &[Comfy];
const FP8_E5_CAST_LAYOUTS: &[Layout] = &[Comfy, ComfyLegacy];
const NVFP4_WEIGHT_ONLY_LAYOUTS: &[Layout] = &[Comfy, CompressedTensors, ModelOpt];
const COMFY_ONLY: &[Layout] = &[Comfy];
/// AWQ GEMM stores 4-bit codes only (formats.md §3.2).
const INT4_LAYOUTS: &[Layout] = &[CompressedTensors, Gptq, Awq];
const INT8_LAYOUTS: &[Layout] = &[CompressedTensors, Gptq];
/// ComfyUI defines per-tensor FP8 scales only (formats.md §1.3.1); MXFP4 exists only as
/// compressed-tensors `mxfp4-pack-quantized` among the weight-only layouts (§2.5).
const CT_ONLY: &[Layout] = &[CompressedTensors];
/// compressed-tensors `mxfp8-quantized` (§2.5) and ComfyUI's `mxfp8` format (§1.3.3).
const MXFP8_LAYOUTS: &[Layout] = &[CompressedTensors, Comfy];

/// Every `--fmt` name of the safetensors quantizer, seed names first.
pub const FORMATS: &[FmtSpec] = &[
    FmtSpec {
        name: "disabled",
        scheme: Scheme::Passthrough,
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: ALL_LAYOUTS,
        summary: "copy every tensor unchanged",
    },
    FmtSpec {
        name: "fp8_e4m3fn",
        scheme: Scheme::Fp8Cast(E4),
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: FP8_E4_LAYOUTS,
        summary: "F8_E4M3 saturating cast, scale 1.0, full-precision matmul",
    },
    FmtSpec {
        name: "fp8_e4m3fn_fast",
        scheme: Scheme::Fp8Cast(E4),
        full_precision_mm: false,
        default_layout: Comfy,
        layouts: FP8_E4_LAYOUTS,
        summary: "F8_E4M3 saturating cast, scale 1.0, fp8 matmul",
    },
    FmtSpec {
        name: "fp8_e4m3fn_scaled",
        scheme: Scheme::Fp8Scaled(E4),
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: FP8_E4_LAYOUTS,
        summary: "F8_E4M3 with per-tensor amax/448 scale, full-precision matmul",
    },
    FmtSpec {
        name: "fp8_e4m3fn_scaled_fast",
        scheme: Scheme::Fp8Scaled(E4),
        full_precision_mm: false,
        default_layout: Comfy,
        layouts: FP8_E4_LAYOUTS,
        summary: "F8_E4M3 with per-tensor amax/448 scale, fp8 matmul",
    },
    FmtSpec {
        name: "fp8_e5m2",
        scheme: Scheme::Fp8Cast(E5),
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: FP8_E5_CAST_LAYOUTS,
        summary: "F8_E5M2 saturating cast, scale 1.0, full-precision matmul",
    },
    FmtSpec {
        name: "fp8_e5m2_fast",
        scheme: Scheme::Fp8Cast(E5),
        full_precision_mm: false,
        default_layout: Comfy,
        layouts: FP8_E5_CAST_LAYOUTS,
        summary: "F8_E5M2 saturating cast, scale 1.0, fp8 matmul",
    },
    FmtSpec {
        name: "fp8_e5m2_scaled",
        scheme: Scheme::Fp8Scaled(E5),
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: FP8_E5_SCALED_LAYOUTS,
        summary: "F8_E5M2 with per-tensor amax/57344 scale, full-precision matmul",
    },
    FmtSpec {
        name: "fp8_e5m2_scaled_fast",
        scheme: Scheme::Fp8Scaled(E5),
        full_precision_mm: false,
        default_layout: Comfy,
        layouts: FP8_E5_SCALED_LAYOUTS,
        summary: "F8_E5M2 with per-tensor amax/57344 scale, fp8 matmul",
    },
    FmtSpec {
        name: "fp4_experimental",
        scheme: Scheme::Nvfp4Experimental,
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: COMFY_ONLY,
        summary: "NVFP4 with tensor scale 1.0 (ComfyUI arithmetic), full-precision matmul",
    },
    FmtSpec {
        name: "fp4_scaled",
        scheme: Scheme::Nvfp4,
        full_precision_mm: true,
        default_layout: Comfy,
        layouts: NVFP4_WEIGHT_ONLY_LAYOUTS,
        summary: "NVFP4 with amax/2688 tensor scale, full-precision matmul (weight-only)",
    },
    FmtSpec {
        name: "fp4_scaled_fast",
        scheme: Scheme::Nvfp4,
        full_precision_mm: false,
        default_layout: Comfy,
        layouts: COMFY_ONLY,
        summary: "NVFP4 with amax/2688 tensor scale, fp4 matmul",
    },
    FmtSpec {
        name: "fp8_channel",
        scheme: Scheme::Fp8Channel,
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: CT_ONLY,
        summary: "F8_E4M3 with per-output-channel amax/448 scales, weight-only (W8A16)",
    },
    FmtSpec {
        name: "fp8_dynamic",
        scheme: Scheme::Fp8Channel,
        full_precision_mm: false,
        default_layout: CompressedTensors,
        layouts: CT_ONLY,
        summary: "F8_E4M3 per-channel weights + dynamic per-token FP8 activations (FP8_DYNAMIC)",
    },
    FmtSpec {
        name: "nvfp4",
        scheme: Scheme::Nvfp4,
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: &[CompressedTensors, Comfy, ModelOpt],
        summary: "NVFP4 weight-only (W4A16), compressed-tensors by default",
    },
    FmtSpec {
        name: "mxfp4",
        scheme: Scheme::Mxfp4,
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: CT_ONLY,
        summary: "MXFP4 weight-only: E2M1, 32-element E8M0 block scales (mxfp4-pack-quantized)",
    },
    FmtSpec {
        name: "mxfp8",
        scheme: Scheme::Mxfp8,
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: MXFP8_LAYOUTS,
        summary:
            "MXFP8 weight-only: E4M3, 32-element E8M0 block scales (mxfp8-quantized or comfy mxfp8)",
    },
    FmtSpec {
        name: "w4a16",
        scheme: Scheme::IntWeight { bits: 4 },
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: INT4_LAYOUTS,
        summary: "INT4 group-wise RTN weight-only (pack-quantized, gptq or awq)",
    },
    FmtSpec {
        name: "w8a16",
        scheme: Scheme::IntWeight { bits: 8 },
        full_precision_mm: true,
        default_layout: CompressedTensors,
        layouts: INT8_LAYOUTS,
        summary: "INT8 group-wise RTN weight-only (pack-quantized or gptq)",
    },
];

/// The spec of a `--fmt` name (exact, lower case).
pub fn lookup(name: &str) -> Option<&'static FmtSpec> {
    FORMATS.iter().find(|f| f.name == name)
}

impl FmtSpec {
    pub fn supports(&self, layout: Layout) -> bool {
        self.layouts.contains(&layout)
    }

    /// The layouts this name can be written in, as `a, b, c`.
    pub fn layout_list(&self) -> String {
        self.layouts.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
    }

    /// Why `layout` cannot express this name, for the error message.
    pub fn mismatch_reason(&self, layout: Layout) -> &'static str {
        match (self.scheme, layout) {
            (Scheme::IntWeight { .. }, Awq) => "AWQ GEMM stores 4-bit weights only",
            (Scheme::IntWeight { .. }, _) => {
                "integer weight-only formats are written as compressed-tensors, gptq or awq"
            }
            (_, Gptq | Awq) => "the gptq and awq layouts hold integer weights only (w4a16, w8a16)",
            (Scheme::Mxfp4, _) => {
                "MXFP4 weight-only is a compressed-tensors format (mxfp4-pack-quantized); ComfyUI has no mxfp4 layer format and ModelOpt's MXFP4 needs FP8 activations"
            }
            (Scheme::Mxfp8, _) => {
                "MXFP8 is written as compressed-tensors mxfp8-quantized or ComfyUI mxfp8 only"
            }
            (Scheme::Nvfp4 | Scheme::Nvfp4Experimental, ComfyLegacy) => {
                "the legacy ComfyUI layout holds only scaled FP8"
            }
            (Scheme::Nvfp4Experimental, _) => "a unit tensor scale is a ComfyUI-only convention",
            (Scheme::Nvfp4, CompressedTensors | ModelOpt) => {
                "an fp4 matmul there needs a calibrated activation scale, which quantize does not compute"
            }
            (Scheme::Fp8Scaled(E5), ComfyLegacy) => {
                "ComfyUI converts legacy scaled files to float8_e4m3fn layers whatever the marker dtype"
            }
            (Scheme::Fp8Cast(E5) | Scheme::Fp8Scaled(E5), CompressedTensors) => {
                "compressed-tensors quantizes 8-bit floats to E4M3 only"
            }
            (Scheme::Fp8Channel, _) => "per-channel FP8 scales are a compressed-tensors layout only",
            (Scheme::Fp8Cast(_) | Scheme::Fp8Scaled(_), ModelOpt) => {
                "ModelOpt FP8 needs a calibrated input_scale, which quantize does not compute"
            }
            _ => "not supported",
        }
    }
}

/// The JSON of a ComfyUI `comfy_quant` tensor, byte for byte what Python's
/// `json.dumps(conf)` writes (default separators `", "` and `": "`, keys in insertion order),
/// since ComfyUI stores exactly those bytes (formats.md §1.1, §1.3).
pub fn comfy_quant_json(format: &str, full_precision_mm: bool) -> String {
    if full_precision_mm {
        format!("{{\"format\": \"{format}\", \"full_precision_matrix_mult\": true}}")
    } else {
        format!("{{\"format\": \"{format}\"}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_seed_names_and_unique_names() {
        assert_eq!(FORMATS.iter().filter(|f| f.default_layout == Comfy).count(), 12);
        let mut names: Vec<_> = FORMATS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FORMATS.len());
        for f in FORMATS {
            assert!(f.supports(f.default_layout), "{}", f.name);
        }
    }

    #[test]
    fn comfy_quant_json_matches_python_json_dumps() {
        assert_eq!(comfy_quant_json("float8_e4m3fn", false), r#"{"format": "float8_e4m3fn"}"#);
        assert_eq!(
            comfy_quant_json("nvfp4", true),
            r#"{"format": "nvfp4", "full_precision_matrix_mult": true}"#
        );
    }
}
