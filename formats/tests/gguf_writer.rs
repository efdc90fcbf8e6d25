//! The GGUF writer refuses plans that could not make a valid (llama.cpp-loadable) file, refuses
//! tensors written out of plan order, and leaves nothing at the output path unless it finishes.

use std::path::Path;

use qtool_formats::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use qtool_formats::tensor::{PlannedTensor, TensorDType, TensorSink, TensorSource};
use qtool_formats::DType;

fn planned(name: &str, ty: GgmlType, shape: &[u64]) -> PlannedTensor {
    let numel: u64 = shape.iter().product();
    PlannedTensor {
        name: name.into(),
        dtype: TensorDType::Ggml(ty),
        shape: shape.to_vec(),
        nbytes: ty.byte_len(shape[0], numel).unwrap(),
    }
}

fn create_err(kvs: Vec<(String, Value)>, plan: Vec<PlannedTensor>, alignment: u32, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.gguf");
    let err = GgufWriter::create(&target, kvs, plan, alignment).unwrap_err().to_string();
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(err.contains("out.gguf"), "{err:?} does not name the file");
    assert_dir_empty(dir.path());
}

fn assert_dir_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn alignment_key_must_agree() {
    let kvs = vec![("general.alignment".to_owned(), Value::U32(64))];
    create_err(kvs, vec![], 32, "general.alignment");
}

#[test]
fn alignment_key_must_be_u32() {
    let kvs = vec![("general.alignment".to_owned(), Value::U64(32))];
    create_err(kvs, vec![], 32, "general.alignment");
}

#[test]
fn alignment_must_be_power_of_two() {
    create_err(vec![], vec![], 24, "power of two");
}

#[test]
fn duplicate_keys_refused() {
    let kvs = vec![("a.b".to_owned(), Value::U8(1)), ("a.b".to_owned(), Value::U8(2))];
    create_err(kvs, vec![], 32, "duplicate metadata key 'a.b'");
}

#[test]
fn duplicate_tensor_names_refused() {
    let plan = vec![planned("w", GgmlType::F32, &[4]), planned("w", GgmlType::F32, &[4])];
    create_err(vec![], plan, 32, "duplicate tensor name 'w'");
}

#[test]
fn long_tensor_names_refused() {
    create_err(vec![], vec![planned(&"x".repeat(64), GgmlType::F32, &[4])], 32, "at most 63");
}

#[test]
fn non_ggml_dtype_refused() {
    let p = PlannedTensor {
        name: "w".into(),
        dtype: TensorDType::St(DType::F32),
        shape: vec![4],
        nbytes: 16,
    };
    create_err(vec![], vec![p], 32, "not a GGML type");
}

#[test]
fn byte_count_must_match_the_type() {
    let mut p = planned("w", GgmlType::Q8_0, &[64, 2]);
    p.nbytes += 1;
    create_err(vec![], vec![p], 32, "136 bytes");
}

#[test]
fn partial_blocks_refused() {
    let p = PlannedTensor {
        name: "q".into(),
        dtype: TensorDType::Ggml(GgmlType::Q4_K),
        shape: vec![100],
        nbytes: 0,
    };
    create_err(vec![], vec![p], 32, "not a multiple");
}

#[test]
fn five_dims_refused() {
    create_err(vec![], vec![planned("w", GgmlType::F32, &[1, 1, 1, 1, 1])], 32, "5 dimensions");
}

#[test]
fn out_of_order_write_and_early_finish_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.gguf");
    let plan = vec![planned("a", GgmlType::F32, &[1]), planned("b", GgmlType::F32, &[1])];
    let mut w = GgufWriter::create(&target, vec![], plan.clone(), 32).unwrap();
    let err = w.write("b", &[0; 4]).unwrap_err().to_string();
    assert!(err.contains("out of order"), "{err}");
    let err = w.write("a", &[0; 3]).unwrap_err().to_string();
    assert!(err.contains("3 bytes"), "{err}");
    w.write("a", &[0; 4]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("'b' was never written"), "{err}");
    assert_dir_empty(dir.path());

    let mut w = GgufWriter::create(&target, vec![], plan, 32).unwrap();
    w.write("a", &[0; 4]).unwrap();
    drop(w);
    assert_dir_empty(dir.path());
}

#[test]
fn non_default_alignment_without_key_gets_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.gguf");
    let plan = vec![planned("a", GgmlType::F16, &[3]), planned("b", GgmlType::I8, &[5])];
    let mut w =
        GgufWriter::create(&target, vec![("x.y".into(), Value::Bool(true))], plan, 128).unwrap();
    w.write("a", &[1; 6]).unwrap();
    w.write("b", &[2; 5]).unwrap();
    Box::new(w).finish().unwrap();
    let f = GgufFile::open(&target).unwrap();
    assert_eq!(f.get_u32("general.alignment"), Some(128));
    assert_eq!(f.kvs()[0].0, "x.y");
    assert_eq!(f.find("b").unwrap().offset, f.data_offset() + 128);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), f.data_offset() + 128 + 128);
}

/// The header bytes of a tiny file, spelled out from the GGUF spec.
#[test]
fn header_layout_matches_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.gguf");
    let plan = vec![planned("t", GgmlType::F32, &[2])];
    let mut w =
        GgufWriter::create(&target, vec![("k".into(), Value::U16(0xBEEF))], plan, 32).unwrap();
    w.write("t", &[7; 8]).unwrap();
    w.finish().unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(b"GGUF");
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes()); // tensors
    want.extend_from_slice(&1u64.to_le_bytes()); // kvs
    want.extend_from_slice(&1u64.to_le_bytes());
    want.push(b'k');
    want.extend_from_slice(&2u32.to_le_bytes()); // UINT16
    want.extend_from_slice(&0xBEEFu16.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes());
    want.push(b't');
    want.extend_from_slice(&1u32.to_le_bytes()); // n_dims
    want.extend_from_slice(&2u64.to_le_bytes());
    want.extend_from_slice(&0u32.to_le_bytes()); // F32
    want.extend_from_slice(&0u64.to_le_bytes()); // offset
    assert_eq!(want.len(), 72);
    want.resize(96, 0);
    want.extend_from_slice(&[7; 8]);
    want.resize(128, 0);
    assert_eq!(std::fs::read(&target).unwrap(), want);
}
