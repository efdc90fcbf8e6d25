//! Helpers shared by the GPU tests: opening the GPU (or skipping) and seeded values.

#![allow(dead_code)]

use qtool_kernels::Gpu;

/// The GPU, or `None` after printing `skipped: <reason>`; a missing GPU under
/// `QTOOL_REQUIRE_GPU=1` is a failure.
pub fn gpu() -> Option<Gpu> {
    Gpu::for_tests()
}

pub use qtool_kernels::seeded::values;
