//! GGUF v2/v3: a zero-copy reader over a memory-mapped file and a streaming, byte-deterministic
//! v3 writer.
//!
//! Layout (ggml `docs/gguf.md`, `src/gguf.cpp`): magic `GGUF`, `u32` version, `u64` tensor
//! count, `u64` KV count, the KVs, the tensor infos, zero padding to the alignment, then the
//! tensor data, each tensor at a multiple of the alignment. Everything is little-endian.
//!
//! What the reader accepts, and why where it differs from llama.cpp:
//! * Versions 2 and 3. Version 1 (32-bit counts) is long dead and rejected, as is anything newer
//!   than 3; a big-endian file (recognisable by its byte-swapped version) is rejected with a
//!   message saying so rather than read as garbage.
//! * Every count and length is checked against the bytes left before it is used: a string may
//!   claim at most 1 GiB and no more than what follows it, an array's count times the smallest
//!   size of its element type must fit in the rest of the file, and the KV and tensor counts
//!   must fit too. Arrays may nest (gguf-py writes them), at most [`MAX_ARRAY_DEPTH`] deep.
//! * Keys, tensor names and string values must be UTF-8 (the spec says so); a violation is an
//!   error naming the key, never a lossy replacement — a rewrite must give back the same bytes.
//! * Duplicate keys, empty keys and duplicate tensor names are rejected; `general.alignment`, if
//!   present, must be a `UINT32` power of two (default 32).
//! * Tensor infos: at most 4 dimensions, an element count that fits in `i64`, a known ggml type
//!   id (ids ggml still defines but qtool cannot decode are listed, not rejected), `ne[0]` a
//!   whole number of blocks, an offset that is a multiple of the alignment, data inside the
//!   file, and no two tensors sharing a byte. Unlike llama.cpp the reader does not require the
//!   data to follow tensor-info order contiguously: that rule is about what llama.cpp can load,
//!   not about what the bytes mean. The writer produces exactly that order.
//! * Tensor names of 64 bytes or more (ggml's `GGML_MAX_NAME`) are accepted by the reader —
//!   qtool only reads them — but refused by the writer, since llama.cpp could not load the
//!   result.
//!
//! [`TensorInfo::shape`] is in GGUF order (`ne[0]`, the contiguous dimension, first) and its
//! `offset` is absolute in the file.
//!
//! Display metadata ([`TensorSource::metadata`]): every KV in file order; scalars as JSON values
//! (non-finite floats as the strings `"nan"`, `"inf"`, `"-inf"`); arrays of at most 16 elements
//! inline; longer arrays as a summary
//! `{"type": "array", "element_type": "string", "len": N, "head": [first 4 elements]}` (the
//! element type in lower case: `uint8` ... `float64`, `string`, `array`), so a 150k-token
//! vocabulary does not flood `qtool inspect --json`.

mod ggml_type;
pub(crate) mod reader;
mod value;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use ggml_type::GgmlType;
pub use value::{Array, Value, ValueType, INLINE_ARRAY_MAX, SUMMARY_HEAD};
pub use writer::GgufWriter;

use crate::error::Result;
use crate::mmap::MappedFile;
use crate::tensor::{ContainerFormat, TensorIndex, TensorInfo, TensorSource};

/// The alignment when a file has no `general.alignment` (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest string the reader accepts (`GGUF_MAX_STRING_LENGTH`).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Longest tensor name llama.cpp accepts is `GGML_MAX_NAME - 1` bytes; the writer enforces it.
pub const MAX_NAME_LEN: usize = 63;
/// Deepest array nesting accepted (arrays of arrays of ...). Real files nest at most twice; the
/// limit keeps a file made of array headers from recursing the reader off its stack.
pub const MAX_ARRAY_DEPTH: usize = 32;
/// The version the writer produces.
pub const WRITE_VERSION: u32 = 3;

/// Errors specific to GGUF files; each names the file (and tensor or key where there is one).
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: not a GGUF file (magic {found:02x?}, expected \"GGUF\")", path.display())]
    NotGguf { path: PathBuf, found: [u8; 4] },

    #[error("{}: big-endian GGUF (version {version}) is not supported; qtool reads little-endian GGUF only", path.display())]
    BigEndian { path: PathBuf, version: u32 },

    #[error("{}: GGUF version {version} is not supported (qtool reads versions 2 and 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },

    #[error("{}: truncated: {what} at byte {offset} needs {need} bytes, only {left} left", path.display())]
    Truncated { path: PathBuf, offset: u64, what: String, need: u64, left: u64 },

    #[error("{}: {what} {count} cannot fit in the {left} bytes that follow the header", path.display())]
    CountTooLarge { path: PathBuf, what: &'static str, count: u64, left: u64 },

    #[error("{}: {what} at byte {offset} claims {len} bytes, more than the 1 GiB limit", path.display())]
    StringTooLong { path: PathBuf, offset: u64, what: String, len: u64 },

    #[error("{}: array '{key}' claims {count} {element_type} elements, more than the {left} bytes left can hold", path.display())]
    ArrayTooLong { path: PathBuf, key: String, element_type: ValueType, count: u64, left: u64 },

    #[error("{}: array '{key}' nests deeper than {MAX_ARRAY_DEPTH} levels", path.display())]
    NestingTooDeep { path: PathBuf, key: String },

    #[error("{}: {what} is not valid UTF-8 (byte {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: u64, what: String },

    #[error("{}: empty metadata key at byte {offset}", path.display())]
    EmptyKey { path: PathBuf, offset: u64 },

    #[error("{}: key '{key}' has unknown value type {id}", path.display())]
    UnknownValueType { path: PathBuf, key: String, id: u32 },

    #[error("{}: key '{key}' has a bool byte {byte} (must be 0 or 1)", path.display())]
    InvalidBool { path: PathBuf, key: String, byte: u8 },

    #[error("{}: duplicate metadata key '{key}'", path.display())]
    DuplicateKey { path: PathBuf, key: String },

    #[error("{}: {msg}", path.display())]
    BadAlignment { path: PathBuf, msg: String },

    #[error("{}: duplicate tensor name '{tensor}'", path.display())]
    DuplicateTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}' has {n_dims} dimensions (GGUF allows at most {MAX_DIMS})", path.display())]
    TooManyDims { path: PathBuf, tensor: String, n_dims: u32 },

    #[error("{}: tensor '{tensor}': the element count of shape {shape:?} overflows", path.display())]
    ShapeOverflow { path: PathBuf, tensor: String, shape: Vec<u64> },

    #[error("{}: tensor '{tensor}' has unknown ggml type id {id}", path.display())]
    UnknownGgmlType { path: PathBuf, tensor: String, id: u32 },

    #[error("{}: tensor '{tensor}': ne[0] = {ne0} is not a multiple of the {ggml_type} block size {}", path.display(), ggml_type.block_size())]
    PartialBlock { path: PathBuf, tensor: String, ggml_type: GgmlType, ne0: u64 },

    #[error("{}: tensor '{tensor}' has offset {offset}, not a multiple of the alignment {alignment}", path.display())]
    MisalignedOffset { path: PathBuf, tensor: String, offset: u64, alignment: u32 },

    #[error("{}: tensor '{tensor}': {nbytes} bytes at data offset {offset} (data section starts at byte {data_offset}) run past the end of the {file_len}-byte file", path.display())]
    DataOutOfBounds {
        path: PathBuf,
        tensor: String,
        offset: u64,
        nbytes: u64,
        data_offset: u64,
        file_len: u64,
    },

    #[error("{}: tensors '{tensor}' and '{other}' overlap", path.display())]
    Overlap { path: PathBuf, tensor: String, other: String },

    /// What a caller asked the writer to write cannot be a valid GGUF file.
    #[error("{}: cannot write GGUF: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
}

/// A mapped GGUF file: its metadata parsed, its tensor data borrowed from the map.
#[derive(Debug)]
pub struct GgufFile {
    map: MappedFile,
    files: Vec<PathBuf>,
    version: u32,
    alignment: u32,
    data_offset: u64,
    kvs: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    index: TensorIndex,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let map = MappedFile::open(path)?;
        let parsed = reader::parse(path, map.bytes())?;
        let kv_index = parsed.kvs.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        // Names were checked for duplicates while parsing; this cannot fail, but stay an error.
        let index = TensorIndex::new(parsed.tensors)
            .map_err(|tensor| GgufError::DuplicateTensor { path: path.into(), tensor })?;
        Ok(GgufFile {
            map,
            files: vec![path.to_path_buf()],
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            kvs: parsed.kvs,
            kv_index,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All KVs in file order.
    pub fn kvs(&self) -> &[(String, Value)] {
        &self.kvs
    }

    pub fn kv(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kvs[i].1)
    }

    // The typed getters are strict: `get_u32` answers only for a UINT32 value. Use
    // `kv(key)?.as_u64()` where a file might store the number in another integer type.

    pub fn get_u8(&self, key: &str) -> Option<u8> {
        match self.kv(key)? {
            Value::U8(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        match self.kv(key)? {
            Value::U32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_i32(&self, key: &str) -> Option<i32> {
        match self.kv(key)? {
            Value::I32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.kv(key)? {
            Value::U64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        match self.kv(key)? {
            Value::I64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.kv(key)? {
            Value::F32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        match self.kv(key)? {
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.kv(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.kv(key)?.as_str()
    }

    pub fn get_array(&self, key: &str) -> Option<&Array> {
        match self.kv(key)? {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl TensorSource for GgufFile {
    fn format(&self) -> ContainerFormat {
        ContainerFormat::Gguf
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn tensors(&self) -> &[TensorInfo] {
        self.index.tensors()
    }

    /// The tensor's bytes, borrowed from the map. Ranges were checked on open; an info that did
    /// not come from this file and does not fit gets an empty slice rather than a panic.
    fn data(&self, info: &TensorInfo) -> &[u8] {
        let start = usize::try_from(info.offset).ok();
        let end = start.zip(usize::try_from(info.nbytes).ok()).and_then(|(s, n)| s.checked_add(n));
        match (start, end) {
            (Some(s), Some(e)) => self.map.bytes().get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    fn release(&self, info: &TensorInfo) {
        self.map.release(info.offset, info.nbytes);
    }

    fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.index.find(name)
    }

    fn metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        self.kvs.iter().map(|(k, v)| (k.clone(), v.to_display_json())).collect()
    }
}
