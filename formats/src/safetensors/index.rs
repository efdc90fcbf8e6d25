//! `model.safetensors.index.json`: `{"metadata": {...}, "weight_map": {tensor: shard file}}`,
//! the file Hugging Face writes beside sharded checkpoints.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::reader::SafetensorsSource;
use super::SafetensorsError;
use crate::error::{Error, Result};
use crate::tensor::TensorSource;

impl SafetensorsSource {
    /// Opens the shards an index names.
    ///
    /// Shards are opened once each, in order of their file names (Hugging Face's
    /// `-00001-of-0000N` names sort in shard order), so tensor order is: shard by shard, by
    /// data offset within a shard. Every tensor of the weight map must be in the shard it is
    /// mapped to. Tensors a shard holds but the weight map omits are kept: they are in the
    /// files, and hiding them would make `inspect` and conversions silently drop data
    /// (Hugging Face loaders ignore them).
    pub fn open_index(index_json: &Path) -> Result<Self> {
        let text = fs::read(index_json).map_err(|e| Error::io(index_json, e))?;
        let (weight_map, index_metadata) = parse_index(index_json, &text)?;
        let dir = match index_json.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };

        // Shard name -> the first tensor mapped to it, for error messages.
        let mut shards: BTreeMap<&str, &str> = BTreeMap::new();
        for (tensor, shard) in &weight_map {
            check_shard_name(index_json, tensor, shard)?;
            shards.entry(shard.as_str()).or_insert(tensor.as_str());
        }
        let mut paths = Vec::with_capacity(shards.len());
        for (shard, tensor) in &shards {
            let path = dir.join(shard);
            match fs::metadata(&path) {
                Ok(_) => paths.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SafetensorsError::ShardMissing {
                        index: index_json.into(),
                        shard: path,
                        tensor: (*tensor).to_owned(),
                    }
                    .into())
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }

        let mut source = SafetensorsSource::open_files(&paths)?;
        for (tensor, shard) in &weight_map {
            let listed = dir.join(shard);
            match source.find(tensor) {
                None => {
                    return Err(SafetensorsError::TensorNotInShard {
                        index: index_json.into(),
                        tensor: tensor.clone(),
                        shard: listed,
                    }
                    .into())
                }
                Some(info) if source.files()[info.file] != listed => {
                    return Err(SafetensorsError::TensorInOtherShard {
                        index: index_json.into(),
                        tensor: tensor.clone(),
                        listed,
                        actual: source.files()[info.file].clone(),
                    }
                    .into())
                }
                Some(_) => {}
            }
        }
        source.index_metadata = Some(index_metadata);
        Ok(source)
    }
}

/// Returns the weight map (sorted by tensor name) and the `metadata` object.
pub(crate) fn parse_index(
    path: &Path,
    text: &[u8],
) -> Result<(BTreeMap<String, String>, Map<String, Value>)> {
    let invalid = |msg: String| SafetensorsError::IndexInvalid { path: path.into(), msg };
    let value: Value = serde_json::from_slice(text)
        .map_err(|source| SafetensorsError::IndexNotJson { path: path.into(), source })?;
    let Value::Object(mut top) = value else {
        return Err(invalid("index is not a JSON object".into()).into());
    };
    let metadata = match top.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("'metadata' is not an object".into()).into()),
    };
    let Some(map) = top.remove("weight_map") else {
        return Err(invalid("index has no 'weight_map'".into()).into());
    };
    let Value::Object(map) = map else {
        return Err(invalid("'weight_map' is not an object".into()).into());
    };
    if map.is_empty() {
        return Err(invalid("'weight_map' is empty".into()).into());
    }
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let Value::String(shard) = shard else {
            return Err(invalid(format!(
                "weight_map entry for tensor '{tensor}' is not a file name"
            ))
            .into());
        };
        weight_map.insert(tensor, shard);
    }
    Ok((weight_map, metadata))
}

/// Shards must live in (or below) the index's directory: an index is data, and data should not
/// be able to point the reader at arbitrary files.
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<()> {
    let p = Path::new(shard);
    let inside = !shard.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(SafetensorsError::IndexInvalid {
            path: index.into(),
            msg: format!("weight_map entry for tensor '{tensor}' names shard '{shard}', which is not a file in the index's directory"),
        }
        .into());
    }
    Ok(())
}

/// The index Hugging Face writes for sharded checkpoints: `total_size` (tensor bytes) and the
/// weight map, pretty-printed with sorted keys and a final newline like `save_pretrained`.
pub(crate) fn index_json(total_size: u64, weight_map: &BTreeMap<&str, String>) -> Vec<u8> {
    let mut metadata = Map::new();
    metadata.insert("total_size".into(), total_size.into());
    let mut map = Map::new();
    for (tensor, shard) in weight_map {
        map.insert((*tensor).to_owned(), Value::String(shard.clone()));
    }
    let mut top = Map::new();
    top.insert("metadata".into(), Value::Object(metadata));
    top.insert("weight_map".into(), Value::Object(map));
    let mut out = serde_json::to_vec_pretty(&Value::Object(top)).expect("JSON values serialize");
    out.push(b'\n');
    out
}
