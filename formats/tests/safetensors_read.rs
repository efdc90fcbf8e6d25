//! Reading well-formed files written by hand: order, offsets, metadata, zero-copy views, and
//! multi-file sources.

use std::fs;
use std::path::{Path, PathBuf};

use qtool_formats::safetensors::{SafetensorsError, SafetensorsSource};
use qtool_formats::{DType, Error, TensorDType, TensorSource};

fn file(path: &Path, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

#[test]
fn tensors_come_in_data_order_with_absolute_offsets() {
    let dir = tempfile::tempdir().unwrap();
    // Header order (c, a, e, s, b) differs from data order (s, e, a, b, c); `e` is zero-size
    // and `s` is 0-d.
    let header = r#"{"c": {"dtype": "U8", "shape": [2], "data_offsets": [14, 16]},
        "__metadata__": {"format": "pt", "note": "ünïcode"},
        "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [4, 12]},
        "e": {"dtype": "F32", "shape": [3, 0], "data_offsets": [4, 4]},
        "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        "b": {"dtype": "F4", "shape": [4], "data_offsets": [12, 14]}}"#;
    let data: Vec<u8> = (0u8..16).collect();
    let path = file(&dir.path().join("m.safetensors"), header, &data);
    let src = SafetensorsSource::open_file(&path).unwrap();

    let names: Vec<_> = src.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["s", "e", "a", "b", "c"]);
    let start = 8 + header.len() as u64;
    let a = src.find("a").unwrap();
    assert_eq!(a.dtype, TensorDType::St(DType::BF16));
    assert_eq!(a.shape, [2, 2]);
    assert_eq!((a.file, a.offset, a.nbytes), (0, start + 4, 8));
    assert_eq!(src.data(a), &data[4..12]);
    assert_eq!(src.get("s").unwrap().data, &data[0..4]);
    assert_eq!(src.find("s").unwrap().shape, Vec::<u64>::new());
    assert_eq!(src.get("e").unwrap().data, &[] as &[u8]);
    assert_eq!(src.get("b").unwrap().data, &[12, 13]);
    assert!(src.get("missing").is_none());

    let meta = src.metadata();
    assert_eq!(meta.len(), 2);
    assert_eq!(meta["note"], "ünïcode");
    assert_eq!(src.files(), [path]);
}

#[test]
fn data_is_a_view_of_the_mapping_not_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}"#;
    let path = file(&dir.path().join("m.safetensors"), header, &[7; 8]);
    let src = SafetensorsSource::open_file(&path).unwrap();
    let first = src.get("a").unwrap().data.as_ptr();
    let second = src.get("a").unwrap().data.as_ptr();
    assert_eq!(first, second, "each call must return the same mapped bytes");
}

#[test]
fn empty_header_object_is_an_empty_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir.path().join("m.safetensors"), "{}      ", &[]);
    let src = SafetensorsSource::open_file(&path).unwrap();
    assert!(src.tensors().is_empty());
    assert!(src.metadata().is_empty());
}

#[test]
fn null_metadata_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir.path().join("m.safetensors"), r#"{"__metadata__": null}"#, &[]);
    assert!(SafetensorsSource::open_file(&path).unwrap().metadata().is_empty());
}

#[test]
fn open_files_concatenates_in_file_order_and_first_metadata_wins() {
    let dir = tempfile::tempdir().unwrap();
    let one = file(
        &dir.path().join("b.safetensors"),
        r#"{"__metadata__": {"format": "pt", "who": "first"},
            "x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}"#,
        &[1, 2],
    );
    let two = file(
        &dir.path().join("a.safetensors"),
        r#"{"__metadata__": {"who": "second", "extra": "yes"},
            "y": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#,
        &[3],
    );
    let src = SafetensorsSource::open_files(&[one.clone(), two.clone()]).unwrap();
    let names: Vec<_> = src.tensors().iter().map(|t| (t.name.as_str(), t.file)).collect();
    assert_eq!(names, [("x", 0), ("y", 1)]);
    assert_eq!(src.get("y").unwrap().data, &[3]);
    let meta = src.metadata();
    assert_eq!(meta["who"], "first");
    assert_eq!(meta["extra"], "yes");
    assert_eq!(meta["format"], "pt");
    assert_eq!(src.files(), [one, two]);
}

#[test]
fn open_files_duplicate_tensor_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#;
    let one = file(&dir.path().join("one.safetensors"), header, &[1]);
    let two = file(&dir.path().join("two.safetensors"), header, &[2]);
    let err = SafetensorsSource::open_files(&[one.clone(), two.clone()]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("'w'")
            && msg.contains(&one.display().to_string())
            && msg.contains(&two.display().to_string()),
        "{msg}"
    );
    assert!(matches!(err, Error::Safetensors(SafetensorsError::DuplicateTensor { .. })));
}

#[test]
fn open_files_with_no_files_is_an_error() {
    assert!(SafetensorsSource::open_files(&[]).is_err());
}

#[test]
fn bad_shard_in_list_names_that_shard() {
    let dir = tempfile::tempdir().unwrap();
    let good = file(
        &dir.path().join("good.safetensors"),
        r#"{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#,
        &[1],
    );
    let bad = dir.path().join("bad.safetensors");
    fs::write(&bad, [3u8, 0]).unwrap();
    let msg = SafetensorsSource::open_files(&[good, bad.clone()]).unwrap_err().to_string();
    assert!(msg.contains(&bad.display().to_string()) && msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.safetensors");
    let err = SafetensorsSource::open_file(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn directory_without_index_opens_sorted_shards() {
    let dir = tempfile::tempdir().unwrap();
    file(
        &dir.path().join("z.safetensors"),
        r#"{"z": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#,
        &[9],
    );
    file(
        &dir.path().join("a.safetensors"),
        r#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#,
        &[8],
    );
    let ckpt = qtool_formats::open(dir.path()).unwrap();
    let names: Vec<_> = ckpt.source().tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["a", "z"]);
}

#[test]
fn reads_a_file_written_by_the_reference_crate() {
    use safetensors::tensor::{Dtype, TensorView};
    let bf16: Vec<u8> = (0u8..12).collect();
    let f8 = vec![0x7f, 0x80, 0x01];
    let empty: Vec<u8> = Vec::new();
    let tensors = vec![
        ("w.bf16", TensorView::new(Dtype::BF16, vec![2, 3], &bf16).unwrap()),
        ("w.f8", TensorView::new(Dtype::F8_E4M3, vec![3], &f8).unwrap()),
        ("w.empty", TensorView::new(Dtype::F32, vec![0, 4], &empty).unwrap()),
    ];
    let metadata =
        Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref.safetensors");
    safetensors::serialize_to_file(tensors, metadata, &path).unwrap();

    let src = SafetensorsSource::open_file(&path).unwrap();
    assert_eq!(src.tensors().len(), 3);
    assert_eq!(src.get("w.bf16").unwrap().data, &bf16[..]);
    assert_eq!(src.find("w.bf16").unwrap().dtype, TensorDType::St(DType::BF16));
    assert_eq!(src.get("w.f8").unwrap().data, &f8[..]);
    assert_eq!(src.find("w.f8").unwrap().dtype, TensorDType::St(DType::F8E4M3));
    assert_eq!(src.find("w.empty").unwrap().shape, [0, 4]);
    assert_eq!(src.metadata()["format"], "pt");
    let offsets: Vec<u64> = src.tensors().iter().map(|t| t.offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "not in data order: {offsets:?}");
}
