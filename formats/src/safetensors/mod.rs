//! safetensors: a little-endian `u64` header length, a JSON header, then the tensor data.
//!
//! - [`header`]: parsing and validating one file's header, with an error per broken rule.
//! - [`SafetensorsSource`]: one file, the shards of a `model.safetensors.index.json`, or a list
//!   of shards, memory-mapped and seen as one checkpoint with zero-copy tensor views.
//! - [`SafetensorsWriter`]: the streaming [`TensorSink`](crate::TensorSink), with Hugging Face
//!   sharding and index.
//!
//! The reader accepts exactly what the reference implementation accepts (ST
//! `safetensors/src/tensor.rs`): tensors must tile the data section with no gap, overlap or
//! unused tail, and `__metadata__` holds only strings. See `header.rs` for why the parsing is
//! our own rather than the `safetensors` crate's.

mod error;
pub mod header;
pub(crate) mod index;
mod reader;
mod writer;

pub use error::SafetensorsError;
pub use header::{MAX_HEADER_LEN, METADATA_KEY};
pub use reader::SafetensorsSource;
pub use writer::{plan_from_source, rewrite, string_metadata, SafetensorsWriter};
