//! qtool's GPU side: CUDA sources in `kernels/cuda/`, compiled by NVRTC at first use (cached on
//! disk per source, architecture and NVRTC version), the probe that finds (or fails to find) a
//! driver, NVRTC and a GPU without ever panicking, and the host-level GEMM operations `verify`
//! runs on a checkpoint's own bytes.
//!
//! Layout: [`probe`] and `libs` find the libraries; [`nvrtc`] compiles; [`gpu::Gpu`] owns the
//! context, stream, cuBLAS handles and modules; [`launch`] holds the checked kernel launches and
//! `blas` the cuBLAS/cuBLASLt calls; [`timing`] times with CUDA events; [`ops`] holds the
//! operations' types, implemented per family in `gemm_bf16`, `fp8`, `nvfp4`, `int4`, `gguf`.

pub mod error;
pub mod gpu;
pub mod hbm;
pub mod launch;
pub mod libs;
pub mod llama;
pub mod marlin;
pub mod nvrtc;
pub mod ops;
pub mod probe;
pub mod seeded;
pub mod timing;

pub mod awq;
mod blas;
mod dequant_gemm;
pub mod fp8;
mod gemm_bf16;
pub mod gguf;
pub mod gptq;
pub mod int4;
pub mod nvfp4;

pub use dequant_gemm::GEMV_MAX_M;
pub use error::{KResult, KernelError};
pub use fp8::{Fp8Options, Fp8Path};
pub use gpu::Gpu;
pub use nvrtc::{arch_for, compile_for_arch, KernelSource};
pub use ops::{Fp8Kind, Fp8Scale, GemmRun, GgmlType, Int4Weights, NibbleOrder, ScaleLayout};
pub use probe::{probe, GpuDevice, GpuProbe};
