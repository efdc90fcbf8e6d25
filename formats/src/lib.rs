//! Checkpoint containers for qtool.
//!
//! This crate knows how bytes are laid out on disk — safetensors (single file, sharded with
//! `model.safetensors.index.json`, or a directory of shards), GGUF v2/v3, the element types they
//! carry and the naming conventions of the runtimes that load them. It knows no quantization
//! algorithm (that is `qtool-quantizers`) and never touches a GPU.
//!
//! Reading is zero-copy: every [`TensorSource`] memory-maps its files and hands out
//! [`TensorRef`]s that borrow the mapping, so opening a 28 GB checkpoint costs its header.
//! Writing streams: the full tensor plan is known up front, the header goes first, tensors follow
//! in order, and the result appears at its final path only when complete ([`atomic`]).

pub mod atomic;
pub mod checkpoint;
pub mod codec;
pub mod conventions;
pub mod dtype;
pub mod error;
pub mod gguf;
pub mod mmap;
pub mod naming;
pub mod safetensors;
pub mod tensor;

pub use checkpoint::{open, Checkpoint};
pub use dtype::DType;
pub use error::{Error, Result};
pub use gguf::GgmlType;
pub use tensor::{
    ContainerFormat, PlannedTensor, TensorDType, TensorInfo, TensorRef, TensorSink, TensorSource,
};

/// Byte-level entry points of the parsers, for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::tensor::TensorInfo;

    /// A safetensors file given as bytes: its tensors with absolute offsets.
    pub fn safetensors(bytes: &[u8]) -> Result<Vec<TensorInfo>, crate::Error> {
        let header = crate::safetensors::header::parse(Path::new("<fuzz>"), bytes)?;
        let start = header.data_start();
        Ok(header
            .tensors
            .into_iter()
            .map(|t| TensorInfo {
                name: t.name,
                dtype: crate::TensorDType::St(t.dtype),
                shape: t.shape,
                file: 0,
                offset: start + t.begin,
                nbytes: t.end - t.begin,
            })
            .collect())
    }

    /// A GGUF file given as bytes: its tensors with absolute offsets.
    pub fn gguf(bytes: &[u8]) -> Result<Vec<TensorInfo>, crate::Error> {
        Ok(crate::gguf::reader::parse(Path::new("<fuzz>"), bytes)?.tensors)
    }

    /// A `model.safetensors.index.json` given as bytes: its weight map.
    pub fn index_json(bytes: &[u8]) -> Result<usize, crate::Error> {
        Ok(crate::safetensors::index::parse_index(Path::new("<fuzz>"), bytes)?.0.len())
    }
}
