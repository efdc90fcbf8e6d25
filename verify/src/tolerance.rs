//! Which kernel runs each layout, and the named tolerance its result must meet against the FP32
//! GEMM on the CPU-dequantized weight.
//!
//! Both sides multiply the *same* activations (rounded to the kernel's input dtype first, see
//! [`crate::discover::ActDType`]) and the same stored weight, so what remains is the kernel's own
//! arithmetic: the dtype it dequantizes weights into, its accumulation order, and the dtype of
//! its output. Errors are per output, over that output's natural magnitude
//! ([`crate::metrics::kernel_error`]): rounding to f16 (2⁻¹¹ relative) shows up as max_rel of a
//! few 10⁻³, the bf16 paths (2⁻⁹, used by the large-batch dequantize + cuBLAS routes) as ~10⁻²,
//! and FP8 (whose E4M3 activations the reference reproduces) as ~10⁻². The limits sit a few times above what the arithmetic
//! explains (measured on an H200: marlin/int4 ≤ 2.9·10⁻³, NVFP4 and GGUF ≤ 3.5·10⁻²) and far below what a layout bug produces (a wrong scale, nibble or
//! group gives errors of order 1).

use serde::Serialize;

use crate::discover::{Fp8Granularity, LayerFormat};

/// A named pair of limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub name: &'static str,
    pub max_rel: f64,
    pub mean_rel: f64,
}

impl Tolerance {
    pub fn admits(&self, max_rel: f64, mean_rel: f64) -> bool {
        max_rel <= self.max_rel && mean_rel <= self.mean_rel
    }
}

/// Marlin: f16 activations, weights dequantized to f16 in registers, f32 accumulation, f16 out.
pub const MARLIN_W4A16: Tolerance =
    Tolerance { name: "marlin_w4a16", max_rel: 1e-2, mean_rel: 2e-3 };
/// GPTQ/AWQ/compressed-tensors int4: the same arithmetic as Marlin over the checkpoint's own
/// packing (f16 scales, f16 weights, f32 accumulation).
pub const INT4_DEQUANT: Tolerance =
    Tolerance { name: "int4_dequant_gemm", max_rel: 1e-2, mean_rel: 2e-3 };
/// cuBLASLt FP8: the kernel quantizes the activations to E4M3 first; the reference multiplies
/// the same E4M3 activations ([`crate::act_quant`]), so what remains is Hopper's FP8
/// accumulation (fast-accumulate mode) and the output rounding.
pub const FP8_CUBLASLT: Tolerance =
    Tolerance { name: "fp8_cublaslt", max_rel: 2e-2, mean_rel: 3e-3 };
/// Block-scaled FP8 in qtool's own kernel: the same activation quantization per 1×128 group,
/// applied by the reference too.
pub const FP8_BLOCK: Tolerance = Tolerance { name: "fp8_block128", max_rel: 2e-2, mean_rel: 3e-3 };
/// NVFP4 (on Hopper an emulation that dequantizes E2M1 · E4M3 · global in the kernel): bf16
/// activations and bf16 dequantized weights, f32 accumulation.
pub const NVFP4: Tolerance = Tolerance { name: "nvfp4_gemm", max_rel: 6e-2, mean_rel: 5e-3 };
/// GGUF block types: blocks dequantized in the kernel, f32 activations; a kernel that quantizes
/// activations to 8 bits (as llama.cpp's mat-vec does) adds ≈ 0.5 % noise.
pub const GGUF: Tolerance = Tolerance { name: "gguf_gemm", max_rel: 6e-2, mean_rel: 5e-3 };

/// The kernel that runs a layer (its name in reports) and its tolerance; `None` when qtool has
/// no kernel for the layout (8-bit integer layers), with the reason.
pub fn kernel_for(format: &LayerFormat) -> Result<(String, Tolerance), String> {
    Ok(match format {
        LayerFormat::Marlin { bits: 4, .. } => ("marlin_w4a16".into(), MARLIN_W4A16),
        LayerFormat::Marlin { bits, .. } => {
            return Err(format!("no Marlin kernel for {bits}-bit weights (4-bit only)"))
        }
        LayerFormat::Int { bits: 4, .. } => ("int4_dequant_gemm".into(), INT4_DEQUANT),
        LayerFormat::Int { bits, .. } => {
            return Err(format!("no kernel for {bits}-bit integer weights (4-bit only)"))
        }
        LayerFormat::Fp8 { granularity: Fp8Granularity::Block128, .. } => {
            ("fp8_block128".into(), FP8_BLOCK)
        }
        LayerFormat::Fp8 { .. } => ("fp8_cublaslt".into(), FP8_CUBLASLT),
        LayerFormat::Nvfp4 { .. } => ("nvfp4_gemm".into(), NVFP4),
        LayerFormat::Gguf { ty } => (format!("gguf_{}", ty.name().to_ascii_lowercase()), GGUF),
    })
}

/// The REF check's limit: a candidate's output error against REF's weights may be at most this
/// many times the error qtool's own round-to-nearest quantizer makes for the same scheme on
/// REF's weights. Float formats (FP8, NVFP4, GGUF blocks) are only ever rounded, so 2× is ample.
pub const REF_RATIO: f64 = 2.0;
/// Integer layouts may hold GPTQ/AWQ output, whose error feedback trades weight-space error for
/// error on the calibration activations: measured on SmolLM2-135M (GPTQ act-order g64) up to
/// 3.4× RTN's error on the isotropic activations verify uses, in `down_proj`. The corruptions
/// this check exists for measure 5.3–15× (H200 run, docs/notes), so 4× keeps them apart.
pub const REF_RATIO_INT: f64 = 4.0;
/// ... and never less than this (lossless or near-lossless layers compare against ~0).
pub const REF_FLOOR: f64 = 2e-3;

/// The REF ratio for a layer's format.
pub fn ref_ratio(format: &LayerFormat) -> f64 {
    match format {
        LayerFormat::Int { .. } | LayerFormat::Marlin { .. } => REF_RATIO_INT,
        _ => REF_RATIO,
    }
}

/// The allowed `rel_fro` against REF given the expected one.
pub fn ref_limit(format: &LayerFormat, expected_rel: f64) -> f64 {
    (ref_ratio(format) * expected_rel).max(REF_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{IntFamily, Nvfp4Layout};
    use qtool_formats::GgmlType;

    #[test]
    fn every_layout_has_a_named_kernel_or_a_reason() {
        let gptq = IntFamily::Gptq { v2: false };
        let cases = [
            (LayerFormat::Marlin { bits: 4, group: Some(128) }, Some("marlin_w4a16")),
            (LayerFormat::Marlin { bits: 8, group: None }, None),
            (
                LayerFormat::Int { family: gptq, bits: 4, group: None, act_order: true },
                Some("int4_dequant_gemm"),
            ),
            (
                LayerFormat::Int { family: IntFamily::Awq, bits: 8, group: None, act_order: false },
                None,
            ),
            (
                LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Tensor },
                Some("fp8_cublaslt"),
            ),
            (
                LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Block128 },
                Some("fp8_block128"),
            ),
            (LayerFormat::Nvfp4 { layout: Nvfp4Layout::Comfy }, Some("nvfp4_gemm")),
            (LayerFormat::Gguf { ty: GgmlType::Q4_K }, Some("gguf_q4_k")),
        ];
        for (format, want) in cases {
            assert_eq!(
                kernel_for(&format).ok().map(|k| k.0),
                want.map(str::to_string),
                "{format:?}"
            );
        }
    }

    #[test]
    fn ref_limit_has_a_floor() {
        let fp8 = LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Tensor };
        let marlin = LayerFormat::Marlin { bits: 4, group: None };
        assert_eq!(ref_limit(&fp8, 0.1), 0.2);
        assert_eq!(ref_limit(&marlin, 0.1), 0.4);
        assert_eq!(ref_limit(&fp8, 0.0), REF_FLOOR);
    }

    #[test]
    fn tolerance_rejects_nan() {
        assert!(!MARLIN_W4A16.admits(f64::NAN, 0.0));
        assert!(MARLIN_W4A16.admits(0.0, 0.0));
    }
}
