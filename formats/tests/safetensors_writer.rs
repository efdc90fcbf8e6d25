//! The streaming writer: exact header bytes, refused writes and plans, sharding with an index,
//! determinism, and nothing left behind when a writer is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use qtool_formats::safetensors::{SafetensorsError, SafetensorsSource, SafetensorsWriter};
use qtool_formats::{DType, Error, GgmlType, PlannedTensor, TensorDType, TensorSink, TensorSource};

fn planned(name: &str, dtype: DType, shape: &[u64]) -> PlannedTensor {
    let numel = shape.iter().product();
    PlannedTensor {
        name: name.into(),
        dtype: TensorDType::St(dtype),
        shape: shape.to_vec(),
        nbytes: dtype.byte_len(numel).unwrap(),
    }
}

fn u8s(name: &str, n: u64) -> PlannedTensor {
    planned(name, DType::U8, &[n])
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Writes `plan` with bytes `fill(i)` for tensor i; returns the output files.
fn write_all(
    target: &Path,
    plan: &[PlannedTensor],
    metadata: BTreeMap<String, String>,
    max: Option<u64>,
) -> Vec<PathBuf> {
    let mut w = SafetensorsWriter::create(target, plan.to_vec(), metadata, max).unwrap();
    for (i, t) in plan.iter().enumerate() {
        w.write(&t.name, &vec![i as u8; t.nbytes as usize]).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn header_bytes_are_exact_and_padded_with_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    let plan = vec![planned("b", DType::F32, &[2]), planned("a", DType::BF16, &[1, 1])];
    let files = write_all(&target, &plan, meta(&[("format", "pt")]), None);
    assert_eq!(files, std::slice::from_ref(&target));

    let json = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]}}"#;
    let padded = json.len().next_multiple_of(8);
    let mut expected = (padded as u64).to_le_bytes().to_vec();
    expected.extend_from_slice(json.as_bytes());
    expected.resize(8 + padded, b' ');
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[1; 2]);
    assert_eq!(fs::read(&target).unwrap(), expected);
}

#[test]
fn no_metadata_means_no_metadata_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    write_all(&target, &[u8s("x", 1)], BTreeMap::new(), None);
    let bytes = fs::read(&target).unwrap();
    let text = std::str::from_utf8(&bytes[8..bytes.len() - 1]).unwrap();
    assert!(text.starts_with(r#"{"x":"#), "{text}");
}

#[test]
fn written_file_reads_back_and_the_reference_crate_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let plan = vec![
        planned("s", DType::F64, &[]),
        planned("e", DType::F16, &[0, 5]),
        planned("f4", DType::F4, &[2, 3]),
        planned("f6", DType::F6E2M3, &[4]),
        planned("w", DType::F8E4M3, &[3, 3]),
    ];
    write_all(&target, &plan, meta(&[("k", "v")]), None);

    let src = SafetensorsSource::open_file(&target).unwrap();
    let got: Vec<_> = src
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        })
        .collect();
    assert_eq!(got, plan);
    for (i, t) in src.tensors().iter().enumerate() {
        assert_eq!(src.data(t), vec![i as u8; t.nbytes as usize]);
    }

    let bytes = fs::read(&target).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(reference.len(), plan.len());
    for t in src.tensors() {
        let view = reference.tensor(&t.name).unwrap();
        assert_eq!(view.data(), src.data(t));
        assert_eq!(format!("{:?}", view.dtype()).replace('_', ""), t.dtype.name().replace('_', ""));
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape);
    }
}

#[test]
fn out_of_order_write_is_refused_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let mut w =
        SafetensorsWriter::create(&target, vec![u8s("a", 2), u8s("b", 3)], BTreeMap::new(), None)
            .unwrap();
    let msg = w.write("b", &[0; 3]).unwrap_err().to_string();
    assert!(msg.contains("'b'") && msg.contains("out of order"), "{msg}");
    w.write("a", &[1; 2]).unwrap();
    w.write("b", &[2; 3]).unwrap();
    w.finish().unwrap();
    let src = SafetensorsSource::open_file(&target).unwrap();
    assert_eq!(src.get("b").unwrap().data, &[2; 3]);
}

#[test]
fn size_mismatched_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let mut w =
        SafetensorsWriter::create(&target, vec![u8s("a", 2)], BTreeMap::new(), None).unwrap();
    let msg = w.write("a", &[0; 3]).unwrap_err().to_string();
    assert!(msg.contains("'a'") && msg.contains("3 bytes") && msg.contains("2"), "{msg}");
}

#[test]
fn write_past_the_plan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let mut w =
        SafetensorsWriter::create(&target, vec![u8s("a", 1)], BTreeMap::new(), None).unwrap();
    w.write("a", &[0]).unwrap();
    let msg = w.write("extra", &[0]).unwrap_err().to_string();
    assert!(msg.contains("'extra'") && msg.contains("after the plan was complete"), "{msg}");
}

#[test]
fn finish_before_every_tensor_is_written_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let mut w =
        SafetensorsWriter::create(&target, vec![u8s("a", 1), u8s("b", 1)], BTreeMap::new(), None)
            .unwrap();
    w.write("a", &[0]).unwrap();
    let msg = w.finish().unwrap_err().to_string();
    assert!(msg.contains("'b'") && msg.contains("1 of 2"), "{msg}");
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
}

#[test]
fn plan_with_a_ggml_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = PlannedTensor {
        name: "q".into(),
        dtype: TensorDType::Ggml(GgmlType::F32),
        shape: vec![1],
        nbytes: 4,
    };
    let err = SafetensorsWriter::create(
        &dir.path().join("m.safetensors"),
        vec![t],
        BTreeMap::new(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Safetensors(SafetensorsError::Plan { .. })), "{err}");
    assert!(err.to_string().contains("'q'"));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn plan_with_wrong_byte_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = planned("w", DType::BF16, &[4]);
    t.nbytes = 7;
    let err = SafetensorsWriter::create(
        &dir.path().join("m.safetensors"),
        vec![t],
        BTreeMap::new(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("'w'") && err.to_string().contains("7 bytes"), "{err}");
}

#[test]
fn plan_with_partial_byte_sub_byte_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = PlannedTensor {
        name: "f".into(),
        dtype: TensorDType::St(DType::F4),
        shape: vec![3],
        nbytes: 1,
    };
    let err = SafetensorsWriter::create(
        &dir.path().join("m.safetensors"),
        vec![t],
        BTreeMap::new(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("'f'"), "{err}");
}

#[test]
fn plan_with_duplicate_or_reserved_names_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("m.safetensors");
    let err =
        SafetensorsWriter::create(&target, vec![u8s("a", 1), u8s("a", 1)], BTreeMap::new(), None)
            .unwrap_err();
    assert!(err.to_string().contains("'a'") && err.to_string().contains("twice"), "{err}");
    let err =
        SafetensorsWriter::create(&target, vec![u8s("__metadata__", 1)], BTreeMap::new(), None)
            .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let err = SafetensorsWriter::create(&target, vec![u8s("a", 1)], BTreeMap::new(), Some(0))
        .unwrap_err();
    assert!(err.to_string().contains("positive"), "{err}");
}

#[test]
fn dropped_writer_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    let plan = vec![u8s("a", 10), u8s("b", 10), u8s("c", 10)];
    // Unsharded, dropped half way.
    let mut w = SafetensorsWriter::create(&target, plan.clone(), BTreeMap::new(), None).unwrap();
    w.write("a", &[0; 10]).unwrap();
    drop(w);
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
    // Sharded, dropped after two shards were completed and sealed.
    let mut w = SafetensorsWriter::create(&target, plan, BTreeMap::new(), Some(10)).unwrap();
    w.write("a", &[0; 10]).unwrap();
    w.write("b", &[0; 10]).unwrap();
    w.write("c", &[0; 10]).unwrap();
    drop(w);
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
}

#[test]
fn sharding_splits_in_plan_order_and_the_index_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    // Limit 100: [a 40, b 60] [c 150 alone, larger than the limit] [d 30, e 0, f 70] [g 1].
    let plan = vec![
        u8s("a", 40),
        u8s("b", 60),
        u8s("c", 150),
        u8s("d", 30),
        u8s("e", 0),
        u8s("f", 70),
        u8s("g", 1),
    ];
    let files = write_all(&target, &plan, meta(&[("format", "pt")]), Some(100));
    let names: Vec<_> =
        files.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00004.safetensors",
            "model-00002-of-00004.safetensors",
            "model-00003-of-00004.safetensors",
            "model-00004-of-00004.safetensors",
            "model.safetensors.index.json",
        ]
    );
    assert_eq!(listing(dir.path()), names);
    assert!(!target.exists(), "the unsharded name must not be written when sharding");

    let index: serde_json::Value = serde_json::from_slice(&fs::read(&files[4]).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], 351);
    let shard_of = |t: &str| index["weight_map"][t].as_str().unwrap().to_owned();
    assert_eq!(shard_of("a"), names[0]);
    assert_eq!(shard_of("b"), names[0]);
    assert_eq!(shard_of("c"), names[1]);
    assert_eq!(shard_of("d"), names[2]);
    assert_eq!(shard_of("e"), names[2]);
    assert_eq!(shard_of("f"), names[2]);
    assert_eq!(shard_of("g"), names[3]);

    let src = SafetensorsSource::open_index(&files[4]).unwrap();
    let order: Vec<_> = src.tensors().iter().map(|t| (t.name.as_str(), t.file)).collect();
    assert_eq!(order, [("a", 0), ("b", 0), ("c", 1), ("d", 2), ("e", 2), ("f", 2), ("g", 3)]);
    for (i, t) in src.tensors().iter().enumerate() {
        assert_eq!(src.data(t), vec![i as u8; t.nbytes as usize], "{}", t.name);
    }
    assert_eq!(src.metadata()["format"], "pt");
    for shard in &files[..4] {
        let one = SafetensorsSource::open_file(shard).unwrap();
        assert_eq!(one.metadata()["format"], "pt", "every shard carries the metadata");
        safetensors::SafeTensors::deserialize(&fs::read(shard).unwrap()).unwrap();
    }
}

#[test]
fn plan_within_the_limit_is_one_file_without_index() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    let files = write_all(&target, &[u8s("a", 50), u8s("b", 50)], BTreeMap::new(), Some(100));
    assert_eq!(files, [target]);
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
}

#[test]
fn output_is_byte_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let plan = vec![planned("x", DType::F32, &[3, 2]), u8s("y", 9), planned("z", DType::I64, &[2])];
    let m = meta(&[("b", "2"), ("a", "1"), ("ü", "\"quoted\"\n")]);
    fs::create_dir(dir.path().join("one")).unwrap();
    fs::create_dir(dir.path().join("two")).unwrap();
    let first =
        write_all(&dir.path().join("one").join("model.safetensors"), &plan, m.clone(), Some(30));
    let second = write_all(&dir.path().join("two").join("model.safetensors"), &plan, m, Some(30));
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap(), "{}", a.display());
    }
}

#[test]
fn missing_output_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("no").join("such").join("m.safetensors");
    let err =
        SafetensorsWriter::create(&target, vec![u8s("a", 1)], BTreeMap::new(), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn rewrite_refuses_to_write_over_its_input_and_leaves_it_intact() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    write_all(&target, &[u8s("a", 3)], BTreeMap::new(), None);
    let before = fs::read(&target).unwrap();
    let src = SafetensorsSource::open_file(&target).unwrap();
    let err = qtool_formats::safetensors::rewrite(&src, &target, None).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite an input"), "{err}");
    drop(src);
    assert_eq!(fs::read(&target).unwrap(), before);
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
}

#[test]
fn rewrite_copies_every_tensor_and_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.safetensors");
    let plan = vec![planned("x", DType::BF16, &[2, 2]), u8s("y", 5)];
    write_all(&first, &plan, meta(&[("format", "pt")]), None);
    let src = SafetensorsSource::open_file(&first).unwrap();
    let second = dir.path().join("second.safetensors");
    let written = qtool_formats::safetensors::rewrite(&src, &second, None).unwrap();
    assert_eq!(written, std::slice::from_ref(&second));
    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
}
