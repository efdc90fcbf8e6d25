//! The one error type of the GPU side. Every variant carries enough words for a user to act on;
//! `NoGpu` is kept apart so callers can map it to "skipped" / exit code 2 instead of a failure.

/// Why a GPU operation could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No usable driver, NVRTC, cuBLAS or GPU: the operation cannot run on this machine.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    /// NVRTC rejected a kernel source; `log` is NVRTC's program log.
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Nvrtc { kernel: String, log: String },
    /// A CUDA driver call failed (including errors raised by a kernel at run time).
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A cuBLAS / cuBLASLt call failed or found no algorithm.
    #[error("cuBLAS error: {0}")]
    Blas(String),
    /// Operand sizes disagree with the stated GEMM shape.
    #[error("shape error: {0}")]
    Shape(String),
    /// A launch configuration exceeds the device's limits.
    #[error("launch error: {0}")]
    Launch(String),
    /// The combination of options is not supported by this kernel.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading or writing the compiled-kernel cache failed.
    #[error("kernel cache {path}: {msg}")]
    Cache { path: String, msg: String },
}

/// Result alias for everything in this crate.
pub type KResult<T> = Result<T, KernelError>;

impl KernelError {
    /// Whether this error means "no GPU here" (a skip), not a failure of a kernel.
    pub fn is_no_gpu(&self) -> bool {
        matches!(self, KernelError::NoGpu(_))
    }
}

impl From<cudarc::driver::DriverError> for KernelError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        KernelError::Cuda(e.to_string())
    }
}

/// Checks that a buffer has the length a shape implies; `what` names the operand.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> KResult<()> {
    if got != want {
        return Err(KernelError::Shape(format!("{what}: {got} elements, the shape needs {want}")));
    }
    Ok(())
}
