//! `model.safetensors.index.json`: reading a sharded checkpoint, and one test per way an index
//! and its shards can disagree.

use std::fs;
use std::path::{Path, PathBuf};

use qtool_formats::safetensors::{SafetensorsError, SafetensorsSource};
use qtool_formats::{Error, TensorSource};

/// A shard holding one `U8 [n]` tensor per `(name, n)`, filled with `fill`.
fn shard(dir: &Path, file: &str, tensors: &[(&str, u64)], fill: u8) -> PathBuf {
    let mut entries = Vec::new();
    let mut offset = 0;
    for (name, n) in tensors {
        entries.push(format!(
            r#""{name}": {{"dtype": "U8", "shape": [{n}], "data_offsets": [{offset}, {}]}}"#,
            offset + n
        ));
        offset += n;
    }
    let header = format!(r#"{{"__metadata__": {{"format": "pt"}}, {}}}"#, entries.join(", "));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + offset as usize, fill);
    let path = dir.join(file);
    fs::write(&path, bytes).unwrap();
    path
}

fn index(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("model.safetensors.index.json");
    fs::write(&path, json).unwrap();
    path
}

fn refused(index: &Path, mentions: &[&str]) -> SafetensorsError {
    let err = match SafetensorsSource::open_index(index) {
        Ok(src) => panic!("accepted: {src:?}"),
        Err(Error::Safetensors(e)) => e,
        Err(other) => panic!("expected a safetensors error, got {other:?}"),
    };
    let msg = err.to_string();
    for m in mentions {
        assert!(msg.contains(m), "message does not mention {m:?}: {msg}");
    }
    err
}

#[test]
fn index_opens_shards_in_name_order_and_keeps_unmapped_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let two = shard(dir.path(), "model-00002-of-00002.safetensors", &[("c", 2), ("d", 1)], 2);
    let one = shard(dir.path(), "model-00001-of-00002.safetensors", &[("a", 3), ("b", 4)], 1);
    // `d` is in shard 2 but not in the weight map; it is still part of the checkpoint.
    let idx = index(
        dir.path(),
        r#"{"metadata": {"total_size": 9},
            "weight_map": {"c": "model-00002-of-00002.safetensors",
                           "a": "model-00001-of-00002.safetensors",
                           "b": "model-00001-of-00002.safetensors"}}"#,
    );
    let src = SafetensorsSource::open_index(&idx).unwrap();
    assert_eq!(src.files(), [one, two]);
    let names: Vec<_> = src.tensors().iter().map(|t| (t.name.as_str(), t.file)).collect();
    assert_eq!(names, [("a", 0), ("b", 0), ("c", 1), ("d", 1)]);
    assert_eq!(src.get("c").unwrap().data, &[2, 2]);
    assert_eq!(src.get("b").unwrap().data, &[1; 4]);
    assert_eq!(src.index_metadata().unwrap()["total_size"], 9);
    assert_eq!(src.metadata()["format"], "pt");

    let via_dir = qtool_formats::open(dir.path()).unwrap();
    assert_eq!(via_dir.source().tensors(), src.tensors());
}

#[test]
fn index_names_a_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    shard(dir.path(), "one.safetensors", &[("a", 1)], 0);
    let idx =
        index(dir.path(), r#"{"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}"#);
    let shard_path = dir.path().join("two.safetensors").display().to_string();
    let err = refused(&idx, &[&shard_path, "'b'", "does not exist"]);
    assert!(matches!(err, SafetensorsError::ShardMissing { .. }));
}

#[test]
fn index_tensor_missing_from_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let one = shard(dir.path(), "one.safetensors", &[("a", 1)], 0);
    let idx = index(
        dir.path(),
        r#"{"weight_map": {"a": "one.safetensors", "ghost": "one.safetensors"}}"#,
    );
    let err = refused(&idx, &["'ghost'", &one.display().to_string(), &idx.display().to_string()]);
    assert!(matches!(err, SafetensorsError::TensorNotInShard { .. }));
}

#[test]
fn index_tensor_in_a_different_shard_than_listed() {
    let dir = tempfile::tempdir().unwrap();
    let one = shard(dir.path(), "one.safetensors", &[("a", 1)], 0);
    let two = shard(dir.path(), "two.safetensors", &[("b", 1)], 0);
    let idx =
        index(dir.path(), r#"{"weight_map": {"a": "two.safetensors", "b": "two.safetensors"}}"#);
    // Only `two` is named, so `a` is simply not found there.
    let err = refused(&idx, &["'a'", &two.display().to_string()]);
    assert!(matches!(err, SafetensorsError::TensorNotInShard { .. }));

    let idx =
        index(dir.path(), r#"{"weight_map": {"a": "two.safetensors", "b": "one.safetensors"}}"#);
    let err = refused(&idx, &["'a'", &one.display().to_string(), &two.display().to_string()]);
    assert!(matches!(err, SafetensorsError::TensorInOtherShard { .. }));
}

#[test]
fn index_duplicate_tensor_across_shards_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let one = shard(dir.path(), "one.safetensors", &[("a", 1), ("w", 2)], 0);
    let two = shard(dir.path(), "two.safetensors", &[("w", 2)], 0);
    let idx =
        index(dir.path(), r#"{"weight_map": {"a": "one.safetensors", "w": "two.safetensors"}}"#);
    let err = refused(&idx, &["'w'", &one.display().to_string(), &two.display().to_string()]);
    assert!(matches!(err, SafetensorsError::DuplicateTensor { .. }));
}

#[test]
fn index_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), "{\"weight_map\": ");
    let err = refused(&idx, &[&idx.display().to_string(), "not valid JSON"]);
    assert!(matches!(err, SafetensorsError::IndexNotJson { .. }));
}

#[test]
fn index_without_weight_map() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), r#"{"metadata": {"total_size": 0}}"#);
    let err = refused(&idx, &[&idx.display().to_string(), "no 'weight_map'"]);
    assert!(matches!(err, SafetensorsError::IndexInvalid { .. }));
}

#[test]
fn index_with_empty_weight_map() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), r#"{"weight_map": {}}"#);
    assert!(matches!(refused(&idx, &["empty"]), SafetensorsError::IndexInvalid { .. }));
}

#[test]
fn index_weight_map_value_not_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), r#"{"weight_map": {"a": 3}}"#);
    assert!(matches!(refused(&idx, &["'a'"]), SafetensorsError::IndexInvalid { .. }));
}

#[test]
fn index_shard_outside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), r#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#);
    let err = refused(&idx, &["'a'", "../elsewhere.safetensors"]);
    assert!(matches!(err, SafetensorsError::IndexInvalid { .. }));
    let idx = index(dir.path(), r#"{"weight_map": {"a": "/etc/passwd"}}"#);
    assert!(matches!(refused(&idx, &["/etc/passwd"]), SafetensorsError::IndexInvalid { .. }));
}

#[test]
fn index_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path(), "[]");
    assert!(matches!(refused(&idx, &["not a JSON object"]), SafetensorsError::IndexInvalid { .. }));
}
