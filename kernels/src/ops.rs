//! The types of qtool's host-level GPU operations (the contract with `verify`).
//!
//! Every operation computes one linear layer, `out[m, n] = x[m, k] · W[n, k]ᵀ`, with `x`
//! row-major `[m, k]` and `W` the layer's weight `[n = out_features, k = in_features]` in the
//! bytes the checkpoint stores. The result comes back as f32, row-major `[m, n]`, together with
//! the median kernel time so `verify` can report speed next to correctness.

use serde::Serialize;

pub use qtool_formats::GgmlType;
pub use qtool_quantizers::float::e2m1::NibbleOrder;

/// The result of one GPU GEMM.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GemmRun {
    /// `[m, n]` row-major.
    pub out: Vec<f32>,
    /// Median time of one run in µs over the timed repetitions (0.0 when `reps == 0`). Covers
    /// everything the operation does on the GPU per call (activation quantization, dequant pass,
    /// GEMM), not the host↔device copies.
    pub micros: f64,
    /// Which implementation ran, e.g. `"cublaslt fp8 e4m3 per-tensor"` or
    /// `"qtool gemv q4_k (fused dequant)"`; honest about emulations.
    pub backend: String,
}

/// FP8 element format of stored weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Fp8Kind {
    /// `float8_e4m3fn` (max 448).
    E4M3,
    /// `float8_e5m2` (max 57344).
    E5M2,
}

/// How FP8 weights are scaled back: `w = fp8 · scale`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Fp8Scale {
    /// One multiplier for the whole weight.
    PerTensor(f32),
    /// One multiplier per output channel (`n` values).
    PerChannel(Vec<f32>),
    /// One multiplier per 128×128 weight block, row-major `[ceil(n/128), ceil(k/128)]`
    /// (DeepSeek-style `weight_scale_inv`). Activations are quantized per 1×128 group.
    Block128(Vec<f32>),
}

/// Layout of NVFP4 block scales (one E4M3 byte per 16 elements along k).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ScaleLayout {
    /// Row-major `[n, k/16]` (ModelOpt, compressed-tensors); requires `k % 16 == 0`.
    Linear,
    /// cuBLAS/ComfyUI 128×4 tiles over `[roundup(n16,128), roundup(k16/16,4)]`, where the
    /// weight itself is stored zero-padded to `[n16, k16/2]` with `n16 = roundup(n, 16)`,
    /// `k16 = roundup(k, 16)` (quantizers/src/float/swizzle.rs).
    Swizzled,
}

/// An int4 weight as one of the checkpoint formats stores it. Scales are given as f32 (decode
/// the checkpoint's f16/bf16 first: exact). `group` is the group size along k (k itself for
/// per-channel). Only 4-bit packing is supported.
#[derive(Clone, Copy, Debug)]
pub enum Int4Weights<'a> {
    /// GPTQ (AutoGPTQ / GPTQModel): `qweight [k/8, n]` packed along k, `qzeros [G, n/8]`
    /// packed along n (`v2 == false`: stores zero − 1), `scales [G, n]`, optional `g_idx [k]`
    /// (act-order); without it, group = k / group.
    Gptq {
        qweight: &'a [i32],
        qzeros: &'a [i32],
        scales: &'a [f32],
        g_idx: Option<&'a [i32]>,
        v2: bool,
        group: usize,
    },
    /// AutoAWQ GEMM: `qweight [k, n/8]` and `qzeros [G, n/8]` packed along n with the
    /// `[0,2,4,6,1,3,5,7]` interleave, `scales [G, n]`.
    Awq { qweight: &'a [i32], qzeros: &'a [i32], scales: &'a [f32], group: usize },
    /// compressed-tensors pack-quantized: `weight_packed [n, k/8]` (values + 8),
    /// `weight_scale [n, G]`, optional `weight_zero_point [n/8, G]` (packed along n, + 8),
    /// optional `weight_g_idx [k]`.
    Compressed {
        packed: &'a [i32],
        scales: &'a [f32],
        zero_points: Option<&'a [i32]>,
        g_idx: Option<&'a [i32]>,
        group: usize,
    },
}

impl Int4Weights<'_> {
    /// The format's name for messages and backend strings.
    pub fn format_name(&self) -> &'static str {
        match self {
            Int4Weights::Gptq { v2: false, .. } => "gptq-v1",
            Int4Weights::Gptq { v2: true, .. } => "gptq-v2",
            Int4Weights::Awq { .. } => "awq",
            Int4Weights::Compressed { .. } => "compressed-tensors",
        }
    }
}
