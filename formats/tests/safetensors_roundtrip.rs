//! write → read → identical tensors, bytes and metadata, for random plans: every dtype
//! (sub-byte ones with whole-byte sizes), 0-d and zero-size shapes, unicode names and metadata,
//! with and without sharding. The `safetensors` crate must accept every file written.

use std::collections::BTreeMap;
use std::fs;

use proptest::prelude::*;
use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};

#[derive(Debug, Clone)]
struct Tensor {
    plan: PlannedTensor,
    data: Vec<u8>,
}

fn tensor(index: usize) -> impl Strategy<Value = Tensor> {
    let dtype = prop::sample::select(DType::ALL.to_vec());
    let shape = prop::collection::vec(0u64..5, 0..4);
    let name = "[a-z_.]{0,6}|\\PC{1,4}";
    (dtype, shape, name).prop_flat_map(move |(dtype, mut shape, name)| {
        // Sub-byte dtypes need a whole number of bytes; a trailing 8 guarantees it.
        if dtype.byte_len(shape.iter().product()).is_none() {
            shape.push(8);
        }
        let nbytes = dtype.byte_len(shape.iter().product()).unwrap();
        let plan = PlannedTensor {
            // The index keeps names unique whatever the random part is.
            name: format!("{name}#{index}"),
            dtype: TensorDType::St(dtype),
            shape,
            nbytes,
        };
        prop::collection::vec(any::<u8>(), nbytes as usize)
            .prop_map(move |data| Tensor { plan: plan.clone(), data })
    })
}

fn tensors() -> impl Strategy<Value = Vec<Tensor>> {
    (0usize..8).prop_flat_map(|n| (0..n).map(tensor).collect::<Vec<_>>())
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("\\PC{0,6}", "\\PC{0,12}", 0..4)
        .prop_filter("reserved key", |m| !m.contains_key("__metadata__"))
}

/// What any sharding must satisfy, checked on the files (not by re-running the algorithm):
/// shards only when the bytes exceed the limit and two tensors carry data; each shard within
/// the limit unless it holds a single tensor with data; greedy, so no shard could have taken
/// the next shard's first tensor; tensors in plan order across shards.
fn check_shards(
    files: &[std::path::PathBuf],
    plan: &[PlannedTensor],
    max: Option<u64>,
) -> Result<(), TestCaseError> {
    let total: u64 = plan.iter().map(|t| t.nbytes).sum();
    let with_data = plan.iter().filter(|t| t.nbytes > 0).count();
    let must_shard = max.is_some_and(|max| total > max) && with_data >= 2;
    prop_assert_eq!(files.len() > 1, must_shard, "files: {:?}", files);
    let Some(max) = max.filter(|_| must_shard) else { return Ok(()) };
    prop_assert!(files.last().unwrap().ends_with("model.safetensors.index.json"));
    let shards: Vec<Vec<u64>> = files[..files.len() - 1]
        .iter()
        .map(|f| {
            let one = qtool_formats::open(f).unwrap();
            one.source().tensors().iter().map(|t| t.nbytes).collect()
        })
        .collect();
    let flat: Vec<u64> = shards.iter().flatten().copied().collect();
    prop_assert_eq!(flat, plan.iter().map(|t| t.nbytes).collect::<Vec<_>>());
    for (i, shard) in shards.iter().enumerate() {
        let bytes: u64 = shard.iter().sum();
        prop_assert!(bytes <= max || shard.iter().filter(|&&b| b > 0).count() == 1);
        if let Some(next) = shards.get(i + 1) {
            prop_assert!(bytes + next[0] > max, "shard {} could have taken the next tensor", i);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn write_then_read_is_identical(
        tensors in tensors(),
        metadata in metadata(),
        max_shard in prop::option::of(1u64..200),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.safetensors");
        let plan: Vec<_> = tensors.iter().map(|t| t.plan.clone()).collect();
        let mut w = SafetensorsWriter::create(&target, plan.clone(), metadata.clone(), max_shard).unwrap();
        for t in &tensors {
            w.write(&t.plan.name, &t.data).unwrap();
        }
        let files = w.finish().unwrap();

        check_shards(&files, &plan, max_shard)?;

        let ckpt = qtool_formats::open(if files.len() > 1 { dir.path() } else { &target }).unwrap();
        let src = ckpt.source();
        prop_assert_eq!(src.tensors().len(), tensors.len());
        for (got, want) in src.tensors().iter().zip(&tensors) {
            prop_assert_eq!(&got.name, &want.plan.name);
            prop_assert_eq!(got.dtype, want.plan.dtype);
            prop_assert_eq!(&got.shape, &want.plan.shape);
            prop_assert_eq!(got.nbytes, want.plan.nbytes);
            prop_assert_eq!(src.data(got), &want.data[..]);
        }
        let expected_meta: serde_json::Map<_, _> =
            metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        prop_assert_eq!(src.metadata(), expected_meta);

        for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
            let bytes = fs::read(file).unwrap();
            prop_assert!((u64::from_le_bytes(bytes[..8].try_into().unwrap())) % 8 == 0);
            let reference = safetensors::SafeTensors::deserialize(&bytes);
            prop_assert!(reference.is_ok(), "{}: {:?}", file.display(), reference.err());
            let reference = reference.unwrap();
            for (name, view) in reference.iter() {
                let ours = src.get(name).unwrap();
                prop_assert_eq!(view.data(), ours.data);
                let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
                prop_assert_eq!(&shape, &ours.info.shape);
            }
        }
    }
}
