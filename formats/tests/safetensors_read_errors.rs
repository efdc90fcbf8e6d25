//! One test per malformed single-file case: each must be refused with an error that names the
//! file (and the tensor or key where there is one), never a panic. The `safetensors` crate is
//! the referee: every file refused here must be refused there too, so qtool is never stricter
//! or looser than the reference without saying so.

use std::fs;
use std::path::{Path, PathBuf};

use qtool_formats::safetensors::{SafetensorsError, SafetensorsSource};
use qtool_formats::Error;

/// A file made of the length prefix `len`, the header text and `data_len` zero bytes.
fn raw_file(dir: &Path, len: u64, header: &[u8], data_len: usize) -> PathBuf {
    let path = dir.join("bad.safetensors");
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.resize(bytes.len() + data_len, 0);
    fs::write(&path, bytes).unwrap();
    path
}

/// A well-formed length prefix around `header`.
fn file(dir: &Path, header: &str, data_len: usize) -> PathBuf {
    raw_file(dir, header.len() as u64, header.as_bytes(), data_len)
}

/// Opens `path`, expects a safetensors error; checks the message names the file and every one
/// of `mentions`, and that the reference crate refuses the file too.
fn refused(path: &Path, mentions: &[&str]) -> SafetensorsError {
    let err = match SafetensorsSource::open_file(path) {
        Ok(src) => panic!("{} was accepted: {src:?}", path.display()),
        Err(Error::Safetensors(e)) => e,
        Err(other) => panic!("expected a safetensors error, got {other:?}"),
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    for m in mentions {
        assert!(msg.contains(m), "message does not mention {m:?}: {msg}");
    }
    let bytes = fs::read(path).unwrap();
    assert!(
        safetensors::SafeTensors::deserialize(&bytes).is_err(),
        "the reference crate accepts what qtool refuses ({msg})"
    );
    err
}

#[test]
fn empty_file_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.safetensors");
    fs::write(&path, b"").unwrap();
    assert!(matches!(refused(&path, &["truncated"]), SafetensorsError::Truncated { len: 0, .. }));
}

#[test]
fn file_shorter_than_length_prefix_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.safetensors");
    fs::write(&path, [1u8, 0, 0, 0, 0]).unwrap();
    assert!(matches!(refused(&path, &["truncated"]), SafetensorsError::Truncated { len: 5, .. }));
}

#[test]
fn header_length_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), 1000, b"{}", 8);
    let err = refused(&path, &["1000"]);
    assert!(matches!(err, SafetensorsError::HeaderPastEnd { header_len: 1000, file_len: 18, .. }));
}

#[test]
fn header_length_over_100_mb_limit() {
    // A tiny file claiming a 200 MB header: refused from the prefix alone, nothing allocated.
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), 200_000_000, b"{}", 0);
    let err = refused(&path, &["200000000"]);
    assert!(matches!(err, SafetensorsError::HeaderTooLarge { header_len: 200_000_000, .. }));
}

#[test]
fn header_length_u64_max() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_file(dir.path(), u64::MAX, b"", 0);
    assert!(matches!(refused(&path, &[]), SafetensorsError::HeaderTooLarge { .. }));
}

#[test]
fn header_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let header = b"{\"\xff\":{}}";
    let path = raw_file(dir.path(), header.len() as u64, header, 0);
    let err = refused(&path, &["UTF-8"]);
    assert!(matches!(err, SafetensorsError::HeaderNotUtf8 { at: 2, .. }));
}

#[test]
fn header_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "{\"a\": {\"dtype\": ", 0);
    assert!(matches!(refused(&path, &["not valid JSON"]), SafetensorsError::HeaderNotJson { .. }));
}

#[test]
fn header_with_trailing_garbage_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "{} x", 0);
    assert!(matches!(refused(&path, &["not valid JSON"]), SafetensorsError::HeaderNotJson { .. }));
}

#[test]
fn header_is_an_array_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "[1, 2, {}]", 0);
    let err = refused(&path, &["an array", "not a JSON object"]);
    assert!(matches!(err, SafetensorsError::HeaderNotObject { found: "an array", .. }));
}

#[test]
fn header_is_a_string_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "\"hello\"", 0);
    let err = refused(&path, &["a string"]);
    assert!(matches!(err, SafetensorsError::HeaderNotObject { found: "a string", .. }));
}

#[test]
fn metadata_value_not_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), r#"{"__metadata__": {"format": "pt", "step": 3}}"#, 0);
    let err = refused(&path, &["'step'", "a number"]);
    assert!(matches!(err, SafetensorsError::MetadataNotString { ref key, .. } if key == "step"));
}

#[test]
fn metadata_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), r#"{"__metadata__": ["pt"]}"#, 0);
    let err = refused(&path, &["__metadata__", "an array"]);
    assert!(matches!(err, SafetensorsError::MetadataNotObject { .. }));
}

#[test]
fn unknown_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}}"#, 2);
    let err = refused(&path, &["'w'", "'Q4_K'"]);
    assert!(matches!(err, SafetensorsError::UnknownDtype { ref dtype, .. } if dtype == "Q4_K"));
}

#[test]
fn dtype_names_are_case_sensitive() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}"#, 4);
    assert!(matches!(refused(&path, &["'w'", "'f32'"]), SafetensorsError::UnknownDtype { .. }));
}

#[test]
fn byte_count_does_not_match_shape_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        r#"{"w.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}"#,
        12,
    );
    let err = refused(&path, &["'w.weight'", "16", "12"]);
    assert!(matches!(err, SafetensorsError::ByteCountMismatch { expected: 16, actual: 12, .. }));
}

#[test]
fn overlapping_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}"#;
    let path = file(dir.path(), header, 24);
    let err = refused(&path, &["'b'", "'a'", "overlap"]);
    assert!(matches!(err, SafetensorsError::Overlap { ref tensor, ref other, .. }
        if tensor == "b" && other == "a"));
}

#[test]
fn zero_size_tensor_inside_another_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "e": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}}"#;
    let path = file(dir.path(), header, 16);
    assert!(matches!(refused(&path, &["'e'", "'a'"]), SafetensorsError::Overlap { .. }));
}

#[test]
fn offsets_end_before_they_begin() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}}"#, 4);
    let err = refused(&path, &["'w'", "[4, 0]"]);
    assert!(matches!(err, SafetensorsError::EndBeforeBegin { begin: 4, end: 0, .. }));
}

#[test]
fn gap_between_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [20, 36]}}"#;
    let path = file(dir.path(), header, 36);
    let err = refused(&path, &["'b'", "gap"]);
    assert!(matches!(err, SafetensorsError::Gap { begin: 20, expected: 16, .. }));
}

#[test]
fn gap_before_first_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}"#, 8);
    let err = refused(&path, &["'a'"]);
    assert!(matches!(err, SafetensorsError::Gap { begin: 4, expected: 0, .. }));
}

#[test]
fn offsets_past_end_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}"#;
    let path = file(dir.path(), header, 20);
    let err = refused(&path, &["'b'", "32", "20-byte"]);
    assert!(matches!(err, SafetensorsError::OutOfRange { end: 32, data_len: 20, .. }));
}

#[test]
fn huge_offsets_past_end_of_data() {
    // Offsets far past the file (2^60) must be refused before anything is sliced.
    let dir = tempfile::tempdir().unwrap();
    let header = format!(
        r#"{{"a": {{"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}},
            "b": {{"dtype": "U8", "shape": [{n}], "data_offsets": [0, {n}]}}}}"#,
        n = 1u64 << 60
    );
    let path = file(dir.path(), &header, 4);
    assert!(matches!(refused(&path, &["'b'"]), SafetensorsError::OutOfRange { .. }));
}

#[test]
fn trailing_bytes_after_last_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}"#, 10);
    let err = refused(&path, &["6 bytes after the last tensor"]);
    assert!(matches!(err, SafetensorsError::TrailingBytes { unused: 6, .. }));
}

#[test]
fn shape_product_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let header =
        r#"{"w": {"dtype": "U8", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}}"#;
    let path = file(dir.path(), header, 0);
    let err = refused(&path, &["'w'", "overflows"]);
    assert!(matches!(err, SafetensorsError::ShapeOverflow { .. }));
}

#[test]
fn shape_bit_count_overflows() {
    // 2^62 elements fit in u64, their 64-bit size in bits does not.
    let dir = tempfile::tempdir().unwrap();
    let header =
        r#"{"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}}"#;
    let path = file(dir.path(), header, 0);
    assert!(matches!(refused(&path, &["'w'"]), SafetensorsError::ShapeOverflow { .. }));
}

#[test]
fn sub_byte_dtype_not_whole_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}"#, 2);
    let err = refused(&path, &["'w'", "3 F4 elements"]);
    assert!(matches!(err, SafetensorsError::PartialBytes { numel: 3, .. }));
}

#[test]
fn duplicate_tensor_key_in_header() {
    // A map would keep the last entry silently; the file is ambiguous, so it is refused.
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}"#;
    let path = file(dir.path(), header, 8);
    let err = match SafetensorsSource::open_file(&path) {
        Err(Error::Safetensors(e)) => e,
        other => panic!("expected a safetensors error, got {other:?}"),
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("'w' twice"), "{msg}");
    assert!(matches!(err, SafetensorsError::DuplicateKey { .. }));
}

#[test]
fn tensor_entry_missing_data_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), r#"{"w": {"dtype": "U8", "shape": [4]}}"#, 4);
    let err = refused(&path, &["'w'", "no 'data_offsets'"]);
    assert!(matches!(err, SafetensorsError::BadTensorEntry { .. }));
}

#[test]
fn tensor_entry_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), r#"{"w": [1, 2, 3]}"#, 0);
    assert!(matches!(
        refused(&path, &["'w'", "an array"]),
        SafetensorsError::BadTensorEntry { .. }
    ));
}

#[test]
fn negative_shape_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}}"#, 4);
    let err = refused(&path, &["'w'", "shape[0] = -4"]);
    assert!(matches!(err, SafetensorsError::BadTensorEntry { .. }));
}

#[test]
fn data_offsets_not_a_pair() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        file(dir.path(), r#"{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4, 8]}}"#, 4);
    let err = refused(&path, &["'w'", "[begin, end]"]);
    assert!(matches!(err, SafetensorsError::BadTensorEntry { .. }));
}

#[test]
fn deeply_nested_header_is_refused_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    let header = format!(r#"{{"w": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let path = file(dir.path(), &header, 0);
    assert!(matches!(refused(&path, &["not valid JSON"]), SafetensorsError::HeaderNotJson { .. }));
}
