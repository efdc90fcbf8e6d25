//! One named test per malformed GGUF input: each must give its precise error (naming the key or
//! tensor where there is one), never a panic and never an allocation sized by a lying count.
//! The files are assembled byte by byte with [`Gguf`], independently of qtool's writer.

use std::path::{Path, PathBuf};

use qtool_formats::gguf::{GgmlType, GgufError, GgufFile, Value};
use qtool_formats::tensor::{TensorDType, TensorSource};
use qtool_formats::Error;

/// A little-endian byte builder for hand-made GGUF files.
#[derive(Default, Clone)]
struct Gguf(Vec<u8>);

impl Gguf {
    /// Magic, version, tensor count, KV count.
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        Gguf::default().raw(b"GGUF").u32(version).u64(tensors).u64(kvs)
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Self {
        self.raw(&[v])
    }
    fn u32(self, v: u32) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.bytes_str(s.as_bytes())
    }
    fn bytes_str(self, b: &[u8]) -> Self {
        self.u64(b.len() as u64).raw(b)
    }
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(self, key: &str, v: &str) -> Self {
        self.str(key).u32(8).str(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ggml_type).u64(offset)
    }
    fn pad(mut self, alignment: usize) -> Self {
        while self.0.len() % alignment != 0 {
            self.0.push(0);
        }
        self
    }
    fn data(mut self, n: usize, byte: u8) -> Self {
        self.0.extend(std::iter::repeat_n(byte, n));
        self
    }
}

struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write(bytes: &[u8]) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.gguf");
    std::fs::write(&path, bytes).unwrap();
    Written { _dir: dir, path }
}

fn open(b: &Gguf) -> Result<GgufFile, Error> {
    let w = write(&b.0);
    GgufFile::open(&w.path)
}

/// Opens the file, expects a GGUF error, checks the message names the file and contains every
/// `needle`, and returns the error for a variant match.
fn fails(b: &Gguf, needles: &[&str]) -> GgufError {
    let w = write(&b.0);
    let err = match GgufFile::open(&w.path) {
        Ok(f) => panic!("opened a malformed file: {f:?}"),
        Err(Error::Gguf(e)) => e,
        Err(other) => panic!("not a GGUF error: {other}"),
    };
    let msg = err.to_string();
    assert!(msg.contains(&*w.path.display().to_string()), "message does not name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
    err
}

/// A small valid file: three KVs (one a nested array), an F32 tensor of 4 elements and a Q8_0
/// tensor of 32; the last tensor ends exactly at the end of the file.
fn valid() -> Gguf {
    let nested = Gguf::default()
        .str("test.nested")
        .u32(9)
        .u32(9)
        .u64(2)
        .u32(4)
        .u64(2)
        .u32(7)
        .u32(8)
        .u32(8)
        .u64(1)
        .str("x");
    Gguf::header(3, 2, 3)
        .kv_str("general.architecture", "llama")
        .kv_u32("test.count", 42)
        .raw(&nested.0)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[32], 8, 32)
        .pad(32)
        .data(16, 0x11)
        .data(16, 0)
        .data(34, 0x22)
}

#[test]
fn valid_small_file_reads() {
    let w = write(&valid().0);
    let f = GgufFile::open(&w.path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_u32("test.count"), Some(42));
    assert_eq!(f.kvs()[2].0, "test.nested");
    let tensors = f.tensors();
    assert_eq!(tensors.len(), 2);
    assert_eq!(tensors[1].dtype, TensorDType::Ggml(GgmlType::Q8_0));
    assert_eq!(tensors[1].nbytes, 34);
    assert_eq!(tensors[0].offset, f.data_offset());
    assert_eq!(tensors[1].offset, f.data_offset() + 32);
    assert_eq!(f.data(&tensors[0]), &[0x11; 16]);
    assert_eq!(f.data(&tensors[1]), &[0x22; 34]);
    assert!(matches!(f.kv("test.nested"), Some(Value::Array(_))));
}

#[test]
fn truncated_at_every_prefix_errors() {
    let full = valid().0;
    for len in 0..full.len() {
        let w = write(&full[..len]);
        match GgufFile::open(&w.path) {
            Ok(_) => panic!("a {len}-byte prefix of a {}-byte file opened", full.len()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn wrong_magic() {
    let mut b = valid();
    b.0[..4].copy_from_slice(b"GGML");
    let e = fails(&b, &["not a GGUF file"]);
    assert!(matches!(e, GgufError::NotGguf { found, .. } if &found == b"GGML"));
}

#[test]
fn unsupported_version_1() {
    let e = fails(&Gguf::header(1, 0, 0), &["version 1"]);
    assert!(matches!(e, GgufError::UnsupportedVersion { version: 1, .. }));
}

#[test]
fn unsupported_version_4() {
    let e = fails(&Gguf::header(4, 0, 0), &["version 4"]);
    assert!(matches!(e, GgufError::UnsupportedVersion { version: 4, .. }));
}

#[test]
fn version_2_reads() {
    let mut b = valid();
    b.0[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(open(&b).unwrap().version(), 2);
}

#[test]
fn big_endian_rejected() {
    let b = Gguf::default()
        .raw(b"GGUF")
        .raw(&3u32.to_be_bytes())
        .raw(&0u64.to_be_bytes())
        .raw(&0u64.to_be_bytes());
    let e = fails(&b, &["big-endian"]);
    assert!(matches!(e, GgufError::BigEndian { version: 3, .. }));
}

#[test]
fn absurd_tensor_count() {
    let e = fails(&Gguf::header(3, 1 << 60, 0).data(64, 0), &["tensor count 1152921504606846976"]);
    assert!(matches!(e, GgufError::CountTooLarge { what: "tensor count", .. }));
}

#[test]
fn absurd_kv_count() {
    let e = fails(&Gguf::header(3, 0, 1 << 60).data(64, 0), &["KV count 1152921504606846976"]);
    assert!(matches!(e, GgufError::CountTooLarge { what: "metadata KV count", .. }));
}

#[test]
fn string_length_past_eof() {
    let b = Gguf::header(3, 0, 1).str("general.name").u32(8).u64(1000).raw(b"short");
    let e = fails(&b, &["general.name", "needs 1000 bytes"]);
    assert!(matches!(e, GgufError::Truncated { need: 1000, left: 5, .. }));
}

#[test]
fn string_longer_than_1_gib() {
    let b = Gguf::header(3, 0, 1).str("general.name").u32(8).u64((1 << 30) + 1).data(16, b'a');
    let e = fails(&b, &["general.name", "1 GiB"]);
    assert!(matches!(e, GgufError::StringTooLong { len: 1073741825, .. }));
}

#[test]
fn array_count_past_eof() {
    // 2^40 u32 elements claimed, 8 bytes present: refused before allocating anything.
    let b =
        Gguf::header(3, 0, 1).str("tokenizer.ggml.scores").u32(9).u32(4).u64(1 << 40).data(8, 0);
    let e = fails(&b, &["tokenizer.ggml.scores", "1099511627776"]);
    assert!(matches!(e, GgufError::ArrayTooLong { count: 1099511627776, left: 8, .. }));
}

#[test]
fn string_array_count_past_eof() {
    let b =
        Gguf::header(3, 0, 1).str("tokenizer.ggml.tokens").u32(9).u32(8).u64(u64::MAX).data(64, 0);
    let e = fails(&b, &["tokenizer.ggml.tokens"]);
    assert!(matches!(e, GgufError::ArrayTooLong { .. }));
}

#[test]
fn nested_arrays_too_deep() {
    let mut b = Gguf::header(3, 0, 1).str("deep").u32(9);
    for _ in 0..100_000 {
        b = b.u32(9).u64(1);
    }
    let e = fails(&b.u32(0).u64(0), &["deep", "nests deeper"]);
    assert!(matches!(e, GgufError::NestingTooDeep { .. }));
}

#[test]
fn dims_overflowing_u64() {
    let b = Gguf::header(3, 1, 0).tensor("huge", &[1 << 32, 1 << 32, 2], 0, 0).pad(32);
    let e = fails(&b, &["huge", "overflows"]);
    assert!(matches!(e, GgufError::ShapeOverflow { .. }));
}

#[test]
fn dims_overflowing_bytes() {
    // 2^62 F32 elements fit in i64, their 2^64 bytes do not.
    let b = Gguf::header(3, 1, 0).tensor("wide", &[1 << 31, 1 << 31], 0, 0).pad(32);
    let e = fails(&b, &["wide", "overflows"]);
    assert!(matches!(e, GgufError::ShapeOverflow { .. }));
}

#[test]
fn too_many_dims() {
    let b = Gguf::header(3, 1, 0).tensor("t5", &[1, 1, 1, 1, 1], 0, 0).pad(32).data(4, 0);
    let e = fails(&b, &["t5", "5 dimensions"]);
    assert!(matches!(e, GgufError::TooManyDims { n_dims: 5, .. }));
}

#[test]
fn misaligned_offset() {
    let b =
        Gguf::header(3, 2, 0).tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 16).pad(32).data(64, 0);
    let e = fails(&b, &["'b'", "offset 16", "alignment 32"]);
    assert!(matches!(e, GgufError::MisalignedOffset { offset: 16, alignment: 32, .. }));
}

#[test]
fn overlapping_tensors() {
    let b = Gguf::header(3, 2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .data(128, 0);
    let e = fails(&b, &["'a'", "'b'", "overlap"]);
    assert!(matches!(e, GgufError::Overlap { .. }));
}

#[test]
fn out_of_order_tensors_that_do_not_overlap_read() {
    let b =
        Gguf::header(3, 2, 0).tensor("a", &[4], 0, 32).tensor("b", &[4], 0, 0).pad(32).data(48, 0);
    let f = open(&b).unwrap();
    assert_eq!(f.find("a").unwrap().offset, f.data_offset() + 32);
}

#[test]
fn data_past_eof() {
    let b = Gguf::header(3, 1, 0).tensor("w", &[64], 0, 0).pad(32).data(255, 0);
    let e = fails(&b, &["'w'", "past the end"]);
    assert!(matches!(e, GgufError::DataOutOfBounds { nbytes: 256, .. }));
}

#[test]
fn data_offset_overflowing_u64() {
    let b = Gguf::header(3, 1, 0).tensor("w", &[4], 0, u64::MAX - 31).pad(32).data(16, 0);
    let e = fails(&b, &["'w'"]);
    assert!(matches!(e, GgufError::DataOutOfBounds { .. }));
}

#[test]
fn duplicate_tensor_names() {
    let b = Gguf::header(3, 2, 0)
        .tensor("same", &[4], 0, 0)
        .tensor("same", &[4], 0, 32)
        .pad(32)
        .data(48, 0);
    let e = fails(&b, &["duplicate tensor name 'same'"]);
    assert!(matches!(e, GgufError::DuplicateTensor { .. }));
}

#[test]
fn duplicate_kv_keys() {
    let b = Gguf::header(3, 0, 2).kv_u32("general.file_type", 1).kv_u32("general.file_type", 2);
    let e = fails(&b, &["duplicate metadata key 'general.file_type'"]);
    assert!(matches!(e, GgufError::DuplicateKey { .. }));
}

#[test]
fn empty_kv_key() {
    let e = fails(&Gguf::header(3, 0, 1).kv_u32("", 1), &["empty metadata key"]);
    assert!(matches!(e, GgufError::EmptyKey { .. }));
}

#[test]
fn unknown_ggml_type() {
    for id in [4u32, 5, 31, 36, 38, 43, 1000] {
        let b = Gguf::header(3, 1, 0).tensor("blk.0.w", &[32], id, 0).pad(32).data(256, 0);
        let e = fails(&b, &["blk.0.w", &format!("ggml type id {id}")]);
        assert!(matches!(e, GgufError::UnknownGgmlType { id: got, .. } if got == id));
    }
}

#[test]
fn types_qtool_cannot_decode_are_listed() {
    // IQ2_XXS (16): 256 elements, 66 bytes.
    let b = Gguf::header(3, 1, 0).tensor("iq", &[256], 16, 0).pad(32).data(66, 0);
    let f = open(&b).unwrap();
    assert_eq!(f.tensors()[0].dtype, TensorDType::Ggml(GgmlType::IQ2_XXS));
    assert_eq!(f.tensors()[0].nbytes, 66);
}

#[test]
fn row_not_whole_blocks() {
    let b = Gguf::header(3, 1, 0).tensor("q", &[48, 2], 8, 0).pad(32).data(256, 0);
    let e = fails(&b, &["'q'", "ne[0] = 48", "Q8_0"]);
    assert!(matches!(e, GgufError::PartialBlock { ne0: 48, .. }));
}

#[test]
fn unknown_value_type() {
    let b = Gguf::header(3, 0, 1).str("general.odd").u32(13).u32(0);
    let e = fails(&b, &["general.odd", "unknown value type 13"]);
    assert!(matches!(e, GgufError::UnknownValueType { id: 13, .. }));
}

#[test]
fn unknown_array_element_type() {
    let b = Gguf::header(3, 0, 1).str("general.odd").u32(9).u32(99).u64(0);
    let e = fails(&b, &["general.odd", "unknown value type 99"]);
    assert!(matches!(e, GgufError::UnknownValueType { id: 99, .. }));
}

#[test]
fn invalid_bool_byte() {
    let b = Gguf::header(3, 0, 1).str("general.flag").u32(7).u8(2);
    let e = fails(&b, &["general.flag", "bool byte 2"]);
    assert!(matches!(e, GgufError::InvalidBool { byte: 2, .. }));
}

#[test]
fn non_utf8_key() {
    let b = Gguf::header(3, 0, 1).bytes_str(b"general.\xff").u32(4).u32(1);
    let e = fails(&b, &["metadata key", "UTF-8"]);
    assert!(matches!(e, GgufError::NotUtf8 { offset: 40, .. }));
}

#[test]
fn non_utf8_tensor_name() {
    let b =
        Gguf::header(3, 1, 0).bytes_str(b"\xc3(").u32(1).u64(4).u32(0).u64(0).pad(32).data(16, 0);
    let e = fails(&b, &["tensor #0", "UTF-8"]);
    assert!(matches!(e, GgufError::NotUtf8 { .. }));
}

#[test]
fn non_utf8_string_value() {
    let b = Gguf::header(3, 0, 1).str("general.name").u32(8).bytes_str(b"\xfe");
    let e = fails(&b, &["general.name", "UTF-8"]);
    assert!(matches!(e, GgufError::NotUtf8 { .. }));
}

#[test]
fn alignment_not_power_of_two() {
    let e = fails(&Gguf::header(3, 0, 1).kv_u32("general.alignment", 48), &["48", "power of two"]);
    assert!(matches!(e, GgufError::BadAlignment { .. }));
}

#[test]
fn alignment_zero() {
    let e = fails(&Gguf::header(3, 0, 1).kv_u32("general.alignment", 0), &["power of two"]);
    assert!(matches!(e, GgufError::BadAlignment { .. }));
}

#[test]
fn alignment_of_wrong_type() {
    let b = Gguf::header(3, 0, 1).str("general.alignment").u32(10).u64(32);
    let e = fails(&b, &["UINT32", "UINT64"]);
    assert!(matches!(e, GgufError::BadAlignment { .. }));
}

#[test]
fn custom_alignment_is_honoured() {
    let b = Gguf::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[2], 1, 64)
        .pad(64)
        .data(64, 1)
        .data(4, 2);
    let f = open(&b).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.data(f.find("b").unwrap()), &[2; 4]);
}

#[test]
fn offset_aligned_to_32_but_not_to_custom_64() {
    let b = Gguf::header(3, 1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 32)
        .pad(64)
        .data(64, 0);
    let e = fails(&b, &["'a'", "alignment 64"]);
    assert!(matches!(e, GgufError::MisalignedOffset { .. }));
}

#[test]
fn long_tensor_names_are_accepted_by_the_reader() {
    let name = "n".repeat(100);
    let b = Gguf::header(3, 1, 0).tensor(&name, &[4], 0, 0).pad(32).data(16, 0);
    assert_eq!(open(&b).unwrap().tensors()[0].name, name);
}

#[test]
fn zero_dim_and_empty_tensors() {
    let b = Gguf::header(3, 2, 0)
        .tensor("scalar", &[], 0, 0)
        .tensor("empty", &[0, 3], 0, 32)
        .pad(32)
        .data(4, 9)
        .data(28, 0);
    let f = open(&b).unwrap();
    assert_eq!(f.find("scalar").unwrap().shape, Vec::<u64>::new());
    assert_eq!(f.data(f.find("scalar").unwrap()), &[9; 4]);
    assert_eq!(f.find("empty").unwrap().nbytes, 0);
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = GgufFile::open(Path::new("/nonexistent/qtool/x.gguf")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/qtool/x.gguf"));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random byte changes anywhere in a valid file: the reader may accept the result (a
        /// changed data byte is still a valid file) but must never panic, and whatever it
        /// accepts must have its tensor views inside the file.
        #[test]
        fn corrupted_bytes_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut bytes = valid().0;
            for (i, b) in edits {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            let w = write(&bytes);
            if let Ok(f) = GgufFile::open(&w.path) {
                for t in f.tensors() {
                    prop_assert_eq!(f.data(t).len() as u64, t.nbytes);
                    prop_assert!(t.offset + t.nbytes <= bytes.len() as u64);
                }
            }
        }
    }
}

#[test]
fn every_value_type_reads() {
    use qtool_formats::gguf::Array;
    let b = Gguf::header(3, 0, 14)
        .str("u8")
        .u32(0)
        .u8(250)
        .str("i8")
        .u32(1)
        .raw(&(-7i8).to_le_bytes())
        .str("u16")
        .u32(2)
        .raw(&65000u16.to_le_bytes())
        .str("i16")
        .u32(3)
        .raw(&(-300i16).to_le_bytes())
        .str("u32")
        .u32(4)
        .u32(4_000_000_000)
        .str("i32")
        .u32(5)
        .raw(&(-5i32).to_le_bytes())
        .str("f32")
        .u32(6)
        .raw(&1.5f32.to_le_bytes())
        .str("bool")
        .u32(7)
        .u8(1)
        .str("string")
        .u32(8)
        .str("ü")
        .str("array")
        .u32(9)
        .u32(3)
        .u64(2)
        .raw(&(-1i16).to_le_bytes())
        .raw(&2i16.to_le_bytes())
        .str("u64")
        .u32(10)
        .u64(u64::MAX)
        .str("i64")
        .u32(11)
        .raw(&i64::MIN.to_le_bytes())
        .str("f64")
        .u32(12)
        .raw(&(-2.25f64).to_le_bytes())
        .str("empty")
        .u32(9)
        .u32(12)
        .u64(0);
    let f = open(&b).unwrap();
    let want = [
        Value::U8(250),
        Value::I8(-7),
        Value::U16(65000),
        Value::I16(-300),
        Value::U32(4_000_000_000),
        Value::I32(-5),
        Value::F32(1.5),
        Value::Bool(true),
        Value::String("ü".into()),
        Value::Array(Array::I16(vec![-1, 2])),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(-2.25),
        Value::Array(Array::F64(vec![])),
    ];
    let got: Vec<&Value> = f.kvs().iter().map(|(_, v)| v).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>());
    assert_eq!(f.get_u32("u32"), Some(4_000_000_000));
    assert_eq!(f.get_u32("u64"), None, "typed getters are strict");
    assert_eq!(f.kv("u8").and_then(Value::as_u64), Some(250));
    assert_eq!(f.get_f64("f64"), Some(-2.25));
    assert_eq!(f.get_bool("bool"), Some(true));
    let meta = f.metadata();
    assert_eq!(meta["i64"], serde_json::json!(i64::MIN));
    assert_eq!(meta["array"], serde_json::json!([-1, 2]));
    assert_eq!(meta["empty"], serde_json::json!([]));
}
