//! Why a diff could not be computed. Every message names the tensor (and the side it is on).

use qtool_formats::naming::PermuteError;

use crate::decode::DecodeError;

/// Which checkpoint of the pair a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Ref,
    Cand,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Ref => "REF",
            Side::Cand => "CAND",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Two tensors were matched by name but hold different logical shapes.
    #[error(
        "tensor '{ref_name}': REF shape {ref_shape:?} but CAND '{cand_name}' has shape {cand_shape:?} (shapes in row-major order, GGUF dims reversed)"
    )]
    ShapeMismatch { ref_name: String, ref_shape: Vec<u64>, cand_name: String, cand_shape: Vec<u64> },

    /// A tensor's bytes could not be decoded although its scheme was recognised.
    #[error("{side}: {source}")]
    Decode { side: Side, source: DecodeError },

    /// A part of a multi-part tensor (a scale) is missing or inconsistent with the weight.
    #[error("{side}: tensor '{tensor}': {msg}")]
    Layout { side: Side, tensor: String, msg: String },

    /// The q/k rows of a GGUF tensor cannot be brought into Hugging Face order.
    #[error("tensor '{tensor}': {source}")]
    Permute { tensor: String, source: PermuteError },

    /// The `--filter` expression is not a regular expression.
    #[error("--filter: {0}")]
    Filter(#[from] regex::Error),
}
