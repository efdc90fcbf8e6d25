//! The engine on the repository's fixtures: block API behaviour (capture sites, causality,
//! determinism) and one named test per bad-input case. Numerical agreement with independent
//! implementations is checked in tests/crosscheck/test_engine_llama.py.

use std::path::{Path, PathBuf};

use qtool_calib::engine::{EngineError, Matrix, Model, Site};
use qtool_calib::tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fixtures").join(name)
}

/// A copy of fixtures/tiny-llama whose config.json is edited by `edit`.
fn tiny_with_config(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama");
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn tiny_llama_config_is_read() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let c = m.config();
    assert_eq!((c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim), (2, 64, 4, 2, 16));
    assert_eq!((c.intermediate, c.vocab, c.arch), (128, 256, "llama"));
    assert!(!m.tied_embeddings());
}

#[test]
fn capture_sees_every_site_once_with_the_linear_input_widths() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let tokens = [1u32, 5, 9, 200, 3];
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let block = m.load_block(0).unwrap();
    let mut seen = Vec::new();
    let mut hidden = m.embed(&tokens).unwrap();
    let mut plain = hidden.clone();
    block
        .forward(
            &mut hidden,
            &positions,
            Some(&mut |s: Site, x: &Matrix| seen.push((s, x.rows, x.cols))),
        )
        .unwrap();
    assert_eq!(
        seen,
        vec![
            (Site::AttnIn, 5, 64),
            (Site::OIn, 5, 64),
            (Site::MlpIn, 5, 64),
            (Site::DownIn, 5, 128)
        ]
    );
    block.forward(&mut plain, &positions, None).unwrap();
    assert_eq!(hidden, plain, "capturing does not change the output");
}

#[test]
fn attention_is_causal_a_prefix_gives_the_same_rows() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let long = [7u32, 1, 99, 3, 42, 42, 8, 255];
    let full = m.forward_logits(&long).unwrap();
    let prefix = m.forward_logits(&long[..5]).unwrap();
    for r in 0..5 {
        for (a, b) in prefix.row(r).iter().zip(full.row(r)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn replacing_a_weight_changes_the_output() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let tokens = [4u32, 8, 15, 16];
    let positions: Vec<usize> = (0..4).collect();
    let mut block = m.load_block(1).unwrap();
    let mut a = m.embed(&tokens).unwrap();
    let mut b = a.clone();
    block.forward(&mut a, &positions, None).unwrap();
    for (_, _, lin) in block.linears_mut() {
        if lin.weight.rows == 64 && lin.weight.cols == 128 {
            lin.weight.data.iter_mut().for_each(|w| *w = 0.0);
        }
    }
    block.forward(&mut b, &positions, None).unwrap();
    assert_ne!(a, b);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 256) as u32).collect();
    let run = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(|| m.forward_logits(&tokens).unwrap())
    };
    assert_eq!(run(1).data, run(3).data);
}

#[test]
fn sharded_fixture_gives_identical_logits() {
    let tokens = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let a = Model::open(fixture("tiny-llama")).unwrap().forward_logits(&tokens).unwrap();
    let b = Model::open(fixture("tiny-llama-sharded")).unwrap().forward_logits(&tokens).unwrap();
    assert_eq!(a, b);
}

#[test]
fn gguf_fixture_runs_and_has_a_tokenizer() {
    let m = Model::open(fixture("tiny.gguf")).unwrap();
    let logits = m.forward_logits(&[0, 1, 2, 3]).unwrap();
    assert_eq!(logits.rows, 4);
    assert_eq!(logits.cols, m.config().vocab);
    assert!(logits.data.iter().all(|x| x.is_finite()));
    let tok = Tokenizer::for_model(&m).unwrap();
    assert!(tok.vocab_size() > 0);
}

// --- bad input: one named case each ----------------------------------------------------------

#[test]
fn unsupported_architecture_is_named() {
    let d = tiny_with_config(|c| c["architectures"] = serde_json::json!(["GemmaForCausalLM"]));
    let err = Model::open(d.path()).unwrap_err();
    assert!(matches!(err, EngineError::UnsupportedArch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("GemmaForCausalLM") && msg.contains("LlamaForCausalLM"), "{msg}");
}

#[test]
fn missing_config_json_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny-llama").join("model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let msg = Model::open(d.path()).unwrap_err().to_string();
    assert!(msg.contains("no config.json"), "{msg}");
}

#[test]
fn missing_block_tensor_is_named() {
    let d = tiny_with_config(|c| c["num_hidden_layers"] = serde_json::json!(3));
    let m = Model::open(d.path()).unwrap();
    let err = m.load_block(2).unwrap_err();
    assert!(matches!(err, EngineError::MissingTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("model.layers.2."), "{err}");
}

#[test]
fn tensor_shape_disagreeing_with_config_is_named() {
    let d = tiny_with_config(|c| c["intermediate_size"] = serde_json::json!(100));
    let m = Model::open(d.path()).unwrap();
    let msg = m.load_block(0).unwrap_err().to_string();
    assert!(
        msg.contains("mlp.gate_proj.weight")
            && msg.contains("[128, 64]")
            && msg.contains("[100, 64]"),
        "{msg}"
    );
}

#[test]
fn token_outside_the_vocabulary_is_an_error() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let msg = m.embed(&[3, 256]).unwrap_err().to_string();
    assert!(msg.contains("token id 256") && msg.contains("256 tokens"), "{msg}");
}

#[test]
fn hidden_state_of_the_wrong_width_is_an_error() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let block = m.load_block(0).unwrap();
    let mut h = Matrix::zeros(3, 32);
    let msg = block.forward(&mut h, &[0, 1, 2], None).unwrap_err().to_string();
    assert!(msg.contains("[3, 32]"), "{msg}");
    let mut h = Matrix::zeros(3, 64);
    assert!(block.forward(&mut h, &[0, 1], None).is_err(), "positions must match the rows");
}

#[test]
fn block_index_beyond_the_model_is_an_error() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    assert!(m.load_block(2).unwrap_err().to_string().contains("2 blocks"));
}

#[test]
fn yarn_rope_scaling_is_refused() {
    let d = tiny_with_config(
        |c| c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    );
    let msg = Model::open(d.path()).unwrap_err().to_string();
    assert!(msg.contains("YaRN"), "{msg}");
}

#[test]
fn missing_tokenizer_is_named() {
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let err = Tokenizer::for_model(&m).unwrap_err();
    assert!(matches!(err, EngineError::MissingTokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn eval_rejects_text_shorter_than_a_window_and_tiny_windows() {
    use qtool_calib::eval::{perplexity, PplOptions};
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let opts = PplOptions { ctx: 16, ..PplOptions::default() };
    let msg = perplexity(&m, &[1; 10], &opts, &mut |_, _| {}).unwrap_err().to_string();
    assert!(msg.contains("10 tokens") && msg.contains("--ctx 16"), "{msg}");
    let opts = PplOptions { ctx: 1, ..PplOptions::default() };
    assert!(perplexity(&m, &[1; 10], &opts, &mut |_, _| {}).is_err());
}

#[test]
fn eval_groups_do_not_change_the_result() {
    use qtool_calib::eval::{perplexity, PplOptions};
    let m = Model::open(fixture("tiny-llama")).unwrap();
    let tokens: Vec<u32> = (0..100).map(|i| (i * 29 % 256) as u32).collect();
    let one_group = PplOptions { ctx: 20, ..PplOptions::default() };
    // A budget of one window per group: five groups, each block decoded five times.
    let per_window = PplOptions { ctx: 20, activation_budget: 1, ..PplOptions::default() };
    let mut steps = Vec::new();
    let a = perplexity(&m, &tokens, &one_group, &mut |_, _| {}).unwrap();
    let b = perplexity(&m, &tokens, &per_window, &mut |d, n| steps.push((d, n))).unwrap();
    assert_eq!((a.ppl, a.tokens, a.windows), (b.ppl, b.tokens, b.windows));
    assert_eq!((a.tokens, a.windows), (95, 5));
    assert_eq!(steps.last(), Some(&(15, 15)), "5 groups x (2 blocks + head)");
}

/// Hugging Face's `_compute_llama3_parameters`, written out in f64 for the test.
fn hf_llama3_inv_freq(
    theta: f64,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            if wavelen < old_ctx / high {
                inv
            } else if wavelen > old_ctx / low {
                inv / factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 - smooth) * inv / factor + smooth * inv
            }
        })
        .collect()
}

#[test]
fn llama3_and_linear_rope_scaling_follow_the_hf_formulas() {
    let d = tiny_with_config(|c| {
        c["rope_theta"] = serde_json::json!(500000.0);
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    });
    let m = Model::open(d.path()).unwrap();
    let want = hf_llama3_inv_freq(500000.0, 16, 8.0, 1.0, 4.0, 64.0);
    let got = &m.config().rope.inv_freq;
    assert_eq!(got.len(), 8);
    // Low, medium and high frequencies all occur at this (tiny) original context.
    assert!(want
        .iter()
        .zip(hf_llama3_inv_freq(500000.0, 16, 1.0, 1.0, 4.0, 64.0))
        .any(|(a, b)| a == &b));
    assert!(want
        .iter()
        .zip(hf_llama3_inv_freq(500000.0, 16, 1.0, 1.0, 4.0, 64.0))
        .any(|(a, b)| (a * 8.0 - b).abs() < 1e-12 * b));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w, "{g} vs {w}");
    }
    let d = tiny_with_config(|c| {
        c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0})
    });
    let m = Model::open(d.path()).unwrap();
    let inv = &m.config().rope.inv_freq;
    assert!((inv[1] - 1.0 / 10000f64.powf(2.0 / 16.0) / 4.0).abs() < 1e-15);
    // Linear scaling is position / factor: the logits at position 4p equal unscaled ones at p
    // only through rope, so a scaled model differs from the plain one.
    let plain = Model::open(fixture("tiny-llama")).unwrap().forward_logits(&[1, 2, 3]).unwrap();
    assert_ne!(m.forward_logits(&[1, 2, 3]).unwrap(), plain);
}

#[test]
fn sequences_beyond_a_mistral_sliding_window_are_refused() {
    let d = tiny_with_config(|c| {
        c["model_type"] = serde_json::json!("mistral");
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["sliding_window"] = serde_json::json!(4);
    });
    let m = Model::open(d.path()).unwrap();
    assert_eq!(m.config().sliding_window, Some(4));
    assert!(m.forward_logits(&[1, 2, 3, 4]).is_ok());
    let msg = m.forward_logits(&[1, 2, 3, 4, 5]).unwrap_err().to_string();
    assert!(msg.contains("sliding attention window of 4"), "{msg}");
    // Without model_type mistral or use_sliding_window the window is not in force.
    let d = tiny_with_config(|c| c["sliding_window"] = serde_json::json!(4));
    assert_eq!(Model::open(d.path()).unwrap().config().sliding_window, None);
}
