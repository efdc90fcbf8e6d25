//! A tiny synthetic llama-family checkpoint for the convert tests: GQA attention (4 query
//! heads, 2 KV heads of 16), untied output, a byte-level BPE tokenizer with special tokens, and
//! seeded weights, written as a Hugging Face directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};
use serde_json::{json, Value};

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;
pub const VOCAB: usize = 40;

/// Deterministic values in [-1, 1) (a 64-bit LCG), distinct per tensor by `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `(name, shape)` of every tensor, in the order written.
pub fn tensor_specs(tied: bool) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![HEADS * HEAD_DIM, HIDDEN]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN]));
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HEADS * HEAD_DIM]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]));
    }
    t.push(("model.norm.weight".to_string(), vec![HIDDEN]));
    if !tied {
        t.push(("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]));
    }
    t
}

pub fn config(tied: bool) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    })
}

pub fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut names: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    names.extend(["a", "b", "ab", "Ġ", "Ġab", "<tool>"].map(String::from));
    while names.len() < VOCAB {
        names.push(format!("t{}", names.len()));
    }
    for (i, n) in names.iter().enumerate() {
        vocab.insert(n.clone(), json!(i));
    }
    let mut added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    added.push(json!({"id": 8, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}));
    json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false, "vocab": vocab, "merges": [["a", "b"], ["Ġ", "ab"]]}
    })
}

pub fn tokenizer_config() -> Value {
    json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "unk_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        "clean_up_tokenization_spaces": true,
    })
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// Writes the model as `dir` (created) with tensors of `dtype` (F32, F16 or BF16).
pub fn write_model(dir: &Path, dtype: DType, tied: bool) -> BTreeMap<String, Vec<f32>> {
    std::fs::create_dir_all(dir).unwrap();
    write_json(&dir.join("config.json"), &config(tied));
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config());
    let specs = tensor_specs(tied);
    let mut data = BTreeMap::new();
    let mut plan = Vec::new();
    for (i, (name, shape)) in specs.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut v = values(n, i as u64 + 1);
        // Round to the stored type so the returned values are what the file holds.
        for x in &mut v {
            *x = match dtype {
                DType::F16 => half::f16::from_f32(*x).to_f32(),
                DType::BF16 => half::bf16::from_f32(*x).to_f32(),
                _ => *x,
            };
        }
        data.insert(name.clone(), v);
        plan.push(PlannedTensor {
            name: name.clone(),
            dtype: TensorDType::St(dtype),
            shape: shape.iter().map(|&d| d as u64).collect(),
            nbytes: (n * (dtype.bits() as usize / 8)) as u64,
        });
    }
    let mut w =
        SafetensorsWriter::create(&dir.join("model.safetensors"), plan, BTreeMap::new(), None)
            .unwrap();
    for (name, _) in &specs {
        let v = &data[name];
        let bytes: Vec<u8> = match dtype {
            DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        w.write(name, &bytes).unwrap();
    }
    w.finish().unwrap();
    data
}
