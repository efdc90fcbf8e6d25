//! GPU verification of quantized checkpoints against CPU references (`qtool verify`).
//!
//! - [`discover`]: the quantized linear layers of a checkpoint, their stored parts and layout
//!   (on top of `qtool_quantizers::diff`'s decoder registry) and their CPU dequantization;
//! - [`activations`]: seeded inputs; [`gemm`]: the FP32 CPU reference GEMM; [`metrics`]: errors;
//! - [`tolerance`]: the kernel per layout and its named tolerance, and the REF-check limit;
//! - [`expected`]: the error a correct file of a scheme has against the original weights;
//! - [`reference`](mod@reference): `--ref` weights paired with the candidate's layers;
//! - [`runner`]: one layer at every batch size, through a [`runner::Backend`];
//!   [`gpu`]: the backend over `qtool_kernels`; [`report`]: the JSON document;
//! - [`corrupt`]: deliberately damaged copies of real checkpoints, for the tests that show the
//!   checks catch what users fear; [`fixture`]: a seeded checkpoint with kernel-friendly shapes.
//!
//! Every GPU test follows one rule: without a usable GPU it prints `skipped: <reason>` and
//! returns, unless `QTOOL_REQUIRE_GPU=1`, in which case it fails. A skip must never look like a
//! pass in CI that has a GPU, hence the switch.

pub mod act_quant;
pub mod activations;
pub mod awq_fold;
pub mod corrupt;
pub mod discover;
pub mod error;
pub mod expected;
pub mod fixture;
pub mod gemm;
pub mod gpu;
pub mod metrics;
pub mod reference;
pub mod report;
pub mod runner;
pub mod tolerance;

pub use error::{Result, VerifyError};

use qtool_kernels::probe::{probe, GpuProbe};

/// The environment variable that turns a GPU skip into a failure.
pub const REQUIRE_GPU_ENV: &str = "QTOOL_REQUIRE_GPU";

/// What a GPU test should do, given whether a GPU is required and what the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuDecision {
    Run(GpuProbe),
    Skip(String),
    Fail(String),
}

/// Whether the value of `QTOOL_REQUIRE_GPU` asks for a GPU. Only `1` (and `true`/`yes`, any case)
/// does; an unset, empty or `0` variable does not.
pub fn require_gpu_from(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1") | Some("true") | Some("yes")
    )
}

/// The decision, separated from the environment and the hardware so it can be tested.
pub fn decide(test_name: &str, require_gpu: bool, probe: GpuProbe) -> GpuDecision {
    match probe.unusable_reason() {
        None => GpuDecision::Run(probe),
        Some(reason) if require_gpu => {
            GpuDecision::Fail(format!("{test_name}: {REQUIRE_GPU_ENV}=1 but {reason}"))
        }
        Some(reason) => GpuDecision::Skip(format!("{test_name}: {reason}")),
    }
}

/// For GPU tests: returns the probe when a GPU is usable; otherwise prints `skipped: <reason>`
/// and returns `None`, or panics (fails the test) when `QTOOL_REQUIRE_GPU=1`.
pub fn gpu_or_skip(test_name: &str) -> Option<GpuProbe> {
    let require = require_gpu_from(std::env::var(REQUIRE_GPU_ENV).ok().as_deref());
    match decide(test_name, require, probe()) {
        GpuDecision::Run(p) => Some(p),
        GpuDecision::Skip(reason) => {
            println!("skipped: {reason}");
            None
        }
        GpuDecision::Fail(reason) => panic!("{reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtool_kernels::probe::GpuDevice;

    fn usable() -> GpuProbe {
        GpuProbe {
            driver_version: Some("13.0".into()),
            nvrtc_version: Some("13.0".into()),
            devices: vec![GpuDevice {
                ordinal: 0,
                name: "Test GPU".into(),
                compute_capability: (9, 0),
                total_memory_bytes: 80 << 30,
            }],
            ..GpuProbe::default()
        }
    }

    fn missing() -> GpuProbe {
        GpuProbe { problems: vec!["CUDA driver library not found".into()], ..GpuProbe::default() }
    }

    #[test]
    fn env_values() {
        assert!(!require_gpu_from(None));
        assert!(!require_gpu_from(Some("")));
        assert!(!require_gpu_from(Some("0")));
        assert!(!require_gpu_from(Some("no")));
        assert!(require_gpu_from(Some("1")));
        assert!(require_gpu_from(Some(" TRUE ")));
        assert!(require_gpu_from(Some("yes")));
    }

    #[test]
    fn skip_without_gpu_unless_required() {
        assert_eq!(
            decide("t", false, missing()),
            GpuDecision::Skip("t: CUDA driver library not found".into())
        );
        assert_eq!(
            decide("t", true, missing()),
            GpuDecision::Fail("t: QTOOL_REQUIRE_GPU=1 but CUDA driver library not found".into())
        );
    }

    #[test]
    fn run_with_gpu_either_way() {
        assert_eq!(decide("t", false, usable()), GpuDecision::Run(usable()));
        assert_eq!(decide("t", true, usable()), GpuDecision::Run(usable()));
    }

    #[test]
    fn gpu_or_skip_agrees_with_the_probe() {
        // Runs on any machine: with a GPU it must return Some; without one it must skip (or,
        // under QTOOL_REQUIRE_GPU=1, panic — which is what that setting asks for).
        let expected = probe().is_usable();
        assert_eq!(gpu_or_skip("gpu_or_skip_agrees_with_the_probe").is_some(), expected);
    }
}
