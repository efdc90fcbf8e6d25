//! Helpers shared by the GPU tests: opening the GPU (or skipping) and seeded values.

#![allow(dead_code)]

use qtool_kernels::{Gpu, KernelError};

/// The GPU, or `None` after printing `skipped: <reason>`; a missing GPU under
/// `QTOOL_REQUIRE_GPU=1` is a failure.
pub fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e @ KernelError::NoGpu(_)) => {
            if std::env::var("QTOOL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("QTOOL_REQUIRE_GPU=1 but {e}");
            }
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    }
}

/// Deterministic values in [-1, 1) (xorshift64*).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            v as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
