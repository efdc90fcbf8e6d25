//! qtool's GPU side: CUDA sources in `kernels/cuda/`, compiled by NVRTC at first use, and the
//! probe that finds (or fails to find) a driver, NVRTC and a GPU without ever panicking.

pub mod probe;

pub use probe::{probe, GpuDevice, GpuProbe};
