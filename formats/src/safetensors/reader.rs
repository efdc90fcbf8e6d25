//! Mapped safetensors files seen as one checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::header;
use super::SafetensorsError;
use crate::error::{Error, Result};
use crate::mmap::MappedFile;
use crate::tensor::{ContainerFormat, TensorDType, TensorIndex, TensorInfo, TensorSource};

/// One or more mapped safetensors files seen as one checkpoint: a single file, the shards of an
/// index, or a list of shards. Tensors borrow the mappings; nothing is read until asked for.
#[derive(Debug)]
pub struct SafetensorsSource {
    pub(super) files: Vec<PathBuf>,
    pub(super) maps: Vec<MappedFile>,
    pub(super) index: TensorIndex,
    pub(super) metadata: Map<String, Value>,
    /// The `metadata` object of `model.safetensors.index.json`, when opened through one.
    pub(super) index_metadata: Option<Map<String, Value>>,
}

impl SafetensorsSource {
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_files(&[path.to_path_buf()])
    }

    /// Opens shards as one checkpoint: tensors of the first file (in data order), then the
    /// second, and so on. A tensor name in two files is an error naming both, because a loader
    /// would silently pick one of them.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let Some(first) = paths.first() else {
            return Err(Error::invalid(".", "no safetensors files to open"));
        };
        let mut maps = Vec::with_capacity(paths.len());
        let mut tensors = Vec::new();
        let mut metadata = Map::new();
        let mut owner: HashMap<String, usize> = HashMap::new();
        for (file, path) in paths.iter().enumerate() {
            let map = MappedFile::open(path)?;
            let parsed = header::parse(path, map.bytes())?;
            let data_start = parsed.data_start();
            for t in parsed.tensors {
                if let Some(&earlier) = owner.get(&t.name) {
                    return Err(SafetensorsError::DuplicateTensor {
                        tensor: t.name,
                        first: paths[earlier].clone(),
                        second: path.clone(),
                    }
                    .into());
                }
                owner.insert(t.name.clone(), file);
                tensors.push(TensorInfo {
                    name: t.name,
                    dtype: TensorDType::St(t.dtype),
                    shape: t.shape,
                    file,
                    offset: data_start + t.begin,
                    nbytes: t.end - t.begin,
                });
            }
            // The first file that sets a key wins: shards of one checkpoint normally repeat
            // the same metadata, and the first shard is the one a reader looks at.
            for (key, value) in parsed.metadata {
                metadata.entry(key).or_insert(value);
            }
            maps.push(map);
        }
        drop(owner);
        let index =
            TensorIndex::new(tensors).map_err(|name| SafetensorsError::DuplicateTensor {
                tensor: name,
                first: first.clone(),
                second: first.clone(),
            })?;
        Ok(SafetensorsSource { files: paths.to_vec(), maps, index, metadata, index_metadata: None })
    }

    /// The `metadata` object of the index file (`total_size`, ...), when the source was opened
    /// through one.
    pub fn index_metadata(&self) -> Option<&Map<String, Value>> {
        self.index_metadata.as_ref()
    }
}

impl TensorSource for SafetensorsSource {
    fn format(&self) -> ContainerFormat {
        ContainerFormat::Safetensors
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn tensors(&self) -> &[TensorInfo] {
        self.index.tensors()
    }

    /// # Panics
    /// When `info` did not come from this source (its file or range is not one this source
    /// validated): that is a bug in the caller, not bad input.
    fn data(&self, info: &TensorInfo) -> &[u8] {
        let range = usize::try_from(info.offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::try_from(info.nbytes).ok()?)?));
        self.maps
            .get(info.file)
            .zip(range)
            .and_then(|(map, range)| map.bytes().get(range))
            .unwrap_or_else(|| panic!("tensor '{}' does not belong to this source", info.name))
    }

    fn release(&self, info: &TensorInfo) {
        if let Some(map) = self.maps.get(info.file) {
            map.release(info.offset, info.nbytes);
        }
    }

    fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.index.find(name)
    }

    fn metadata(&self) -> Map<String, Value> {
        self.metadata.clone()
    }
}
