//! llama.cpp's per-tensor recipe rules, checked on tensor lists built in the test. The expected
//! types come from the rules as stated in LC `src/llama-quant.cpp` (written out by hand below),
//! and `tests/crosscheck/test_gguf_quantize.py` checks the same plans against llama.cpp itself.

use qtool_formats::gguf::Value;
use qtool_formats::GgmlType as G;
use qtool_quantizers::recipe::gguf::{
    ggml_n_dims, layer_of, quantization_exclusion, use_more_bits, weight_order, Category,
};
use qtool_quantizers::recipe::{
    plan, Choice, FileType, ModelParams, RecipeError, RecipeOptions, RecipePlan, TensorDesc,
    TensorTypeOverride,
};

fn llama(n_layer: u32, n_head: u32, n_head_kv: u32, n_expert: u32) -> ModelParams {
    ModelParams { arch: "llama".into(), n_layer, n_expert, n_head, n_head_kv }
}

fn t(name: &str, ne: &[u64]) -> TensorDesc {
    TensorDesc { name: name.into(), ne: ne.to_vec(), ty: G::F16 }
}

/// A llama-shaped tensor list in file order (llama.cpp's converter order, not sorted).
fn model(n_layer: u32, n_embd: u64, n_ff: u64, kv: u64, tied: bool) -> Vec<TensorDesc> {
    let mut v = vec![t("token_embd.weight", &[n_embd, 1000])];
    for i in 0..n_layer {
        let p = format!("blk.{i}.");
        v.push(t(&format!("{p}attn_norm.weight"), &[n_embd]));
        v.push(t(&format!("{p}ffn_down.weight"), &[n_ff, n_embd]));
        v.push(t(&format!("{p}ffn_gate.weight"), &[n_embd, n_ff]));
        v.push(t(&format!("{p}ffn_up.weight"), &[n_embd, n_ff]));
        v.push(t(&format!("{p}ffn_norm.weight"), &[n_embd]));
        v.push(t(&format!("{p}attn_k.weight"), &[n_embd, kv]));
        v.push(t(&format!("{p}attn_output.weight"), &[n_embd, n_embd]));
        v.push(t(&format!("{p}attn_q.weight"), &[n_embd, n_embd]));
        v.push(t(&format!("{p}attn_v.weight"), &[n_embd, kv]));
    }
    v.push(t("output_norm.weight", &[n_embd]));
    if !tied {
        v.push(t("output.weight", &[n_embd, 1000]));
    }
    v
}

fn ty(p: &RecipePlan, name: &str) -> G {
    p.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}")).to
}

fn layers_with(p: &RecipePlan, n: u32, suffix: &str, want: G) -> Vec<u32> {
    (0..n).filter(|i| ty(p, &format!("blk.{i}.{suffix}")) == want).collect()
}

#[test]
fn use_more_bits_tables_for_30_and_32_layers() {
    // n = 32: n/8 = 4, 7n/8 = 28, then every third layer from 4 + 2.
    let got: Vec<i32> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
    assert_eq!(got, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    // n = 30: n/8 = 3, 7n/8 = 26 (integer division).
    let got: Vec<i32> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
    assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
}

#[test]
fn q4_k_m_uses_more_bits_for_attn_v_and_ffn_down_in_32_layers() {
    let m = llama(32, 32, 8, 0);
    let p =
        plan(FileType::Q4_K_M, &m, &model(32, 4096, 11008, 1024, false), &RecipeOptions::default())
            .unwrap();
    let more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
    assert_eq!(layers_with(&p, 32, "attn_v.weight", G::Q6_K), more);
    assert_eq!(layers_with(&p, 32, "ffn_down.weight", G::Q6_K), more);
    assert_eq!(layers_with(&p, 32, "attn_q.weight", G::Q4_K).len(), 32);
    assert_eq!(ty(&p, "output.weight"), G::Q6_K);
    assert_eq!(ty(&p, "token_embd.weight"), G::Q4_K, "untied embeddings keep the default");
    assert_eq!(ty(&p, "blk.0.attn_norm.weight"), G::F16, "1-D tensors are never quantized");
    assert_eq!(p.n_fallback, 0);
}

#[test]
fn attn_v_counter_follows_layer_order_not_file_order() {
    // File order 0, 1, ..., 9, 10, ... sorts as 0, 1, 2, ... by layer number, so the k-th attn_v
    // counted is layer k even though "blk.10" < "blk.2" as strings.
    let m = llama(12, 8, 8, 0);
    let mut tensors = model(12, 256, 512, 256, false);
    tensors.reverse();
    let p = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    // n = 12: n/8 = 1, 7n/8 = 10: layers 0, 3, 6, 9, 10, 11.
    assert_eq!(layers_with(&p, 12, "attn_v.weight", G::Q6_K), [0, 3, 6, 9, 10, 11]);
    let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).take(4).collect();
    assert_eq!(
        names,
        ["output.weight", "output_norm.weight", "token_embd.weight", "blk.0.attn_k.weight"]
    );
    let last = p.tensors.last().unwrap();
    assert_eq!(last.name, "blk.11.ffn_up.weight");
}

#[test]
fn smollm2_shape_falls_back_on_576_columns() {
    // SmolLM2-135M: 30 layers, n_embd 576, n_ff 1536, tied embeddings.
    let m = llama(30, 9, 3, 0);
    let tensors = model(30, 576, 1536, 192, true);
    let p = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    // Tied: token_embd is the output; 576 % 256 != 0, so Q8_0 directly (not a fallback).
    assert_eq!(ty(&p, "token_embd.weight"), G::Q8_0);
    let e = p.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap();
    assert_eq!(e.fallback_from, None);
    // attn_v wants Q6_K on use_more_bits layers, falls back to Q8_0; others Q4_K -> Q5_0.
    let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];
    assert_eq!(layers_with(&p, 30, "attn_v.weight", G::Q8_0), more);
    assert_eq!(layers_with(&p, 30, "attn_v.weight", G::Q5_0).len(), 30 - more.len());
    // ffn_down has 1536 columns: K-quants fit.
    assert_eq!(layers_with(&p, 30, "ffn_down.weight", G::Q6_K), more);
    assert_eq!(layers_with(&p, 30, "ffn_down.weight", G::Q4_K).len(), 30 - more.len());
    assert_eq!(ty(&p, "blk.3.attn_q.weight"), G::Q5_0);
    // Everything with 576 columns except token_embd falls back: 6 per layer.
    assert_eq!(p.n_fallback, 180);

    let p = plan(FileType::Q5_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.3.attn_q.weight"), G::Q5_1);
    let p = plan(FileType::Q6_K, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.3.attn_q.weight"), G::Q8_0);
    assert_eq!(ty(&p, "blk.3.ffn_down.weight"), G::Q6_K);
}

#[test]
fn fallback_chain_reaches_f16_when_no_block_fits() {
    let m = llama(1, 1, 1, 0);
    let tensors = vec![t("blk.0.attn_q.weight", &[48, 16]), t("blk.0.ffn_up.weight", &[96, 16])];
    let p = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), G::F16);
    assert_eq!(ty(&p, "blk.0.ffn_up.weight"), G::Q5_0);
    let p = plan(FileType::Q8_0, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), G::F16, "a 32-block type falls straight to F16");
    assert_eq!(ty(&p, "blk.0.ffn_up.weight"), G::Q8_0);
    let p = plan(FileType::Q2_K, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.0.ffn_up.weight"), G::Q4_0, "Q2_K/Q3_K fall back to Q4_0");
    assert_eq!(p.tensors[1].fallback_from, Some(G::Q2_K));
}

#[test]
fn tied_and_untied_output_rules() {
    let m = llama(2, 4, 4, 0);
    let tied = model(2, 512, 512, 512, true);
    let p = plan(FileType::Q4_0, &m, &tied, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "token_embd.weight"), G::Q6_K, "tied embeddings are quantized as output");
    let p = plan(FileType::Q8_0, &m, &tied, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "token_embd.weight"), G::Q8_0, "Q8_0 output stays Q8_0");
    let untied = model(2, 512, 512, 512, false);
    let p = plan(FileType::Q4_0, &m, &untied, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "token_embd.weight"), G::Q4_0);
    assert_eq!(ty(&p, "output.weight"), G::Q6_K);
    // Falcon: output is always Q8_0.
    let falcon = ModelParams { arch: "falcon".into(), ..m.clone() };
    let p = plan(FileType::Q4_K_M, &falcon, &untied, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "output.weight"), G::Q8_0);
    // --leave-output-tensor keeps it.
    let opts = RecipeOptions { leave_output_tensor: true, ..Default::default() };
    let p = plan(FileType::Q4_K_M, &m, &untied, &opts).unwrap();
    assert_eq!(ty(&p, "output.weight"), G::F16);
}

#[test]
fn unquantized_file_types_convert_every_weight_and_ignore_patterns() {
    let m = llama(2, 4, 4, 0);
    let opts = RecipeOptions {
        tensor_types: vec![TensorTypeOverride::parse("attn_q=q8_0").unwrap()],
        ..Default::default()
    };
    let p = plan(FileType::MostlyBF16, &m, &model(2, 256, 256, 256, true), &opts).unwrap();
    assert_eq!(ty(&p, "token_embd.weight"), G::BF16);
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), G::BF16, "patterns apply only to quantized defaults");
    assert_eq!(ty(&p, "blk.0.attn_norm.weight"), G::F16);
    assert!(p.tensors.iter().all(|t| matches!(t.choice, Choice::Plain | Choice::Kept(_))));
}

#[test]
fn overrides_follow_llama_cpp_precedence() {
    let m = llama(4, 4, 4, 0);
    let tensors = model(4, 256, 256, 256, true);
    let opts = RecipeOptions {
        tensor_types: vec![
            TensorTypeOverride::parse("blk\\.[0-1]\\.attn_v=q8_0").unwrap(),
            TensorTypeOverride::parse("attn_v=q4_0").unwrap(),
        ],
        output_tensor_type: Some(G::Q5_0),
        ..Default::default()
    };
    let p = plan(FileType::Q4_K_M, &m, &tensors, &opts).unwrap();
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), G::Q8_0, "first matching pattern wins");
    assert_eq!(ty(&p, "blk.3.attn_v.weight"), G::Q4_0);
    assert_eq!(ty(&p, "token_embd.weight"), G::Q5_0, "tied embeddings take the output type");
    // An explicit token-embedding type beats it.
    let opts = RecipeOptions { token_embedding_type: Some(G::Q8_0), ..opts };
    let p = plan(FileType::Q4_K_M, &m, &tensors, &opts).unwrap();
    assert_eq!(ty(&p, "token_embd.weight"), G::Q8_0);
    assert!(matches!(
        p.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap().choice,
        Choice::TokenEmbeddingOverride
    ));

    // --pure: the default everywhere, output included, fallbacks still applied.
    let opts = RecipeOptions { pure: true, ..Default::default() };
    let p = plan(FileType::Q4_K_M, &m, &model(4, 256, 256, 256, false), &opts).unwrap();
    assert!(p.tensors.iter().all(|t| t.to == G::Q4_K || t.to == G::F16), "{:?}", p.tensors);
}

#[test]
fn manual_overrides_do_not_advance_the_attn_v_counter() {
    // llama.cpp counts attn_v only when its rules run: overriding layers 0-3 makes layer 4 the
    // first one the rules see (index 0 -> use_more_bits), like in llama_tensor_get_type_impl.
    let m = llama(16, 4, 4, 0);
    let tensors = model(16, 256, 256, 256, false);
    let opts = RecipeOptions {
        tensor_types: vec![TensorTypeOverride::parse("blk\\.[0-3]\\.attn_v=q8_0").unwrap()],
        ..Default::default()
    };
    let p = plan(FileType::Q4_K_M, &m, &tensors, &opts).unwrap();
    // The rules see 12 tensors with i = 0..11 while n_attention_wv = 16: use_more_bits(i, 16)
    // (n/8 = 2, 7n/8 = 14) holds for i in {0, 1, 4, 7, 10}, i.e. layers 4, 5, 8, 11, 14.
    assert_eq!(layers_with(&p, 16, "attn_v.weight", G::Q6_K), [4, 5, 8, 11, 14]);
}

#[test]
fn q4_k_s_q3_k_and_q2_k_rules() {
    let m = llama(16, 8, 2, 0); // n_gqa = 4
    let tensors = model(16, 256, 256, 256, false);
    let p = plan(FileType::Q4_K_S, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(layers_with(&p, 16, "attn_v.weight", G::Q5_K), [0, 1, 2, 3]);
    assert_eq!(layers_with(&p, 16, "ffn_down.weight", G::Q5_K), [0, 1]);
    let p = plan(FileType::Q3_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(layers_with(&p, 16, "attn_v.weight", G::Q5_K), [0, 1]);
    assert_eq!(layers_with(&p, 16, "ffn_down.weight", G::Q5_K), [0]);
    assert_eq!(layers_with(&p, 16, "ffn_down.weight", G::Q4_K).len(), 15);
    assert_eq!(ty(&p, "blk.5.attn_output.weight"), G::Q4_K);
    let p = plan(FileType::Q2_K, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.5.attn_v.weight"), G::Q4_K, "n_gqa >= 4");
    assert_eq!(ty(&p, "blk.5.ffn_down.weight"), G::Q3_K);
    assert_eq!(ty(&p, "blk.5.attn_output.weight"), G::Q3_K);
    assert_eq!(ty(&p, "blk.5.attn_q.weight"), G::Q2_K);
}

#[test]
fn seventy_b_class_bumps_attn_v() {
    let m = llama(80, 64, 8, 0);
    let tensors = model(80, 256, 256, 256, false);
    let p = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert!(layers_with(&p, 80, "attn_v.weight", G::Q4_K).is_empty());
    assert_eq!(
        layers_with(&p, 80, "attn_v.weight", G::Q5_K).len()
            + layers_with(&p, 80, "attn_v.weight", G::Q6_K).len(),
        80
    );
    // Same head counts: LLaMA-65B, no bump.
    let p =
        plan(FileType::Q4_K_M, &llama(80, 64, 64, 0), &tensors, &RecipeOptions::default()).unwrap();
    assert!(!layers_with(&p, 80, "attn_v.weight", G::Q4_K).is_empty());
}

#[test]
fn eight_experts_use_layer_numbers_from_names() {
    let m = llama(4, 4, 4, 8);
    let mut tensors = model(4, 256, 256, 256, false);
    tensors.push(t("blk.1.ffn_gate_inp.weight", &[256, 8]));
    tensors.push(t("blk.1.ffn_down_exps.weight", &[256, 256, 8]));
    let p = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.2.attn_v.weight"), G::Q8_0);
    assert_eq!(ty(&p, "blk.2.attn_k.weight"), G::Q8_0);
    assert_eq!(ty(&p, "blk.2.attn_output.weight"), G::Q5_K);
    assert_eq!(ty(&p, "blk.1.ffn_gate_inp.weight"), G::F16, "routers are never quantized");
    // use_more_bits(1, 4): 1 >= 7*4/8 = 3? no; 1 < 4/8 = 0? no; (1 - 0) % 3 == 2? no.
    assert_eq!(ty(&p, "blk.1.ffn_down_exps.weight"), G::Q4_K);
    assert_eq!(ty(&p, "blk.3.ffn_down.weight"), G::Q6_K);
}

#[test]
fn expert_model_with_unnumbered_ffn_tensor_is_an_error() {
    let m = llama(4, 4, 4, 8);
    let tensors = vec![t("ffn_down.weight", &[256, 256])];
    let err = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap_err();
    assert!(
        matches!(err, RecipeError::NoLayer { ref tensor, .. } if tensor == "ffn_down.weight"),
        "{err}"
    );
    let tensors = vec![t("blk.9.ffn_down.weight", &[256, 256])];
    let err = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap_err();
    assert!(matches!(err, RecipeError::BadLayer { layer: 9, n_layer: 4, .. }), "{err}");
}

#[test]
fn unknown_architecture_is_refused_only_where_the_size_class_matters() {
    let m = ModelParams { arch: "gemma3".into(), ..llama(4, 4, 4, 0) };
    let tensors = model(4, 256, 256, 256, false);
    let err = plan(FileType::Q4_K_M, &m, &tensors, &RecipeOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RecipeError::UnknownSizeClass { .. }), "{msg}");
    assert!(msg.contains("gemma3") && msg.contains("attn_v") && msg.contains("--pure"), "{msg}");
    // Q8_0, Q6_K, Q5_K_M never consult it: llama.cpp's generic rules apply.
    for ft in [FileType::Q8_0, FileType::Q6_K, FileType::Q5_K_M, FileType::Q4_0] {
        assert!(plan(ft, &m, &tensors, &RecipeOptions::default()).is_ok(), "{ft}");
    }
    let opts = RecipeOptions { pure: true, ..Default::default() };
    assert!(plan(FileType::Q4_K_M, &m, &tensors, &opts).is_ok());
}

#[test]
fn explicit_output_type_that_does_not_fit_is_an_error() {
    let m = llama(1, 1, 1, 0);
    let tensors = vec![t("output.weight", &[576, 100])];
    let opts = RecipeOptions { output_tensor_type: Some(G::Q4_K), ..Default::default() };
    let err = plan(FileType::Q8_0, &m, &tensors, &opts).unwrap_err();
    assert!(matches!(err, RecipeError::IncompatibleShape { ty: G::Q4_K, ne0: 576, .. }), "{err}");
}

#[test]
fn bad_override_specs_are_errors() {
    for spec in ["attn_q", "=q8_0", "attn_q=q9_9", "attn_q=iq2_xxs", "(=q8_0"] {
        assert!(
            matches!(TensorTypeOverride::parse(spec), Err(RecipeError::BadOverride { .. })),
            "{spec}"
        );
    }
    let o = TensorTypeOverride::parse("a=b=Q8_0").unwrap();
    assert_eq!((o.pattern.as_str(), o.ty), ("a=b", G::Q8_0));
}

#[test]
fn exclusions_and_dimensions() {
    assert_eq!(ggml_n_dims(&[576, 1]), 1);
    assert_eq!(ggml_n_dims(&[576, 1, 4]), 3);
    assert_eq!(ggml_n_dims(&[1]), 1);
    assert!(quantization_exclusion("blk.0.attn_q.weight", &[256, 1], false).is_some());
    assert!(quantization_exclusion("blk.0.attn_q.weight", &[256, 2], false).is_none());
    assert!(quantization_exclusion("blk.0.attn_q.bias", &[256, 2], false).is_some());
    assert!(quantization_exclusion("blk.0.attn_norm.weight", &[256, 2], false).is_some());
    assert!(quantization_exclusion("blk.0.ffn_gate_inp.weight", &[256, 8], false).is_some());
    assert!(quantization_exclusion("output.weight", &[256, 8], true).is_some());
    assert!(quantization_exclusion("output.weight", &[256, 8], false).is_none());
    assert_eq!(Category::of("blk.0.attn_qkv.weight"), Category::AttnQkv);
    assert_eq!(Category::of("blk.0.ffn_down_exps.weight"), Category::FfnDown);
    assert_eq!(Category::of("per_layer_token_embd.weight"), Category::TokenEmbd);
}

#[test]
fn layer_parsing_mimics_sscanf() {
    assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
    assert_eq!(layer_of("blk.1e5.x"), Some(1));
    assert_eq!(layer_of("blk.-3.x"), Some(-3));
    assert_eq!(layer_of("blk. 7.x"), Some(7));
    assert_eq!(layer_of("blk.x"), None);
    assert_eq!(layer_of("token_embd.weight"), None);
    assert_eq!(weight_order("blk.10.a", "blk.2.b"), std::cmp::Ordering::Greater);
    assert_eq!(weight_order("output.weight", "blk.0.a"), std::cmp::Ordering::Less);
    assert_eq!(weight_order("blk.1.b", "blk.1.a"), std::cmp::Ordering::Greater);
}

#[test]
fn model_params_from_metadata() {
    let kvs = vec![
        ("general.architecture".to_string(), Value::String("llama".into())),
        ("llama.block_count".to_string(), Value::U32(30)),
        ("llama.attention.head_count".to_string(), Value::U32(9)),
        ("llama.attention.head_count_kv".to_string(), Value::U64(3)),
    ];
    let m = ModelParams::from_kvs(&kvs).unwrap();
    assert_eq!(m, llama(30, 9, 3, 0));
    let err = ModelParams::from_kvs(&kvs[..1]).unwrap_err();
    assert!(
        matches!(err, RecipeError::MissingKey { ref key, .. } if key == "llama.block_count"),
        "{err}"
    );
    let err = ModelParams::from_kvs(&kvs[1..]).unwrap_err();
    assert!(
        matches!(err, RecipeError::MissingKey { ref key, .. } if key == "general.architecture")
    );
    let mut bad = kvs.clone();
    bad[1].1 = Value::String("30".into());
    assert!(matches!(ModelParams::from_kvs(&bad), Err(RecipeError::MissingKey { .. })));
}
