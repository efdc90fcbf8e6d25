//! Why a quantize run stopped: each names the file and tensor, or the option, concerned.

use std::path::PathBuf;

use crate::decode::DecodeError;
use crate::float::FloatError;

use super::catalog::Layout;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Quantize { path: PathBuf, tensor: String, source: FloatError },

    /// `source` already names the tensor.
    #[error("{}: {source}", path.display())]
    Decode { path: PathBuf, source: DecodeError },

    #[error(transparent)]
    Format(#[from] qtool_formats::Error),

    #[error("--fmt {fmt} cannot be written in layout {layout} ({reason}); layouts that can express it: {supported}")]
    LayoutMismatch { fmt: &'static str, layout: Layout, reason: &'static str, supported: String },

    #[error("{option} {pattern:?} is not a valid regular expression: {msg}")]
    Regex { option: &'static str, pattern: String, msg: String },

    /// A quantized part came out a different size than planned: a bug, reported not panicked.
    #[error("tensor '{tensor}': part {part} has {got} bytes, the plan says {expected}")]
    PartSize { tensor: String, part: String, got: usize, expected: u64 },
}
