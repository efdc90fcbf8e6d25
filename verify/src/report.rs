//! The result of a verification, as printed by `qtool verify --json` (schema_version 1).
//!
//! ```text
//! { schema_version, path, reference?, device?, batches: [m..],
//!   layers: [{ name, layout, kernel?, shape: [n, k], status: pass|fail|skipped, reason?,
//!              batches: [{ m, max_rel, mean_rel, tolerance: {name, max_rel, mean_rel}, pass,
//!                          kernel_us, bf16_us, speedup,
//!                          reference?: { expected_rel, cpu_rel, kernel_rel, limit, pass, note? } }] }],
//!   summary: { layers, passed, failed, skipped, failing: [names], pass } }
//! ```
//! Errors are relative to the RMS of the reference output (see [`crate::metrics`]); NaN shows
//! as `null`. `speedup` is cuBLAS BF16 time over kernel time at the same `[m, n, k]`.

use serde::Serialize;

use crate::tolerance::Tolerance;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// No kernel ran (none for the layout, or a layout qtool cannot decode); never counted as a
    /// pass, though a REF check that ran on the CPU can still make the layer fail.
    Skipped,
}

/// The REF check at one batch size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefResult {
    /// Output error of qtool's own quantization of REF's weights for this scheme; `None` when
    /// qtool has no quantizer for it (then nothing is judged: `limit` is `None`, see `note`).
    pub expected_rel: Option<f64>,
    /// Output error of the candidate's CPU-dequantized weights against REF's.
    pub cpu_rel: f64,
    /// Output error of the kernel against REF's weights (GPU runs only); reported, not judged
    /// (the kernel's distance to the CPU result is what the kernel tolerance bounds).
    pub kernel_rel: Option<f64>,
    pub limit: Option<f64>,
    pub pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One batch size of one layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchResult {
    pub m: usize,
    /// Kernel against the FP32 GEMM on the CPU-dequantized weight (GPU runs only).
    pub max_rel: Option<f64>,
    pub mean_rel: Option<f64>,
    /// The kernel's tolerance; `None` when no kernel ran (see the layer's `reason`).
    pub tolerance: Option<Tolerance>,
    pub pass: bool,
    pub kernel_us: Option<f64>,
    pub bf16_us: Option<f64>,
    pub speedup: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<RefResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerReport {
    pub name: String,
    /// The registry's scheme string (`int4_g128/marlin`, `nvfp4/comfy`, `Q4_K` ...).
    pub layout: String,
    pub kernel: Option<String>,
    pub shape: [usize; 2],
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub batches: Vec<BatchResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub layers: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failing: Vec<String>,
    /// No layer failed and at least one passed.
    pub pass: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub path: String,
    pub reference: Option<String>,
    pub device: Option<String>,
    pub batches: Vec<usize>,
    pub layers: Vec<LayerReport>,
    pub summary: Summary,
}

impl Summary {
    pub fn of(layers: &[LayerReport]) -> Summary {
        let count = |s: Status| layers.iter().filter(|l| l.status == s).count();
        let failing: Vec<String> =
            layers.iter().filter(|l| l.status == Status::Fail).map(|l| l.name.clone()).collect();
        let passed = count(Status::Pass);
        Summary {
            layers: layers.len(),
            passed,
            failed: failing.len(),
            skipped: count(Status::Skipped),
            // A run that verified nothing (every layer skipped) has not shown the file is good.
            pass: failing.is_empty() && passed > 0,
            failing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, status: Status) -> LayerReport {
        LayerReport {
            name: name.into(),
            layout: "Q4_K".into(),
            kernel: None,
            shape: [1, 1],
            status,
            reason: None,
            batches: Vec::new(),
        }
    }

    #[test]
    fn summary_verdicts() {
        let s = Summary::of(&[layer("a", Status::Pass), layer("b", Status::Skipped)]);
        assert!(s.pass && s.passed == 1 && s.skipped == 1);
        let s = Summary::of(&[layer("a", Status::Pass), layer("b", Status::Fail)]);
        assert!(!s.pass);
        assert_eq!(s.failing, ["b"]);
        let s = Summary::of(&[layer("a", Status::Skipped)]);
        assert!(!s.pass, "nothing verified is not a pass");
    }
}
