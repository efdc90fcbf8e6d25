//! Round trips of `convert` on a small synthetic llama model with grouped-query attention:
//! HF → GGUF → HF is lossless for float types, the GGUF holds what llama.cpp expects (reversed
//! shapes, q/k rows permuted per head, hyper-parameter and tokenizer KVs), and quantized GGUF
//! decodes back within the codec's error.

mod convert_support;

use std::path::Path;

use convert_support::*;
use qtool_formats::gguf::{Array, GgufFile, Value};
use qtool_formats::safetensors::SafetensorsSource;
use qtool_formats::{DType, GgmlType, TensorDType, TensorSource};
use qtool_quantizers::convert::{convert, ConvertOptions, HfDType};
use qtool_quantizers::decode::decode_all;

fn run(input: &Path, output: &Path, fmt: Option<&str>, dtype: Option<HfDType>) {
    let opts = ConvertOptions { fmt: fmt.map(String::from), dtype };
    convert(input, output, &opts, &mut |_, _, _| {}).unwrap();
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The GGUF row order written out as the reference converter's reshape/swapaxes: within each
/// head of `hd` rows, GGUF row `2i + j` is HF row `j * hd/2 + i`.
fn reference_permute(rows: &[Vec<f32>], heads: usize) -> Vec<Vec<f32>> {
    let hd = rows.len() / heads;
    let mut out = Vec::new();
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                out.push(rows[h * hd + j * (hd / 2) + i].clone());
            }
        }
    }
    out
}

fn kv<'a>(f: &'a GgufFile, key: &str) -> &'a Value {
    f.kv(key).unwrap_or_else(|| panic!("missing {key}"))
}

#[test]
fn hf_to_gguf_f32_has_llama_cpp_layout_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let data = write_model(&hf, DType::F32, false);
    let out = dir.path().join("m.gguf");
    run(&hf, &out, Some("f32"), None);
    let g = GgufFile::open(&out).unwrap();

    assert_eq!(g.tensors().len(), data.len());
    // llama.cpp's order: global tensors first (by name), then by layer and name.
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        &names[..4],
        ["output.weight", "output_norm.weight", "token_embd.weight", "blk.0.attn_k.weight"]
    );
    for t in g.tensors() {
        assert_eq!(t.dtype, TensorDType::Ggml(GgmlType::F32), "{}", t.name);
        let hf_name = qtool_formats::naming::gguf_to_hf_name(&t.name).unwrap();
        let src = &data[&hf_name];
        let spec = tensor_specs(false).into_iter().find(|(n, _)| *n == hf_name).unwrap().1;
        let rev: Vec<u64> = spec.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.shape, rev, "{}: ne is the HF shape reversed", t.name);
        let got = f32s(g.data(t));
        let want: Vec<f32> =
            if t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight") {
                let heads = if t.name.ends_with("attn_q.weight") { HEADS } else { KV_HEADS };
                let rows: Vec<Vec<f32>> = src.chunks(HIDDEN).map(<[f32]>::to_vec).collect();
                reference_permute(&rows, heads).concat()
            } else {
                src.clone()
            };
        assert_eq!(got, want, "{}", t.name);
    }

    assert_eq!(kv(&g, "general.architecture").as_str(), Some("llama"));
    assert!(matches!(kv(&g, "general.file_type"), Value::U32(0)));
    assert!(g.kv("general.quantization_version").is_none(), "no quantized tensor");
    for (key, want) in [
        ("llama.block_count", LAYERS),
        ("llama.embedding_length", HIDDEN),
        ("llama.feed_forward_length", FFN),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV_HEADS),
        ("llama.rope.dimension_count", HEAD_DIM),
        ("llama.context_length", 256),
        ("llama.vocab_size", VOCAB),
    ] {
        assert!(matches!(kv(&g, key), Value::U32(v) if *v as usize == want), "{key}");
    }
    assert!(
        matches!(kv(&g, "llama.attention.layer_norm_rms_epsilon"), Value::F32(e) if *e == 1e-6f32)
    );
    assert!(matches!(kv(&g, "llama.rope.freq_base"), Value::F32(e) if *e == 10000.0));
    assert_eq!(kv(&g, "tokenizer.ggml.model").as_str(), Some("gpt2"));
    assert_eq!(kv(&g, "tokenizer.ggml.pre").as_str(), Some("gpt-2"));
    let Value::Array(Array::String(tokens)) = kv(&g, "tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    assert_eq!(tokens.len(), VOCAB);
    assert_eq!(tokens[4], "b");
    let Value::Array(Array::I32(types)) = kv(&g, "tokenizer.ggml.token_type") else {
        panic!("types")
    };
    assert_eq!(&types[..10], [3, 3, 3, 1, 1, 1, 1, 1, 4, 1]);
    let Value::Array(Array::String(merges)) = kv(&g, "tokenizer.ggml.merges") else {
        panic!("merges")
    };
    assert_eq!(merges, &["a b", "Ġ ab"]);
    assert!(matches!(kv(&g, "tokenizer.ggml.bos_token_id"), Value::U32(1)));
    assert!(matches!(kv(&g, "tokenizer.ggml.eos_token_id"), Value::U32(2)));
    assert!(matches!(kv(&g, "tokenizer.ggml.unknown_token_id"), Value::U32(0)));
    assert!(matches!(kv(&g, "tokenizer.ggml.add_bos_token"), Value::Bool(false)));
    assert!(kv(&g, "tokenizer.chat_template").as_str().unwrap().contains("m['content']"));
}

fn hf_tensors(dir: &Path) -> SafetensorsSource {
    SafetensorsSource::open_file(&dir.join("model.safetensors")).unwrap()
}

#[test]
fn f32_round_trip_is_bit_exact_with_gqa_permutation_undone() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let data = write_model(&hf, DType::F32, false);
    let gguf = dir.path().join("m.gguf");
    run(&hf, &gguf, Some("f32"), None);
    let back = dir.path().join("back");
    run(&gguf, &back, None, None);

    let st = hf_tensors(&back);
    assert_eq!(st.tensors().len(), data.len());
    for (name, want) in &data {
        let t = st.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.info.dtype, TensorDType::St(DType::F32), "{name}");
        assert_eq!(&decode_all(t).unwrap(), want, "{name}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
    let orig = config(false);
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "torch_dtype",
    ] {
        assert_eq!(cfg[key], orig[key], "{key}");
    }
    // The tokenizer survives too: converting back gives the same tokenizer KVs.
    let gguf2 = dir.path().join("m2.gguf");
    run(&back, &gguf2, Some("f32"), None);
    let (a, b) = (GgufFile::open(&gguf).unwrap(), GgufFile::open(&gguf2).unwrap());
    for (k, v) in
        a.kvs().iter().filter(|(k, _)| k.starts_with("tokenizer.") || k.starts_with("llama."))
    {
        assert_eq!(b.kv(k).map(|x| format!("{x:?}")), Some(format!("{v:?}")), "{k}");
    }
    for t in a.tensors() {
        assert_eq!(a.data(t), b.data(b.find(&t.name).unwrap()), "{}", t.name);
    }
}

#[test]
fn half_precision_sources_round_trip_in_their_own_type() {
    for (dtype, fmt, hf_dtype) in
        [(DType::BF16, "bf16", HfDType::BF16), (DType::F16, "f16", HfDType::F16)]
    {
        let dir = tempfile::tempdir().unwrap();
        let hf = dir.path().join("hf");
        let data = write_model(&hf, dtype, true);
        let gguf = dir.path().join("m.gguf");
        run(&hf, &gguf, Some(fmt), None);
        let g = GgufFile::open(&gguf).unwrap();
        assert!(g.find("output.weight").is_none(), "tied embeddings write no output tensor");
        let norm = g.find("output_norm.weight").unwrap();
        assert_eq!(norm.dtype, TensorDType::Ggml(GgmlType::F32), "norms stay F32 as in llama.cpp");
        let back = dir.path().join("back");
        run(&gguf, &back, None, None);
        let st = hf_tensors(&back);
        assert!(st.find("lm_head.weight").is_none());
        for (name, want) in &data {
            let t = st.get(name).unwrap();
            assert_eq!(
                t.info.dtype,
                TensorDType::St(hf_dtype.dtype()),
                "{fmt} {name}: the lossless type"
            );
            assert_eq!(&decode_all(t).unwrap(), want, "{fmt} {name}");
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["tie_word_embeddings"], true);
        assert_eq!(cfg["torch_dtype"], hf_dtype.torch_name());
    }
}

#[test]
fn explicit_dtype_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let data = write_model(&hf, DType::F32, false);
    let gguf = dir.path().join("m.gguf");
    run(&hf, &gguf, Some("f32"), None);
    let back = dir.path().join("back");
    run(&gguf, &back, None, Some(HfDType::BF16));
    let st = hf_tensors(&back);
    for (name, want) in &data {
        let t = st.get(name).unwrap();
        assert_eq!(t.info.dtype, TensorDType::St(DType::BF16));
        let want: Vec<f32> = want.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect();
        assert_eq!(decode_all(t).unwrap(), want, "{name}");
    }
}

#[test]
fn q8_0_decodes_back_within_the_block_error() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let data = write_model(&hf, DType::F32, false);
    let gguf = dir.path().join("m.gguf");
    run(&hf, &gguf, Some("q8_0"), None);
    let g = GgufFile::open(&gguf).unwrap();
    assert!(matches!(kv(&g, "general.file_type"), Value::U32(7)));
    assert!(matches!(kv(&g, "general.quantization_version"), Value::U32(2)));
    for t in g.tensors() {
        let want = if t.shape.len() == 1 { GgmlType::F32 } else { GgmlType::Q8_0 };
        assert_eq!(t.dtype, TensorDType::Ggml(want), "{}", t.name);
    }
    let back = dir.path().join("back");
    run(&gguf, &back, None, None);
    let st = hf_tensors(&back);
    for (name, want) in &data {
        let got = decode_all(st.get(name).unwrap()).unwrap();
        // Per block of 32 along a row: |error| <= d/2 with d = amax/127, plus |q| <= 127 times
        // the fp16 rounding of d (2^-11 relative): 0.5 d + 127 * 2^-11 d < 0.57 d; plus the
        // fp16 rounding of the input itself (quantized conversions quantize what an F16
        // conversion holds), at most 2^-11 amax. A wrong q/k un-permutation would move whole
        // rows and fail by far more.
        for (gb, wb) in got.chunks(32).zip(want.chunks(32)) {
            let amax = wb.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = amax / 127.0 * 0.57 + amax / 2048.0 + 1e-7;
            for (a, b) in gb.iter().zip(wb) {
                assert!((a - b).abs() <= tol, "{name}: {a} vs {b} (tol {tol})");
            }
        }
    }
}

#[test]
fn q4_k_m_recipe_uses_llama_cpp_fallbacks_for_narrow_rows() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    write_model(&hf, DType::F32, false);
    let gguf = dir.path().join("m.gguf");
    run(&hf, &gguf, Some("q4_k_m"), None);
    let g = GgufFile::open(&gguf).unwrap();
    assert!(matches!(kv(&g, "general.file_type"), Value::U32(15)));
    // Rows of 64 or 96 are not whole 256-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0.
    let ty = |n: &str| match g.find(n).unwrap().dtype {
        TensorDType::Ggml(t) => t,
        TensorDType::St(_) => unreachable!(),
    };
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(ty("output.weight"), GgmlType::Q8_0);
    // use_more_bits(i, 2) holds for layer 1 only (i >= 7*2/8): Q6_K there, falling back to Q8_0.
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
}

#[test]
fn output_bytes_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    write_model(&hf, DType::F32, false);
    let mut outputs = Vec::new();
    for threads in [1, 4] {
        let out = dir.path().join(format!("m{threads}.gguf"));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&hf, &out, Some("q4_k_m"), None));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
}
