//! Why a model could not be opened or run. Every variant names the file, and the tensor or key
//! where there is one, so a user can tell which input is wrong.

use std::path::PathBuf;

/// Errors of the forward engine, the tokenizer and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] qtool_formats::Error),

    /// Hyper-parameters or tokenizer metadata that the conversion tables reject.
    #[error(transparent)]
    Convert(#[from] qtool_quantizers::convert::ConvertError),

    #[error("{}: architecture '{arch}' is not supported by the forward engine (supported: {supported})", path.display())]
    UnsupportedArch { path: PathBuf, arch: String, supported: String },

    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },

    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    #[error("{}: tensor '{tensor}' is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    Tensor { path: PathBuf, tensor: String, msg: String },

    #[error("{}: no tokenizer: {msg}", path.display())]
    MissingTokenizer { path: PathBuf, msg: String },

    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    /// A request that does not fit the model (a token id beyond the vocabulary, a sequence of
    /// the wrong width).
    #[error("{0}")]
    Usage(String),

    /// The GPU forward path failed, or found no usable GPU ([`qtool_kernels::KernelError::NoGpu`]).
    #[error(transparent)]
    Gpu(#[from] qtool_kernels::KernelError),
}

impl EngineError {
    pub(crate) fn tensor(path: &std::path::Path, tensor: &str, msg: impl Into<String>) -> Self {
        EngineError::Tensor { path: path.to_path_buf(), tensor: tensor.to_owned(), msg: msg.into() }
    }

    pub(crate) fn invalid(path: &std::path::Path, msg: impl Into<String>) -> Self {
        EngineError::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
