//! What every container has in common: tensor descriptions, zero-copy views, and the source and
//! sink traits the rest of qtool programs against.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::Result;
use crate::gguf::GgmlType;

/// The container a checkpoint comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerFormat {
    Safetensors,
    Gguf,
}

impl ContainerFormat {
    pub const fn name(self) -> &'static str {
        match self {
            ContainerFormat::Safetensors => "safetensors",
            ContainerFormat::Gguf => "gguf",
        }
    }
}

/// A tensor's storage type: a safetensors element type, or a GGML type (plain or block-quantized)
/// for tensors that come from GGUF. The two are kept apart so that names print as each container
/// spells them (`BF16` vs `BF16`, `F8_E4M3` vs `Q4_K`) and so that GGUF's `ne[0]`-first shapes are
/// never confused with safetensors' row-major ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorDType {
    St(DType),
    Ggml(GgmlType),
}

impl TensorDType {
    pub const fn name(self) -> &'static str {
        match self {
            TensorDType::St(d) => d.name(),
            TensorDType::Ggml(t) => t.name(),
        }
    }
}

impl fmt::Display for TensorDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as its container describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: TensorDType,
    /// The shape as the container stores it: safetensors lists the outermost dimension first
    /// (PyTorch order); GGUF lists `ne[0]`, the contiguous dimension, first.
    pub shape: Vec<u64>,
    /// Index into [`TensorSource::files`].
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a 0-d tensor). Shapes are validated on open, so this cannot
    /// overflow for a tensor that came from a reader.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A tensor's description together with a view of its bytes in the mapped file.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

/// An opened checkpoint: a list of tensors whose bytes can be viewed without copying.
pub trait TensorSource: Send + Sync + fmt::Debug {
    fn format(&self) -> ContainerFormat;
    /// The files the tensors live in (one for a single file, several for shards).
    fn files(&self) -> &[PathBuf];
    /// Tensors in container order (safetensors: by data offset per file, files in order; GGUF:
    /// tensor-info order).
    fn tensors(&self) -> &[TensorInfo];
    /// The bytes of a tensor that came from this source.
    fn data(&self, info: &TensorInfo) -> &[u8];
    /// Looks a tensor up by name.
    fn find(&self, name: &str) -> Option<&TensorInfo>;
    /// Container metadata for display (`__metadata__` string map; GGUF KVs with long arrays
    /// summarised).
    fn metadata(&self) -> serde_json::Map<String, serde_json::Value>;

    /// Says that a tensor's bytes will not be read again soon, so a memory-mapped source may drop
    /// its pages (re-read from the file if touched). Streaming pipelines call it after each tensor
    /// to keep resident memory O(largest tensor). A hint; the default does nothing.
    fn release(&self, _info: &TensorInfo) {}

    fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let info = self.find(name)?;
        Some(TensorRef { info, data: self.data(info) })
    }
}

/// Name lookup for sources: tensors in order plus a name → position map.
#[derive(Clone, Debug, Default)]
pub struct TensorIndex {
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl TensorIndex {
    /// Builds the index; returns the name of the first duplicate if any.
    pub fn new(tensors: Vec<TensorInfo>) -> std::result::Result<Self, String> {
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(t.name.clone());
            }
        }
        Ok(TensorIndex { tensors, by_name })
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
}

/// A tensor an output will hold: everything but its bytes, so headers can be written first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: TensorDType,
    /// In the target container's own order (see [`TensorInfo::shape`]).
    pub shape: Vec<u64>,
    pub nbytes: u64,
}

/// A streaming writer: the plan is fixed when the sink is created, tensors arrive in plan order,
/// and `finish` makes the output appear atomically. Dropping a sink without `finish` leaves no
/// output behind.
pub trait TensorSink {
    /// Writes the next tensor of the plan; errors if `name` or the byte count is not what the
    /// plan says comes next.
    fn write(&mut self, name: &str, data: &[u8]) -> Result<()>;
    /// Flushes, syncs and renames every output file into place; returns the final paths.
    fn finish(self: Box<Self>) -> Result<Vec<PathBuf>>;
}

/// Helper for sinks: checks that `name`/`len` are what the plan expects at position `next`.
pub fn check_next(
    plan: &[PlannedTensor],
    next: usize,
    name: &str,
    len: usize,
    path: &Path,
) -> Result<()> {
    let Some(expected) = plan.get(next) else {
        return Err(crate::Error::invalid(
            path,
            format!("tensor '{name}' written after the plan was complete"),
        ));
    };
    if expected.name != name {
        return Err(crate::Error::invalid(
            path,
            format!(
                "tensor '{name}' written out of order (the plan expects '{}' next)",
                expected.name
            ),
        ));
    }
    if expected.nbytes != len as u64 {
        return Err(crate::Error::invalid(
            path,
            format!("tensor '{name}': {len} bytes written, the plan says {}", expected.nbytes),
        ));
    }
    Ok(())
}
