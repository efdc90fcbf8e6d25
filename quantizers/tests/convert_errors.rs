//! Bad inputs to `convert`, one named case each: a precise error naming the file (and tensor or
//! key), and nothing left at the output path.

mod convert_support;

use std::path::{Path, PathBuf};

use convert_support::*;
use qtool_formats::gguf::{Array, GgufFile, GgufWriter, Value, DEFAULT_ALIGNMENT};
use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, GgmlType, PlannedTensor, TensorDType, TensorSink, TensorSource};
use qtool_quantizers::convert::{convert, ConvertOptions, HfDType};

fn try_convert(input: &Path, output: &Path, fmt: Option<&str>, dtype: Option<HfDType>) -> String {
    let opts = ConvertOptions { fmt: fmt.map(String::from), dtype };
    let err = convert(input, output, &opts, &mut |_, _, _| {}).expect_err("conversion should fail");
    assert!(!output.exists(), "a failed conversion left {}", output.display());
    // No staging directory is left next to the output either.
    if let Some(parent) = output.parent() {
        for e in std::fs::read_dir(parent).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("qtool-tmp"), "staging left behind: {name}");
        }
    }
    err.to_string()
}

fn model(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    write_model(&hf, DType::F32, false);
    hf
}

/// A converted GGUF of the synthetic model.
fn gguf(dir: &Path) -> PathBuf {
    let hf = model(dir);
    let out = dir.join("m.gguf");
    convert(&hf, &out, &ConvertOptions { fmt: Some("f32".into()), dtype: None }, &mut |_, _, _| {})
        .unwrap();
    out
}

/// Rewrites a GGUF with edited KVs and optionally one extra F32 tensor.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<(String, Value)>),
    extra: Option<(&str, Vec<u64>)>,
) {
    let f = GgufFile::open(src).unwrap();
    let mut kvs = f.kvs().to_vec();
    edit(&mut kvs);
    let mut plan: Vec<PlannedTensor> = f
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        })
        .collect();
    if let Some((name, shape)) = &extra {
        let n: u64 = shape.iter().product();
        plan.push(PlannedTensor {
            name: (*name).into(),
            dtype: TensorDType::Ggml(GgmlType::F32),
            shape: shape.clone(),
            nbytes: n * 4,
        });
    }
    let mut w = GgufWriter::create(dst, kvs, plan, DEFAULT_ALIGNMENT).unwrap();
    for t in f.tensors() {
        w.write(&t.name, f.data(t)).unwrap();
    }
    if let Some((name, shape)) = extra {
        let n: u64 = shape.iter().product();
        w.write(name, &vec![0u8; n as usize * 4]).unwrap();
    }
    w.finish().unwrap();
}

fn set(kvs: &mut [(String, Value)], key: &str, v: Value) {
    kvs.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key}")).1 = v;
}

fn edit_config(hf: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut cfg);
    write_json(&p, &cfg);
}

#[test]
fn unknown_hf_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    edit_config(&hf, |c| c["architectures"] = serde_json::json!(["GemmaForCausalLM"]));
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("config.json") && err.contains("'GemmaForCausalLM'"), "{err}");
    assert!(
        err.contains("LlamaForCausalLM")
            && err.contains("Qwen2ForCausalLM")
            && err.contains("qwen3"),
        "{err}"
    );
}

#[test]
fn unknown_gguf_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("gemma.gguf");
    rewrite(&g, &bad, |kvs| set(kvs, "general.architecture", Value::String("gemma".into())), None);
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("gemma.gguf") && err.contains("'gemma'"), "{err}");
    assert!(err.contains("llama (LlamaForCausalLM, MistralForCausalLM)"), "{err}");
}

#[test]
fn missing_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    std::fs::remove_file(hf.join("config.json")).unwrap();
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("no config.json"), "{err}");
}

#[test]
fn missing_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("no tokenizer.json"), "{err}");
}

#[test]
fn missing_hyperparameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    edit_config(&hf, |c| {
        c.as_object_mut().unwrap().remove("intermediate_size");
    });
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("config.json") && err.contains("'intermediate_size'"), "{err}");
}

#[test]
fn tensor_outside_the_llama_layout_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    let plan = vec![PlannedTensor {
        name: "model.vision_tower.proj.weight".into(),
        dtype: TensorDType::St(DType::F32),
        shape: vec![2, 2],
        nbytes: 16,
    }];
    let mut w =
        SafetensorsWriter::create(&hf.join("extra.safetensors"), plan, Default::default(), None)
            .unwrap();
    w.write("model.vision_tower.proj.weight", &[0u8; 16]).unwrap();
    w.finish().unwrap();
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(
        err.contains("extra.safetensors") && err.contains("'model.vision_tower.proj.weight'"),
        "{err}"
    );
}

#[test]
fn non_float_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    write_model(&hf, DType::F32, false);
    // Replace the norm by an I32 tensor of the same shape, in a shard of its own.
    let st =
        qtool_formats::safetensors::SafetensorsSource::open_file(&hf.join("model.safetensors"))
            .unwrap();
    let mut plan = Vec::new();
    for t in st.tensors() {
        let dtype =
            if t.name == "model.norm.weight" { TensorDType::St(DType::I32) } else { t.dtype };
        plan.push(PlannedTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        });
    }
    let p = dir.path().join("copy.safetensors");
    let mut w = SafetensorsWriter::create(&p, plan, Default::default(), None).unwrap();
    for t in st.tensors() {
        w.write(&t.name, st.data(t)).unwrap();
    }
    w.finish().unwrap();
    drop(st);
    std::fs::rename(&p, hf.join("model.safetensors")).unwrap();
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("'model.norm.weight'") && err.contains("I32"), "{err}");
}

#[test]
fn weights_out_of_f16_range_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    write_model(&hf, DType::F32, false);
    // Overwrite the first value of o_proj with 1e6 (Inf in f16).
    let st =
        qtool_formats::safetensors::SafetensorsSource::open_file(&hf.join("model.safetensors"))
            .unwrap();
    let t = st.find("model.layers.1.self_attn.o_proj.weight").unwrap().clone();
    drop(st);
    let mut bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    bytes[t.offset as usize..t.offset as usize + 4].copy_from_slice(&1e6f32.to_le_bytes());
    std::fs::write(hf.join("model.safetensors"), bytes).unwrap();
    let err = try_convert(&hf, &dir.path().join("o.gguf"), Some("f16"), None);
    assert!(
        err.contains("'model.layers.1.self_attn.o_proj.weight'") && err.contains("Inf or NaN"),
        "{err}"
    );
}

#[test]
fn odd_head_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    edit_config(&hf, |c| {
        c["num_attention_heads"] = serde_json::json!(64);
        c["num_key_value_heads"] = serde_json::json!(64);
    });
    let err = try_convert(&hf, &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("head size 1"), "{err}");
}

#[test]
fn unknown_and_refused_formats() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    let err = try_convert(&hf, &dir.path().join("o.gguf"), Some("q9_9"), None);
    assert!(err.contains("\"q9_9\"") && err.contains("Q4_K_M"), "{err}");
    let err = try_convert(&hf, &dir.path().join("o.gguf"), Some("iq2_xxs"), None);
    assert!(err.contains("importance"), "{err}");
}

#[test]
fn dtype_for_gguf_output_and_fmt_for_hf_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let err =
        try_convert(&dir.path().join("hf"), &dir.path().join("o.gguf"), None, Some(HfDType::F16));
    assert!(err.contains("--dtype"), "{err}");
    let err = try_convert(&g, &dir.path().join("out"), Some("q8_0"), None);
    assert!(err.contains("--fmt"), "{err}");
}

#[test]
fn single_safetensors_file_is_not_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let hf = model(dir.path());
    let err = try_convert(&hf.join("model.safetensors"), &dir.path().join("o.gguf"), None, None);
    assert!(err.contains("model directory"), "{err}");
}

#[test]
fn existing_non_empty_output_directory_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let opts = ConvertOptions::default();
    let err = convert(&g, &out, &opts, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("not an empty directory"), "{err}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    convert(&g, &empty, &opts, &mut |_, _, _| {}).unwrap();
    assert!(empty.join("config.json").is_file());
}

#[test]
fn unsupported_gguf_tokenizer_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("spm.gguf");
    rewrite(&g, &bad, |kvs| set(kvs, "tokenizer.ggml.model", Value::String("t5".into())), None);
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("spm.gguf") && err.contains("tokenizer model 't5'"), "{err}");
}

#[test]
fn unknown_gguf_pre_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("pre.gguf");
    rewrite(
        &g,
        &bad,
        |kvs| set(kvs, "tokenizer.ggml.pre", Value::String("deepseek-coder".into())),
        None,
    );
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("'deepseek-coder'") && err.contains("smollm"), "{err}");
}

#[test]
fn token_type_length_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("types.gguf");
    rewrite(
        &g,
        &bad,
        |kvs| set(kvs, "tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 3]))),
        None,
    );
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("'tokenizer.ggml.token_type' has 3 entries"), "{err}");
}

#[test]
fn special_token_id_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("bos.gguf");
    rewrite(
        &g,
        &bad,
        |kvs| set(kvs, "tokenizer.ggml.bos_token_id", Value::U32(4_000_000_000)),
        None,
    );
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("'tokenizer.ggml.bos_token_id'"), "{err}");
}

#[test]
fn missing_gguf_hyperparameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("nolayers.gguf");
    rewrite(&g, &bad, |kvs| kvs.retain(|(k, _)| k != "llama.block_count"), None);
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("'llama.block_count' is missing"), "{err}");
}

#[test]
fn llama3_rope_freqs_tensor_is_refused_for_hf_output() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("rope.gguf");
    rewrite(&g, &bad, |_| {}, Some(("rope_freqs.weight", vec![(HEAD_DIM / 2) as u64])));
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("'rope_freqs.weight'") && err.contains("Llama-3"), "{err}");
}

#[test]
fn truncated_gguf_is_a_reader_error() {
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bytes = std::fs::read(&g).unwrap();
    let bad = dir.path().join("short.gguf");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(err.contains("short.gguf"), "{err}");
}

#[test]
fn q_rows_not_matching_the_heads_are_refused() {
    // A config whose heads fit the width but whose q_proj has a different row count.
    let dir = tempfile::tempdir().unwrap();
    let g = gguf(dir.path());
    let bad = dir.path().join("heads.gguf");
    // 64 rows of width 64 split into 3 heads: not a whole number of heads.
    rewrite(
        &g,
        &bad,
        |kvs| {
            set(kvs, "llama.attention.head_count", Value::U32(3));
            set(kvs, "llama.attention.head_count_kv", Value::U32(1));
            set(kvs, "llama.embedding_length", Value::U32(66));
            set(kvs, "llama.rope.dimension_count", Value::U32(22));
        },
        None,
    );
    let err = try_convert(&bad, &dir.path().join("out"), None, None);
    assert!(
        err.contains("'blk.0.attn_k.weight'") || err.contains("'blk.0.attn_q.weight'"),
        "{err}"
    );
    assert!(err.contains("heads"), "{err}");
}
