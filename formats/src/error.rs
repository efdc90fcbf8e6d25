//! The error type of every reader and writer in this crate.
//!
//! Each container has its own precise enum (`safetensors::SafetensorsError`,
//! `gguf::GgufError`); [`Error`] wraps them together with the failures that belong to no single
//! container (I/O, directory layout, `config.json`). Every message names the file, and the tensor
//! where there is one, so the CLI can print it as a single `error:` line.

use std::path::PathBuf;

use crate::gguf::GgufError;
use crate::safetensors::SafetensorsError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),

    #[error(transparent)]
    Gguf(#[from] GgufError),

    /// A file that is readable but whose content is not what the checkpoint layout promises
    /// (an index naming a missing shard, a `config.json` that is not JSON, ...).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    #[error("{}: not a checkpoint qtool can read (expected a .safetensors file, a .gguf file or a directory of safetensors shards)", path.display())]
    UnknownFormat { path: PathBuf },

    #[error("no tensor named '{name}' in {}", path.display())]
    NoSuchTensor { path: PathBuf, name: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), msg: msg.into() }
    }
}
