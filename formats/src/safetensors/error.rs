//! Why a safetensors file, index or write plan was refused.
//!
//! One variant per rule, so tests and callers can tell the cases apart, and every message names
//! the file first (then the tensor or key) so the CLI can print it as one `error:` line.

use std::path::PathBuf;

use crate::dtype::DType;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{}: truncated: {len} bytes, shorter than the 8-byte header length", path.display())]
    Truncated { path: PathBuf, len: u64 },

    #[error("{}: header length {header_len} exceeds the {limit}-byte limit", path.display())]
    HeaderTooLarge { path: PathBuf, header_len: u64, limit: u64 },

    #[error(
        "{}: header length {header_len} runs past the end of the file ({file_len} bytes)",
        path.display()
    )]
    HeaderPastEnd { path: PathBuf, header_len: u64, file_len: u64 },

    #[error("{}: header is not valid UTF-8 (invalid byte at header offset {at})", path.display())]
    HeaderNotUtf8 { path: PathBuf, at: usize },

    #[error("{}: header is not valid JSON: {source}", path.display())]
    HeaderNotJson { path: PathBuf, source: serde_json::Error },

    #[error("{}: header is {found}, not a JSON object", path.display())]
    HeaderNotObject { path: PathBuf, found: &'static str },

    #[error("{}: header lists the key '{key}' twice", path.display())]
    DuplicateKey { path: PathBuf, key: String },

    #[error("{}: __metadata__ is {found}, not an object of strings", path.display())]
    MetadataNotObject { path: PathBuf, found: &'static str },

    #[error("{}: __metadata__ value of '{key}' is {found}; values must be strings", path.display())]
    MetadataNotString { path: PathBuf, key: String, found: &'static str },

    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    BadTensorEntry { path: PathBuf, tensor: String, msg: String },

    #[error("{}: tensor '{tensor}': unknown dtype '{dtype}'", path.display())]
    UnknownDtype { path: PathBuf, tensor: String, dtype: String },

    #[error("{}: tensor '{tensor}': element count of shape {shape:?} overflows", path.display())]
    ShapeOverflow { path: PathBuf, tensor: String, shape: Vec<u64> },

    #[error(
        "{}: tensor '{tensor}': {numel} {dtype} elements are not a whole number of bytes",
        path.display()
    )]
    PartialBytes { path: PathBuf, tensor: String, dtype: DType, numel: u64 },

    #[error(
        "{}: tensor '{tensor}': {dtype} {shape:?} needs {expected} bytes but data_offsets span {actual}",
        path.display()
    )]
    ByteCountMismatch {
        path: PathBuf,
        tensor: String,
        dtype: DType,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },

    #[error("{}: tensor '{tensor}': data_offsets [{begin}, {end}] end before they begin", path.display())]
    EndBeforeBegin { path: PathBuf, tensor: String, begin: u64, end: u64 },

    #[error(
        "{}: tensor '{tensor}': data_offsets [{begin}, {end}] overlap tensor '{other}', which ends at {other_end}",
        path.display()
    )]
    Overlap { path: PathBuf, tensor: String, begin: u64, end: u64, other: String, other_end: u64 },

    #[error(
        "{}: tensor '{tensor}': data starts at {begin}, leaving a gap of unused bytes after {expected}",
        path.display()
    )]
    Gap { path: PathBuf, tensor: String, begin: u64, expected: u64 },

    #[error(
        "{}: tensor '{tensor}': data_offsets end at {end}, past the end of the {data_len}-byte data section",
        path.display()
    )]
    OutOfRange { path: PathBuf, tensor: String, end: u64, data_len: u64 },

    #[error(
        "{}: {unused} bytes after the last tensor ({data_len}-byte data section, tensors cover {used})",
        path.display()
    )]
    TrailingBytes { path: PathBuf, data_len: u64, used: u64, unused: u64 },

    #[error("tensor '{tensor}' appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor { tensor: String, first: PathBuf, second: PathBuf },

    #[error("{}: index is not valid JSON: {source}", path.display())]
    IndexNotJson { path: PathBuf, source: serde_json::Error },

    #[error("{}: {msg}", path.display())]
    IndexInvalid { path: PathBuf, msg: String },

    #[error("{}: shard {} (named for tensor '{tensor}') does not exist", index.display(), shard.display())]
    ShardMissing { index: PathBuf, shard: PathBuf, tensor: String },

    #[error(
        "{}: weight_map places tensor '{tensor}' in {}, which has no such tensor",
        index.display(),
        shard.display()
    )]
    TensorNotInShard { index: PathBuf, tensor: String, shard: PathBuf },

    #[error(
        "{}: weight_map places tensor '{tensor}' in {}, but it is in {}",
        index.display(),
        listed.display(),
        actual.display()
    )]
    TensorInOtherShard { index: PathBuf, tensor: String, listed: PathBuf, actual: PathBuf },

    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    Plan { path: PathBuf, tensor: String, msg: String },
}
