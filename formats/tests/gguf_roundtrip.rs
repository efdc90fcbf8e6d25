//! Writer → reader round trips: random KVs of every value type (nested arrays included) and
//! random tensors of every GGML type come back identical, at the offsets llama.cpp expects, and
//! the bytes written do not depend on anything but the input.

use proptest::collection::vec;
use proptest::prelude::*;

use qtool_formats::gguf::{Array, GgmlType, GgufFile, GgufWriter, Value, ALIGNMENT_KEY};
use qtool_formats::tensor::{PlannedTensor, TensorDType, TensorSink, TensorSource};

fn float32() -> impl Strategy<Value = f32> {
    prop_oneof![any::<f32>(), Just(f32::NAN), Just(-0.0f32), Just(f32::INFINITY)]
}

fn float64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>(), Just(f64::NAN), Just(-0.0f64), Just(f64::NEG_INFINITY)]
}

fn flat_array() -> impl Strategy<Value = Array> {
    let n = 0..6usize;
    prop_oneof![
        vec(any::<u8>(), n.clone()).prop_map(Array::U8),
        vec(any::<i8>(), n.clone()).prop_map(Array::I8),
        vec(any::<u16>(), n.clone()).prop_map(Array::U16),
        vec(any::<i16>(), n.clone()).prop_map(Array::I16),
        vec(any::<u32>(), n.clone()).prop_map(Array::U32),
        vec(any::<i32>(), n.clone()).prop_map(Array::I32),
        vec(float32(), n.clone()).prop_map(Array::F32),
        vec(any::<bool>(), n.clone()).prop_map(Array::Bool),
        vec("\\PC{0,6}", n.clone()).prop_map(Array::String),
        vec(any::<u64>(), n.clone()).prop_map(Array::U64),
        vec(any::<i64>(), n.clone()).prop_map(Array::I64),
        vec(float64(), n).prop_map(Array::F64),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    flat_array().prop_recursive(3, 24, 4, |inner| vec(inner, 0..4).prop_map(Array::Array))
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        float32().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        "\\PC{0,12}".prop_map(Value::String),
        array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        float64().prop_map(Value::F64),
    ]
}

/// A tensor plan entry plus its bytes: any GGML type, `ne[0]` a whole number of blocks.
fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>, u64)> {
    (0..GgmlType::ALL.len(), 0..3u64, vec(1..4u64, 0..4), any::<u64>()).prop_map(
        |(t, blocks, rest, seed)| {
            let ty = GgmlType::ALL[t];
            let mut shape = vec![blocks * ty.block_size()];
            shape.extend(rest);
            (ty, shape, seed)
        },
    )
}

/// Deterministic filler bytes, so the data of each tensor differs.
fn bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pad(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn write_then_read_gives_back_everything(
        values in vec(value(), 0..10),
        tensors in vec(tensor(), 0..6),
        alignment in prop_oneof![Just(1u32), Just(8), Just(32), Just(64), Just(4096)],
        with_alignment_key in any::<bool>(),
    ) {
        let mut kvs: Vec<(String, Value)> =
            values.into_iter().enumerate().map(|(i, v)| (format!("test.key_{i}"), v)).collect();
        if with_alignment_key {
            kvs.insert(0, (ALIGNMENT_KEY.to_owned(), Value::U32(alignment)));
        }
        let plan: Vec<PlannedTensor> = tensors
            .iter()
            .enumerate()
            .map(|(i, (ty, shape, _))| {
                let numel: u64 = shape.iter().product();
                PlannedTensor {
                    name: format!("blk.{i}.weight"),
                    dtype: TensorDType::Ggml(*ty),
                    shape: shape.clone(),
                    nbytes: ty.byte_len(shape[0], numel).unwrap(),
                }
            })
            .collect();
        let data: Vec<Vec<u8>> =
            plan.iter().zip(&tensors).map(|(p, (_, _, seed))| bytes(p.nbytes, *seed)).collect();

        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        for name in ["a.gguf", "b.gguf"] {
            let path = dir.path().join(name);
            let mut w = GgufWriter::create(&path, kvs.clone(), plan.clone(), alignment).unwrap();
            for (p, d) in plan.iter().zip(&data) {
                w.write(&p.name, d).unwrap();
            }
            w.finish().unwrap();
            written.push(path);
        }
        let first = std::fs::read(&written[0]).unwrap();
        prop_assert_eq!(&first, &std::fs::read(&written[1]).unwrap(), "output not deterministic");

        let f = GgufFile::open(&written[0]).unwrap();
        prop_assert_eq!(f.version(), 3);
        prop_assert_eq!(f.alignment(), alignment);
        let mut want = kvs.clone();
        if !with_alignment_key && alignment != 32 {
            want.push((ALIGNMENT_KEY.to_owned(), Value::U32(alignment)));
        }
        prop_assert_eq!(f.kvs(), &want[..]);
        prop_assert_eq!(f.data_offset() % u64::from(alignment), 0);

        let mut offset = f.data_offset();
        prop_assert_eq!(f.tensors().len(), plan.len());
        for ((info, p), d) in f.tensors().iter().zip(&plan).zip(&data) {
            prop_assert_eq!(&info.name, &p.name);
            prop_assert_eq!(info.dtype, p.dtype);
            prop_assert_eq!(&info.shape, &p.shape);
            prop_assert_eq!(info.nbytes, p.nbytes);
            prop_assert_eq!(info.offset, offset, "not at the running sum of padded sizes");
            prop_assert_eq!(f.data(info), &d[..]);
            offset += pad(p.nbytes, alignment.into());
        }
        prop_assert_eq!(first.len() as u64, offset.max(f.data_offset()));
    }
}
