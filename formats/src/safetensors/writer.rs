//! Streaming safetensors writer: headers planned up front, tensors streamed in plan order,
//! optional sharding with an index, and every file appearing only when all are complete.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::header::{LEN_PREFIX, MAX_HEADER_LEN, METADATA_KEY};
use super::index::index_json;
use super::SafetensorsError;
use crate::atomic::{ensure_not_input, AtomicFile, SealedFile};
use crate::error::{Error, Result};
use crate::tensor::{check_next, PlannedTensor, TensorDType, TensorSink, TensorSource};

/// One output file: its path, the slice of the plan it holds, and its complete header
/// (length prefix included).
#[derive(Debug)]
struct ShardPlan {
    path: PathBuf,
    tensors: Range<usize>,
    header: Vec<u8>,
}

/// Writes a plan of tensors as one safetensors file, or as Hugging Face shards
/// (`<stem>-00001-of-0000N.safetensors` + `<target name>.index.json`) when the plan's tensor
/// bytes exceed `max_shard_size`. A plan that needs only one shard (for instance a single
/// tensor over the limit) is written as the one file `target`, with no index, as Hugging Face's
/// `save_pretrained` does.
///
/// Tensors are laid out in plan order, each header lists `__metadata__` first and then the
/// tensors in plan order, padded with spaces to a multiple of 8 bytes as the reference writer
/// does; the same inputs always give the same bytes.
#[derive(Debug)]
pub struct SafetensorsWriter {
    plan: Vec<PlannedTensor>,
    shards: Vec<ShardPlan>,
    /// `(path, contents)` of the index, for sharded output.
    index: Option<(PathBuf, Vec<u8>)>,
    /// Position in `plan` of the next tensor to write.
    next: usize,
    /// The shard being written and its position in `shards`.
    open: Option<(usize, AtomicFile)>,
    /// Completed shards, renamed together by `finish`.
    sealed: Vec<SealedFile>,
    /// Set when a write failed part-way; the output can no longer be completed.
    broken: bool,
}

impl SafetensorsWriter {
    /// Checks the plan, computes every header and creates the first output file (under a
    /// temporary name). `max_shard_size` bounds each shard's tensor bytes; a tensor larger than
    /// the bound gets a shard of its own, since tensors are never split.
    pub fn create(
        target: &Path,
        plan: Vec<PlannedTensor>,
        metadata: BTreeMap<String, String>,
        max_shard_size: Option<u64>,
    ) -> Result<Self> {
        let total = check_plan(target, &plan)?;
        let groups = match max_shard_size {
            Some(0) => return Err(Error::invalid(target, "maximum shard size must be positive")),
            Some(max) if total > max => split(&plan, max),
            _ => std::iter::once(0..plan.len()).collect(),
        };

        let mut shards = Vec::with_capacity(groups.len());
        let mut index = None;
        if groups.len() == 1 {
            let header = header_bytes(target, &metadata, &plan)?;
            shards.push(ShardPlan { path: target.to_path_buf(), tensors: 0..plan.len(), header });
        } else {
            let (dir, file_name) = split_target(target)?;
            let stem = file_name.strip_suffix(".safetensors").unwrap_or(&file_name);
            let count = groups.len();
            let mut weight_map = BTreeMap::new();
            for (i, range) in groups.into_iter().enumerate() {
                let name = format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1);
                let path = dir.join(&name);
                let header = header_bytes(&path, &metadata, &plan[range.clone()])?;
                for t in &plan[range.clone()] {
                    weight_map.insert(t.name.as_str(), name.clone());
                }
                shards.push(ShardPlan { path, tensors: range, header });
            }
            index =
                Some((dir.join(format!("{file_name}.index.json")), index_json(total, &weight_map)));
        }

        let mut writer = SafetensorsWriter {
            plan,
            shards,
            index,
            next: 0,
            open: None,
            sealed: Vec::new(),
            broken: false,
        };
        writer.open_shard(0)?;
        Ok(writer)
    }

    /// The files `finish` will produce, in order (shards, then the index).
    pub fn outputs(&self) -> Vec<PathBuf> {
        let shards = self.shards.iter().map(|s| s.path.clone());
        shards.chain(self.index.iter().map(|(p, _)| p.clone())).collect()
    }

    fn open_shard(&mut self, shard: usize) -> Result<()> {
        let plan = &self.shards[shard];
        let mut file = AtomicFile::create(&plan.path)?;
        file.write_all(&plan.header).map_err(|e| Error::io(&plan.path, e))?;
        self.open = Some((shard, file));
        Ok(())
    }

    /// Writes the next tensor after `check_next` accepted it; any failure here may have left
    /// partial bytes behind.
    fn write_checked(&mut self, data: &[u8]) -> Result<()> {
        let (current, _) = self.open.as_ref().expect("a shard is open while tensors remain");
        let current = *current;
        if !self.shards[current].tensors.contains(&self.next) {
            let (_, file) = self.open.take().expect("checked above");
            self.sealed.push(file.seal()?);
            self.open_shard(current + 1)?;
        }
        let (shard, file) = self.open.as_mut().expect("opened above");
        file.write_all(data).map_err(|e| Error::io(&self.shards[*shard].path, e))?;
        self.next += 1;
        Ok(())
    }

    /// The file the next tensor goes to (the last one once the plan is complete).
    fn next_path(&self) -> &Path {
        let shard = self.shards.iter().find(|s| s.tensors.contains(&self.next));
        &shard.unwrap_or(&self.shards[self.shards.len() - 1]).path
    }

    /// Seals the last shard, writes the index and renames every file into place. If a rename
    /// fails, the files already renamed are removed again, so the output appears whole or not
    /// at all.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        let target = self.shards[0].path.clone();
        if self.broken {
            return Err(Error::invalid(target, "cannot finish: an earlier write failed"));
        }
        if let Some(missing) = self.plan.get(self.next) {
            return Err(Error::invalid(
                target,
                format!(
                    "cannot finish: {} of {} tensors written, '{}' is next",
                    self.next,
                    self.plan.len(),
                    missing.name
                ),
            ));
        }
        let (_, file) = self.open.take().expect("the last shard is open until finish");
        self.sealed.push(file.seal()?);
        if let Some((path, bytes)) = self.index.take() {
            let mut file = AtomicFile::create(&path)?;
            file.write_all(&bytes).map_err(|e| Error::io(&path, e))?;
            self.sealed.push(file.seal()?);
        }
        let mut done = Vec::with_capacity(self.sealed.len());
        for file in std::mem::take(&mut self.sealed) {
            match file.commit() {
                Ok(path) => done.push(path),
                Err(e) => {
                    for path in &done {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }
}

impl TensorSink for SafetensorsWriter {
    fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::invalid(
                self.next_path(),
                format!("cannot write tensor '{name}': an earlier write failed"),
            ));
        }
        // A refused tensor (wrong name or size) leaves the output as it was and may be retried;
        // a failure after that may have left partial bytes, so the writer refuses to go on.
        check_next(&self.plan, self.next, name, data.len(), self.next_path())?;
        let result = self.write_checked(data);
        self.broken = result.is_err();
        result
    }

    fn finish(self: Box<Self>) -> Result<Vec<PathBuf>> {
        SafetensorsWriter::finish(*self)
    }
}

/// Checks what the header must be able to say: safetensors dtypes, byte counts that match
/// dtype × shape, unique names. Returns the total tensor bytes.
fn check_plan(target: &Path, plan: &[PlannedTensor]) -> Result<u64> {
    let refuse = |t: &PlannedTensor, msg: String| -> Error {
        SafetensorsError::Plan { path: target.into(), tensor: t.name.clone(), msg }.into()
    };
    let mut names = HashSet::with_capacity(plan.len());
    let mut total = 0u64;
    for t in plan {
        if t.name == METADATA_KEY {
            return Err(refuse(t, format!("'{METADATA_KEY}' is reserved for the metadata")));
        }
        if !names.insert(t.name.as_str()) {
            return Err(refuse(t, "planned twice".into()));
        }
        let TensorDType::St(dtype) = t.dtype else {
            return Err(refuse(t, format!("{} is not a safetensors dtype", t.dtype)));
        };
        let expected = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|numel| dtype.byte_len(numel));
        if expected != Some(t.nbytes) {
            return Err(refuse(
                t,
                format!("{dtype} {:?} does not take {} bytes", t.shape, t.nbytes),
            ));
        }
        total =
            total.checked_add(t.nbytes).ok_or_else(|| refuse(t, "total size overflows".into()))?;
    }
    Ok(total)
}

/// Groups the plan into shards in order: a shard takes tensors while its bytes stay within
/// `max`; a tensor that alone exceeds `max` fills a shard by itself. Zero-size tensors never
/// start a shard, since they cannot push one over the limit.
fn split(plan: &[PlannedTensor], max: u64) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, t) in plan.iter().enumerate() {
        if bytes > 0 && t.nbytes > 0 && bytes + t.nbytes > max {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += t.nbytes;
    }
    groups.push(start..plan.len());
    groups
}

fn split_target(target: &Path) -> Result<(PathBuf, String)> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(target, "output path has no UTF-8 file name"))?;
    Ok((dir, name.to_owned()))
}

/// The length prefix and JSON header for `tensors` laid out back to back.
fn header_bytes(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[PlannedTensor],
) -> Result<Vec<u8>> {
    let mut top = Map::new();
    if !metadata.is_empty() {
        let meta = metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        top.insert(METADATA_KEY.into(), Value::Object(meta));
    }
    let mut offset = 0u64;
    for t in tensors {
        let mut entry = Map::new();
        entry.insert("dtype".into(), t.dtype.name().into());
        entry.insert("shape".into(), t.shape.clone().into());
        entry.insert("data_offsets".into(), vec![offset, offset + t.nbytes].into());
        top.insert(t.name.clone(), Value::Object(entry));
        offset += t.nbytes;
    }
    let json = serde_json::to_vec(&Value::Object(top)).expect("JSON values serialize");
    let padded = json.len().next_multiple_of(LEN_PREFIX as usize);
    if padded as u64 > MAX_HEADER_LEN {
        return Err(Error::invalid(
            path,
            format!("header would be {padded} bytes, over the {MAX_HEADER_LEN}-byte limit readers accept"),
        ));
    }
    let mut out = Vec::with_capacity(LEN_PREFIX as usize + padded);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(LEN_PREFIX as usize + padded, b' ');
    Ok(out)
}

/// The plan that copies every tensor of `source` unchanged (safetensors dtypes only).
pub fn plan_from_source(source: &dyn TensorSource) -> Result<Vec<PlannedTensor>> {
    source
        .tensors()
        .iter()
        .map(|t| match t.dtype {
            TensorDType::St(_) => Ok(PlannedTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                nbytes: t.nbytes,
            }),
            TensorDType::Ggml(g) => Err(SafetensorsError::Plan {
                path: source.files()[t.file].clone(),
                tensor: t.name.clone(),
                msg: format!("GGML type {g} has no safetensors dtype"),
            }
            .into()),
        })
        .collect()
}

/// A source's metadata as safetensors `__metadata__` strings: strings stay as they are, other
/// JSON values (GGUF numbers, arrays) are written as their JSON text.
pub fn string_metadata(source: &dyn TensorSource) -> BTreeMap<String, String> {
    source
        .metadata()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// Copies every tensor of `source` unchanged into a new safetensors output (metadata kept).
/// Refuses, before anything is renamed into place, an output file (shard or index) that is one
/// of the source's files.
pub fn rewrite(
    source: &dyn TensorSource,
    target: &Path,
    max_shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    let plan = plan_from_source(source)?;
    let metadata = string_metadata(source);
    let mut writer = SafetensorsWriter::create(target, plan, metadata, max_shard_size)?;
    for output in writer.outputs() {
        ensure_not_input(&output, source.files())?;
    }
    for t in source.tensors() {
        writer.write(&t.name, source.data(t))?;
    }
    writer.finish()
}
