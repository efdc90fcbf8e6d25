//! What can go wrong while verifying, with the file, layer or tensor named in every message.

use thiserror::Error;

/// A verification could not run (as opposed to ran and found a mismatch, which is a report).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The checkpoint could not be opened or read.
    #[error(transparent)]
    Format(#[from] qtool_formats::Error),
    /// The decoder registry refused the checkpoint (an inconsistent quantized layer).
    #[error(transparent)]
    Diff(#[from] qtool_quantizers::diff::DiffError),
    /// A layer's stored parts do not fit its layout.
    #[error("{layer}: {msg}")]
    Layer { layer: String, msg: String },
    /// The checkpoint holds no layer that verify knows how to run.
    #[error("{path}: no quantized linear layers found ({tensors} tensors{filtered}); verify checks quantized checkpoints (FP8, NVFP4, GPTQ/AWQ/compressed-tensors int4, Marlin, GGUF block types)")]
    NoQuantizedLayers { path: String, tensors: usize, filtered: String },
    /// REF lacks a tensor CAND has, or its shape differs.
    #[error("--ref {path}: {msg}")]
    Reference { path: String, msg: String },
    /// A GPU operation failed.
    #[error("{layer}: kernel {kernel}: {msg}")]
    Kernel { layer: String, kernel: String, msg: String },
    /// No GPU to run on.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    /// I/O while writing a corrupted copy.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T, E = VerifyError> = std::result::Result<T, E>;
