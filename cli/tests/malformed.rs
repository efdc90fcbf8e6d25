//! One named test per malformed input: `qtool inspect` exits 2 with exactly one `error:` line
//! that names the file (and the tensor or key where the case has one), and never panics or
//! allocates what a lying count asks for.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{assert_inspect_fails, safetensors_bytes, GgufBuilder};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn st(name: &str, header: &str, data: &[u8]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, &safetensors_bytes(header, data));
    (dir, path)
}

fn gguf(name: &str, b: &GgufBuilder) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, &b.bytes);
    (dir, path)
}

// ---- not a checkpoint at all ----

#[test]
fn missing_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_inspect_fails(&dir.path().join("no-such-model.safetensors"), &[]);
}

#[test]
fn non_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "notes.txt", b"just some text\n");
    assert_inspect_fails(&path, &[]);
}

#[test]
fn empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("empty-model");
    fs::create_dir(&sub).unwrap();
    assert_inspect_fails(&sub, &[]);
}

// ---- safetensors ----

#[test]
fn safetensors_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "truncated.safetensors", &[1, 2, 3, 4, 5]);
    assert_inspect_fails(&path, &["truncated"]);
}

#[test]
fn safetensors_header_length_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    let path = write(&dir, "long-header.safetensors", &bytes);
    assert_inspect_fails(&path, &["1000"]);
}

#[test]
fn safetensors_header_length_absurd() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    let path = write(&dir, "absurd-header.safetensors", &bytes);
    assert_inspect_fails(&path, &[]);
}

#[test]
fn safetensors_header_not_json() {
    let (_d, path) = st("not-json.safetensors", "{\"a\": not json}", b"");
    assert_inspect_fails(&path, &["JSON"]);
}

#[test]
fn safetensors_header_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let header: &[u8] = b"{\"\xff\xfe\": {}}  ";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    let path = write(&dir, "not-utf8.safetensors", &bytes);
    assert_inspect_fails(&path, &["UTF-8"]);
}

#[test]
fn safetensors_overlapping_offsets() {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let (_d, path) = st("overlap.safetensors", header, &[0u8; 12]);
    assert_inspect_fails(&path, &["'b'", "overlap"]);
}

#[test]
fn safetensors_reversed_offsets() {
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
    let (_d, path) = st("reversed.safetensors", header, &[0u8; 8]);
    assert_inspect_fails(&path, &["'w'"]);
}

#[test]
fn safetensors_out_of_order_header_entries_are_fine() {
    // Entries listed in the header out of data order are valid (the reference sorts by
    // offset); only their byte ranges matter.
    let header = r#"{"late":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"early":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let (_d, path) = st("out-of-order.safetensors", header, &[0u8; 8]);
    let out = common::run(&["inspect", path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["tensors"], 2);
}

#[test]
fn safetensors_out_of_range_offsets() {
    let header = r#"{"w":{"dtype":"F32","shape":[25],"data_offsets":[0,100]}}"#;
    let (_d, path) = st("out-of-range.safetensors", header, &[0u8; 8]);
    assert_inspect_fails(&path, &["'w'"]);
}

#[test]
fn safetensors_gap_between_tensors() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let (_d, path) = st("gap.safetensors", header, &[0u8; 12]);
    assert_inspect_fails(&path, &["'b'"]);
}

#[test]
fn safetensors_byte_length_mismatch() {
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let (_d, path) = st("length.safetensors", header, &[0u8; 8]);
    assert_inspect_fails(&path, &["'w'", "12", "8"]);
}

#[test]
fn safetensors_unknown_dtype() {
    let header = r#"{"w":{"dtype":"F13","shape":[2],"data_offsets":[0,8]}}"#;
    let (_d, path) = st("dtype.safetensors", header, &[0u8; 8]);
    assert_inspect_fails(&path, &["'w'", "F13"]);
}

#[test]
fn safetensors_shape_overflow() {
    let header = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#;
    let (_d, path) = st("overflow.safetensors", header, &[0u8; 8]);
    assert_inspect_fails(&path, &["'w'"]);
}

#[test]
fn index_names_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken-sharded");
    fs::create_dir(&model).unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    fs::write(model.join("model-00001-of-00002.safetensors"), safetensors_bytes(header, &[0; 4]))
        .unwrap();
    fs::write(
        model.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let line = assert_inspect_fails(&model, &["model-00002-of-00002.safetensors", "'b'"]);
    assert!(line.contains("model.safetensors.index.json"), "{line}");
}

#[test]
fn index_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bad-index");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("model.safetensors.index.json"), "{ weight_map: nope").unwrap();
    assert_inspect_fails(&model, &["model.safetensors.index.json"]);
}

#[test]
fn config_json_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bad-config");
    fs::create_dir(&model).unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    fs::write(model.join("model.safetensors"), safetensors_bytes(header, &[0; 4])).unwrap();
    fs::write(model.join("config.json"), "{\"hidden_size\": ").unwrap();
    assert_inspect_fails(&model, &["config.json"]);
}

// ---- GGUF ----

#[test]
fn gguf_wrong_magic() {
    let (_d, path) = gguf("magic.gguf", &GgufBuilder::header(b"GGUX", 3, 0, 0));
    assert_inspect_fails(&path, &["magic"]);
}

#[test]
fn gguf_unsupported_version() {
    let (_d, path) = gguf("v4.gguf", &GgufBuilder::header(b"GGUF", 4, 0, 0));
    assert_inspect_fails(&path, &["version 4"]);
    let (_d, path) = gguf("v1.gguf", &GgufBuilder::header(b"GGUF", 1, 0, 0));
    assert_inspect_fails(&path, &["version 1"]);
}

#[test]
fn gguf_absurd_tensor_count() {
    let (_d, path) = gguf("tensors.gguf", &GgufBuilder::header(b"GGUF", 3, 1 << 60, 0));
    assert_inspect_fails(&path, &[&(1u64 << 60).to_string()]);
}

#[test]
fn gguf_absurd_kv_count() {
    let (_d, path) = gguf("kvs.gguf", &GgufBuilder::header(b"GGUF", 3, 0, 1 << 60));
    assert_inspect_fails(&path, &[&(1u64 << 60).to_string()]);
}

#[test]
fn gguf_string_length_past_eof() {
    // A key that claims 1000 bytes with 64 left: the KV count itself is plausible.
    let mut b = GgufBuilder::header(b"GGUF", 3, 0, 1);
    b.u64(1000);
    b.bytes.extend_from_slice(&[b'k'; 64]);
    let (_d, path) = gguf("string.gguf", &b);
    let line = assert_inspect_fails(&path, &["1000"]);
    assert!(line.contains("truncated") || line.contains("past"), "{line}");
}

#[test]
fn gguf_value_string_length_past_eof() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 0, 1);
    b.string("general.name").u32(8).u64(5000);
    b.bytes.extend_from_slice(&[b'x'; 64]);
    let (_d, path) = gguf("value-string.gguf", &b);
    assert_inspect_fails(&path, &["general.name", "5000"]);
}

#[test]
fn gguf_value_string_length_absurd() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 0, 1);
    b.string("general.name").u32(8).u64(1 << 62);
    let (_d, path) = gguf("value-string-absurd.gguf", &b);
    assert_inspect_fails(&path, &["general.name"]);
}

#[test]
fn gguf_dims_overflow_u64() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 1, 0);
    b.tensor("big.weight", &[1 << 40, 1 << 40], 0, 0).data(64);
    let (_d, path) = gguf("dims.gguf", &b);
    assert_inspect_fails(&path, &["'big.weight'"]);
}

#[test]
fn gguf_misaligned_offset() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 1, 0);
    b.tensor("w", &[4], 0, 1).data(64);
    let (_d, path) = gguf("misaligned.gguf", &b);
    assert_inspect_fails(&path, &["'w'", "alignment"]);
}

#[test]
fn gguf_duplicate_tensor_names() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 2, 0);
    b.tensor("w", &[4], 0, 0).tensor("w", &[4], 0, 32).data(64);
    let (_d, path) = gguf("duplicate.gguf", &b);
    assert_inspect_fails(&path, &["'w'"]);
}

#[test]
fn gguf_tensor_data_past_eof() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 1, 0);
    b.tensor("w", &[1024], 0, 0).data(16);
    let (_d, path) = gguf("short-data.gguf", &b);
    assert_inspect_fails(&path, &["'w'"]);
}

#[test]
fn gguf_unknown_ggml_type() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 1, 0);
    b.tensor("w", &[4], 999, 0).data(64);
    let (_d, path) = gguf("type.gguf", &b);
    assert_inspect_fails(&path, &["'w'", "999"]);
}

#[test]
fn gguf_truncated_header() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 0, 0);
    b.bytes.truncate(10);
    let (_d, path) = gguf("cut.gguf", &b);
    assert_inspect_fails(&path, &[]);
}

#[test]
fn gguf_duplicate_keys() {
    let mut b = GgufBuilder::header(b"GGUF", 3, 0, 2);
    b.kv_u32("general.file_type", 7).kv_u32("general.file_type", 7);
    let (_d, path) = gguf("dup-key.gguf", &b);
    assert_inspect_fails(&path, &["general.file_type"]);
}
