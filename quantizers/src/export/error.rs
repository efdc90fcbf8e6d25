//! Why a quantize run stopped: each names the file and tensor, or the option, concerned.

use std::path::PathBuf;

use crate::decode::DecodeError;
use crate::float::FloatError;
use crate::int::IntError;

use super::catalog::Layout;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Quantize { path: PathBuf, tensor: String, source: FloatError },

    #[error("{}: tensor '{tensor}': {source}", path.display())]
    QuantizeInt { path: PathBuf, tensor: String, source: IntError },

    /// A selected weight whose shape the layout cannot hold (leave it out with `--ignore`).
    #[error("tensor '{tensor}' [{}x{}] cannot be written in layout {layout}: {rule} (or leave it unquantized with --ignore)", shape[0], shape[1])]
    Shape { tensor: String, shape: [usize; 2], layout: Layout, rule: String },

    /// A layer `repack` cannot move to the target, with the rule that fails.
    #[error("tensor '{tensor}': {rule}")]
    Repack { tensor: String, rule: String },

    /// Options that do not fit together.
    #[error("{0}")]
    Usage(String),

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
