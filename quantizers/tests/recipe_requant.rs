//! GGUF → GGUF requantization over real files written in the test: metadata, order, shapes,
//! bytes, thread-count independence, and one named test per failure case.

use std::path::{Path, PathBuf};

use qtool_formats::gguf::{GgufFile, GgufWriter, Value};
use qtool_formats::{GgmlType as G, PlannedTensor, TensorDType, TensorSource};
use qtool_quantizers::gguf::{dequantize, quantize_rows};
use qtool_quantizers::recipe::{
    prepare, requantize_to_path, FileType, RecipeOptions, RequantError,
};

struct Tensor {
    name: &'static str,
    ne: Vec<u64>,
    ty: G,
    bytes: Vec<u8>,
}

/// Deterministic weights: a sine pattern scaled per tensor (no RNG dependency needed).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + seed * 13) as f32 * 0.37).sin() * 0.05 * (1.0 + (i % 17) as f32 / 8.0))
        .collect()
}

fn f32_tensor(name: &'static str, ne: &[u64], seed: usize) -> Tensor {
    let n = ne.iter().product::<u64>() as usize;
    let bytes = values(n, seed).iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor { name, ne: ne.to_vec(), ty: G::F32, bytes }
}

fn encoded(name: &'static str, ne: &[u64], ty: G, seed: usize) -> Tensor {
    let n = ne.iter().product::<u64>() as usize;
    let mut bytes = vec![0u8; ty.byte_len(ne[0], n as u64).unwrap() as usize];
    quantize_rows(ty, &values(n, seed), ne[0] as usize, &mut bytes).unwrap();
    Tensor { name, ne: ne.to_vec(), ty, bytes }
}

fn base_kvs() -> Vec<(String, Value)> {
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.file_type".into(), Value::U32(0)),
        ("llama.block_count".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(32)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("split.count".into(), Value::U16(1)),
        ("general.quantization_version".into(), Value::U32(2)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(qtool_formats::gguf::Array::String(vec!["a".into(), "b".into()])),
        ),
    ]
}

fn write_gguf(path: &Path, kvs: Vec<(String, Value)>, tensors: &[Tensor]) {
    let plan = tensors
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.into(),
            dtype: TensorDType::Ggml(t.ty),
            shape: t.ne.clone(),
            nbytes: t.bytes.len() as u64,
        })
        .collect();
    let mut w = GgufWriter::create(path, kvs, plan, 32).unwrap();
    for t in tensors {
        qtool_formats::TensorSink::write(&mut w, t.name, &t.bytes).unwrap();
    }
    w.finish().unwrap();
}

/// Two layers in converter order (unsorted), one 1-D norm stored with a trailing 1.
fn small_model(dir: &Path) -> PathBuf {
    let path = dir.join("in.gguf");
    let tensors = vec![
        f32_tensor("token_embd.weight", &[256, 64], 1),
        f32_tensor("blk.0.attn_norm.weight", &[256, 1], 2),
        f32_tensor("blk.0.attn_v.weight", &[256, 64], 3),
        f32_tensor("blk.0.ffn_down.weight", &[512, 256], 4),
        f32_tensor("blk.1.attn_v.weight", &[256, 64], 5),
        f32_tensor("blk.1.ffn_down.weight", &[512, 256], 6),
        f32_tensor("output_norm.weight", &[256], 7),
    ];
    write_gguf(&path, base_kvs(), &tensors);
    path
}

fn run(
    input: &Path,
    out: &Path,
    ftype: FileType,
    threads: usize,
    allow: bool,
) -> Result<PathBuf, RequantError> {
    let file = GgufFile::open(input).unwrap();
    let plan = prepare(&file, ftype, &RecipeOptions::default())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| requantize_to_path(&file, &plan, allow, out, &mut |_, _| {}))
}

#[test]
fn q4_k_m_output_layout_metadata_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_model(dir.path());
    let out = dir.path().join("out.gguf");
    run(&input, &out, FileType::Q4_K_M, 2, false).unwrap();
    let src = GgufFile::open(&input).unwrap();
    let got = GgufFile::open(&out).unwrap();

    // Metadata: input order minus file_type, quantization_version and split.*, then those two.
    let keys: Vec<&str> = got.kvs().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "general.architecture",
            "llama.block_count",
            "general.alignment",
            "llama.attention.head_count",
            "tokenizer.ggml.tokens",
            "general.quantization_version",
            "general.file_type",
        ]
    );
    assert_eq!(got.get_u32("general.file_type"), Some(15));
    assert_eq!(got.get_u32("general.quantization_version"), Some(2));
    assert_eq!(got.alignment(), 32);

    // Order: global tensors first by name, then by layer; shapes with ggml_n_dims dimensions.
    let names: Vec<(&str, G, &[u64])> = got
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                match t.dtype {
                    TensorDType::Ggml(g) => g,
                    _ => unreachable!(),
                },
                t.shape.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("output_norm.weight", G::F32, &[256u64][..]),
            ("token_embd.weight", G::Q6_K, &[256, 64][..]),
            ("blk.0.attn_norm.weight", G::F32, &[256][..]),
            // use_more_bits(i, 2): n/8 = 0 and 7n/8 = 1, so layer 1 only.
            ("blk.0.attn_v.weight", G::Q4_K, &[256, 64][..]),
            ("blk.0.ffn_down.weight", G::Q4_K, &[512, 256][..]),
            ("blk.1.attn_v.weight", G::Q6_K, &[256, 64][..]),
            ("blk.1.ffn_down.weight", G::Q6_K, &[512, 256][..]),
        ]
    );

    // Bytes: copies are verbatim, conversions are the reference codec on the decoded input.
    for t in got.tensors() {
        let s = src.find(&t.name).unwrap();
        let TensorDType::Ggml(ty) = t.dtype else { unreachable!() };
        if s.dtype == t.dtype {
            assert_eq!(got.data(t), src.data(s), "{}", t.name);
            continue;
        }
        let mut x = vec![0f32; s.numel() as usize];
        dequantize(G::F32, src.data(s), &mut x).unwrap();
        let mut want = vec![0u8; t.nbytes as usize];
        quantize_rows(ty, &x, t.shape[0] as usize, &mut want).unwrap();
        assert_eq!(got.data(t), &want[..], "{}", t.name);
    }
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_model(dir.path());
    let outputs: Vec<Vec<u8>> = [1, 3, 8]
        .iter()
        .map(|&n| {
            let out = dir.path().join(format!("out{n}.gguf"));
            run(&input, &out, FileType::Q5_K_M, n, false).unwrap();
            std::fs::read(out).unwrap()
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}

#[test]
fn quantized_input_needs_allow_requantize() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("q8.gguf");
    write_gguf(&input, base_kvs(), &[encoded("blk.0.attn_q.weight", &[256, 8], G::Q8_0, 1)]);
    let out = dir.path().join("out.gguf");
    let err = run(&input, &out, FileType::Q4_0, 1, false).unwrap_err();
    assert!(matches!(err, RequantError::RequantizeDisabled { ty: G::Q8_0, .. }), "{err}");
    assert!(err.to_string().contains("blk.0.attn_q.weight"));
    assert!(!out.exists());
    run(&input, &out, FileType::Q4_0, 1, true).unwrap();
    // Same type: copied even without the flag.
    let out8 = dir.path().join("out8.gguf");
    run(&input, &out8, FileType::Q8_0, 1, false).unwrap();
    let got = GgufFile::open(&out8).unwrap();
    let src = GgufFile::open(&input).unwrap();
    assert_eq!(got.data(&got.tensors()[0]), src.data(&src.tensors()[0]));
}

#[test]
fn overflowing_f16_output_is_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.gguf");
    let mut t = f32_tensor("blk.0.attn_q.weight", &[64, 4], 1);
    t.bytes[40..44].copy_from_slice(&1.0e6f32.to_le_bytes());
    write_gguf(&input, base_kvs(), &[t]);
    let out = dir.path().join("out.gguf");
    let err = run(&input, &out, FileType::MostlyF16, 2, false).unwrap_err();
    assert!(matches!(err, RequantError::InvalidOutput { ty: G::F16, block: 10, .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn infinite_weight_is_rejected_for_block_types() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("inf.gguf");
    let mut t = f32_tensor("blk.0.attn_q.weight", &[64, 4], 1);
    t.bytes[200..204].copy_from_slice(&f32::INFINITY.to_le_bytes());
    write_gguf(&input, base_kvs(), &[t]);
    let out = dir.path().join("out.gguf");
    let err = run(&input, &out, FileType::Q8_0, 1, false).unwrap_err();
    // Value 50 sits in block 1 of row 0.
    assert!(matches!(err, RequantError::InvalidOutput { ty: G::Q8_0, block: 1, .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn integer_weight_cannot_be_converted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("int.gguf");
    let t =
        Tensor { name: "blk.0.attn_q.weight", ne: vec![32, 2], ty: G::I32, bytes: vec![0; 256] };
    write_gguf(&input, base_kvs(), &[t]);
    let err = run(&input, &dir.path().join("out.gguf"), FileType::Q8_0, 1, true).unwrap_err();
    assert!(matches!(err, RequantError::CannotDecode { ty: G::I32, .. }), "{err}");
}

#[test]
fn missing_block_count_is_a_recipe_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nokv.gguf");
    let kvs = vec![("general.architecture".to_string(), Value::String("llama".into()))];
    write_gguf(&input, kvs, &[f32_tensor("blk.0.attn_q.weight", &[32, 2], 1)]);
    let err = run(&input, &dir.path().join("out.gguf"), FileType::Q8_0, 1, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RequantError::Recipe { .. }), "{msg}");
    assert!(msg.contains("nokv.gguf") && msg.contains("llama.block_count"), "{msg}");
}

#[test]
fn writing_over_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_model(dir.path());
    let before = std::fs::read(&input).unwrap();
    let err = run(&input, &input, FileType::Q8_0, 1, false).unwrap_err();
    assert!(matches!(err, RequantError::Format(_)), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}
