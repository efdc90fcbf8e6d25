//! A seeded LLaMA-shaped BF16 checkpoint with shapes every kernel accepts (Marlin needs
//! `N % 64 == 0` and `K % 128 == 0`, the GGUF k-quants `K % 256 == 0`, the NVFP4 swizzle is
//! unpadded at `N % 128 == 0`), for the device script and the tests. The committed fixtures are
//! too narrow for Marlin (hidden 64).
//!
//! Weights are `N(0, 1) · 0.02 · r_n` with a log-normal row scale `r_n = exp(0.5 · N(0, 1))`:
//! real checkpoints have output channels of very different magnitude, and that spread is what
//! makes a misplaced per-channel or per-group scale visible, as it would be in a real model.

use std::collections::BTreeMap;
use std::path::Path;

use half::bf16;
use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};

use crate::activations::SplitMix64;
use crate::error::{Result, VerifyError};

/// Model dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
}

impl Default for LlamaDims {
    /// hidden 256, intermediate 512, 2 layers, 4 heads (2 KV), vocab 256: 2.6 MB in BF16.
    fn default() -> Self {
        LlamaDims { hidden: 256, intermediate: 512, layers: 2, heads: 4, kv_heads: 2, vocab: 256 }
    }
}

/// The tensors in model order: `(name, [rows, cols], is_norm)`.
pub fn llama_tensors(d: &LlamaDims) -> Vec<(String, [usize; 2], bool)> {
    let hd = d.hidden / d.heads;
    let mut t = vec![("model.embed_tokens.weight".to_string(), [d.vocab, d.hidden], false)];
    for i in 0..d.layers {
        let p = format!("model.layers.{i}");
        t.push((format!("{p}.input_layernorm.weight"), [1, d.hidden], true));
        t.push((format!("{p}.self_attn.q_proj.weight"), [d.hidden, d.hidden], false));
        t.push((format!("{p}.self_attn.k_proj.weight"), [d.kv_heads * hd, d.hidden], false));
        t.push((format!("{p}.self_attn.v_proj.weight"), [d.kv_heads * hd, d.hidden], false));
        t.push((format!("{p}.self_attn.o_proj.weight"), [d.hidden, d.hidden], false));
        t.push((format!("{p}.post_attention_layernorm.weight"), [1, d.hidden], true));
        t.push((format!("{p}.mlp.gate_proj.weight"), [d.intermediate, d.hidden], false));
        t.push((format!("{p}.mlp.up_proj.weight"), [d.intermediate, d.hidden], false));
        t.push((format!("{p}.mlp.down_proj.weight"), [d.hidden, d.intermediate], false));
    }
    t.push(("model.norm.weight".to_string(), [1, d.hidden], true));
    t.push(("lm_head.weight".to_string(), [d.vocab, d.hidden], false));
    t
}

/// Writes `model.safetensors`, `config.json` and a byte-level `tokenizer.json` into `dir`
/// (created if missing).
pub fn write_llama(dir: &Path, d: &LlamaDims, seed: u64) -> Result<()> {
    let io = |e: std::io::Error| VerifyError::Io { path: dir.display().to_string(), source: e };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tensors = llama_tensors(d);
    let plan: Vec<PlannedTensor> = tensors
        .iter()
        .map(|(name, [r, c], norm)| PlannedTensor {
            name: name.clone(),
            dtype: TensorDType::St(DType::BF16),
            shape: if *norm { vec![*c as u64] } else { vec![*r as u64, *c as u64] },
            nbytes: (r * c * 2) as u64,
        })
        .collect();
    let mut sink: Box<dyn TensorSink> = Box::new(SafetensorsWriter::create(
        &dir.join("model.safetensors"),
        plan,
        BTreeMap::new(),
        None,
    )?);
    let mut rng = SplitMix64::new(seed);
    for (name, [r, c], norm) in &tensors {
        let mut v = vec![0f32; r * c];
        rng.fill_normal(&mut v);
        if *norm {
            v.iter_mut().for_each(|x| *x = 1.0 + 0.1 * *x);
        } else {
            let mut row_scale = vec![0f32; *r];
            rng.fill_normal(&mut row_scale);
            for (row, s) in v.chunks_mut(*c).zip(&row_scale) {
                let s = 0.02 * (0.5 * s).exp();
                row.iter_mut().for_each(|x| *x *= s);
            }
        }
        let bytes: Vec<u8> = v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        sink.write(name, &bytes)?;
    }
    sink.finish()?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.hidden / d.heads,
        "vocab_size": d.vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16"
    });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    std::fs::write(dir.join("config.json"), text).map_err(io)?;
    write_byte_tokenizer(dir)
}

/// GPT-2's byte → printable character table (the byte-level BPE alphabet): printable Latin-1
/// bytes stand for themselves, the others for `U+0100 + n` in byte order.
fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(0xFF + n).unwrap_or('?')
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` whose vocabulary is the 256 byte symbols (no merges), so
/// `qtool convert` can turn the fixture into a GGUF; token ids equal byte values.
pub fn write_byte_tokenizer(dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| VerifyError::Io { path: dir.display().to_string(), source: e };
    let vocab: serde_json::Map<String, serde_json::Value> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    let text = serde_json::to_string(&tok).unwrap_or_default();
    std::fs::write(dir.join("tokenizer.json"), text).map_err(io)?;
    Ok(())
}
