//! `qtool quantize` GGUF override flags (`--tensor-type`, `--output-tensor-type`,
//! `--token-embedding-type`, `--pure`) on the tiny GGUF fixture. Byte identity of the same flags
//! with llama.cpp's `llama_model_quantize` is checked in
//! tests/crosscheck/test_gguf_quantize_flags.py; these tests pin the per-tensor types the flags
//! must produce and the bad-input contract.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_fails, fixture, inspect_json, ok, run, s, tensor};

/// `qtool quantize tiny.gguf -o OUT --fmt FMT --allow-requantize EXTRA...` (the fixture's
/// weights are Q8_0).
fn quantize(out: &Path, fmt: &str, extra: &[&str]) -> Output {
    let input = fixture("tiny.gguf");
    let mut args =
        vec!["quantize", s(&input), "-o", s(out), "--fmt", fmt, "--allow-requantize", "-q"];
    args.extend_from_slice(extra);
    run(&args)
}

fn dtype(report: &serde_json::Value, name: &str) -> String {
    tensor(report, name)["dtype"].as_str().unwrap().to_owned()
}

#[test]
fn tensor_type_overrides_apply_first_match_and_skip_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    // Q8_0 recipe; attn_(q|k) matched by the first pattern, attn_q also by the second (which
    // must lose), ffn_down by a case-insensitive type name.
    let r = quantize(
        &out,
        "q8_0",
        &[
            "--tensor-type",
            r"blk\.0\.attn_(q|k)=q5_1",
            "--tensor-type",
            "attn_q=q4_0",
            "--tensor-type",
            "ffn_down=Q5_0",
        ],
    );
    ok(&r);
    let v = inspect_json(&out);
    assert_eq!(dtype(&v, "blk.0.attn_q.weight"), "Q5_1");
    assert_eq!(dtype(&v, "blk.0.attn_k.weight"), "Q5_1");
    assert_eq!(dtype(&v, "blk.0.ffn_down.weight"), "Q5_0");
    assert_eq!(dtype(&v, "blk.0.attn_v.weight"), "Q8_0");
    assert_eq!(dtype(&v, "blk.0.attn_norm.weight"), "F32", "norms are never quantized");
}

#[test]
fn tensor_type_override_falls_back_when_the_row_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    // ne[0] = 64 is not a multiple of Q6_K's 256: llama.cpp falls back to Q8_0.
    ok(&quantize(&out, "q8_0", &["--tensor-type", "attn_v=q6_k"]));
    assert_eq!(dtype(&inspect_json(&out), "blk.0.attn_v.weight"), "Q8_0");
    let out = dir.path().join("p.gguf");
    ok(&quantize(&out, "q4_0", &["--tensor-type", "attn_v=q6_k"]));
    assert_eq!(dtype(&inspect_json(&out), "blk.0.attn_v.weight"), "Q8_0");
}

#[test]
fn output_and_token_embedding_types_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r =
        quantize(&out, "q4_0", &["--output-tensor-type", "q5_1", "--token-embedding-type", "f32"]);
    ok(&r);
    let v = inspect_json(&out);
    assert_eq!(dtype(&v, "output.weight"), "Q5_1");
    assert_eq!(dtype(&v, "token_embd.weight"), "F32");
    assert_eq!(dtype(&v, "blk.0.attn_q.weight"), "Q4_0");
}

#[test]
fn pure_gives_every_quantizable_tensor_the_default_type() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, pure) = (dir.path().join("rules.gguf"), dir.path().join("pure.gguf"));
    ok(&quantize(&rules, "q4_0", &[]));
    ok(&quantize(&pure, "q4_0", &["--pure"]));
    let (r, p) = (inspect_json(&rules), inspect_json(&pure));
    // Without --pure the output tensor gets Q6_K's fallback Q8_0; with it, the default Q4_0.
    assert_eq!(dtype(&r, "output.weight"), "Q8_0");
    assert_eq!(dtype(&p, "output.weight"), "Q4_0");
    for t in p["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let expected = if name.ends_with("norm.weight") { "F32" } else { "Q4_0" };
        assert_eq!(t["dtype"], expected, "{name}");
    }
}

#[test]
fn dry_run_plan_names_the_manual_override() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q8_0", &["--dry-run", "--tensor-type", "attn_v=q4_1"]);
    ok(&r);
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.contains("blk.0.attn_v.weight") && l.contains("manual override")),
        "{text}"
    );
    assert!(!out.exists());
}

// ---- bad input: one named test per case ----

#[test]
fn tensor_type_with_a_bad_regex_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--tensor-type", "attn_(v=q8_0"]);
    assert_fails(&r, &out, &["--tensor-type", "attn_(v=q8_0", "unclosed group"]);
}

#[test]
fn tensor_type_without_equals_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--tensor-type", "attn_v"]);
    assert_fails(&r, &out, &["--tensor-type", "REGEX=TYPE"]);
}

#[test]
fn tensor_type_with_an_unknown_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--tensor-type", "attn_v=q9_9"]);
    assert_fails(&r, &out, &["--tensor-type", "unknown GGML type", "q9_9"]);
}

#[test]
fn tensor_type_qtool_cannot_encode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--tensor-type", "attn_v=iq2_xxs"]);
    assert_fails(&r, &out, &["--tensor-type", "cannot quantize to IQ2_XXS"]);
}

#[test]
fn output_tensor_type_unknown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--output-tensor-type", "q7_k"]);
    assert_fails(&r, &out, &["--output-tensor-type", "q7_k", "unknown GGML type"]);
}

#[test]
fn token_embedding_type_unknown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&out, "q4_k_m", &["--token-embedding-type", "int4"]);
    assert_fails(&r, &out, &["--token-embedding-type", "int4", "unknown GGML type"]);
}

#[test]
fn explicit_output_type_that_does_not_fit_the_row_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    // llama.cpp asserts here; qtool names the tensor and the block size instead.
    let r = quantize(&out, "q8_0", &["--output-tensor-type", "q4_k"]);
    assert_fails(&r, &out, &["output.weight", "Q4_K", "multiple of 256"]);
}

#[test]
fn gguf_flags_with_a_safetensors_format_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let input = fixture("tiny-llama/model.safetensors");
    for flag in [
        &["--pure"][..],
        &["--tensor-type", "q_proj=q8_0"],
        &["--output-tensor-type", "q8_0"],
        &["--token-embedding-type", "q8_0"],
    ] {
        let mut args = vec!["quantize", s(&input), "-o", s(&out), "--fmt", "fp8_e4m3fn_scaled"];
        args.extend_from_slice(flag);
        let r = run(&args);
        assert_fails(&r, &out, &[flag[0], "GGUF"]);
    }
}

/// A two-layer `qwen3` GGUF (F32 zeros): token_embd [256, 32], and per layer attn_norm [256],
/// attn_v [256, 16]. qtool does not know llama.cpp's model-size class for qwen3.
fn write_qwen3(dir: &Path) -> std::path::PathBuf {
    let tensors: Vec<(String, Vec<u64>)> =
        std::iter::once(("token_embd.weight".into(), vec![256, 32]))
            .chain((0..2).flat_map(|i| {
                [
                    (format!("blk.{i}.attn_norm.weight"), vec![256]),
                    (format!("blk.{i}.attn_v.weight"), vec![256, 16]),
                ]
            }))
            .collect();
    let mut g = common::GgufBuilder::header(b"GGUF", 3, tensors.len() as u64, 4);
    g.string("general.architecture").u32(8).string("qwen3");
    g.kv_u32("qwen3.block_count", 2).kv_u32("qwen3.attention.head_count", 4);
    g.kv_u32("qwen3.attention.head_count_kv", 2);
    let mut offset = 0;
    for (name, dims) in &tensors {
        g.tensor(name, dims, 0, offset);
        offset += dims.iter().product::<u64>() * 4;
    }
    g.data(offset as usize);
    let path = dir.join("qwen3.gguf");
    std::fs::write(&path, &g.bytes).unwrap();
    path
}

fn quantize_file(input: &Path, out: &Path, fmt: &str, extra: &[&str]) -> Output {
    let mut args = vec!["quantize", s(input), "-o", s(out), "--fmt", fmt, "-q"];
    args.extend_from_slice(extra);
    run(&args)
}

/// Q4_K_M's attn_v rule consults llama.cpp's per-architecture "70B" class, which qtool knows
/// only for llama, qwen2, deci, jais2 and falcon: on qwen3 the error says which rule, which
/// tensor, which architectures are known and how to proceed; rules that do not consult the
/// class (Q8_0, --pure, an attn_v override) apply as on llama.
#[test]
fn recipe_on_a_non_llama_architecture_explains_which_rules_apply() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_qwen3(dir.path());
    let out = dir.path().join("o.gguf");
    let r = quantize_file(&input, &out, "q4_k_m", &[]);
    assert_fails(
        &r,
        &out,
        &["qwen3", "blk.0.attn_v.weight", "70B", "llama, qwen2", "--pure", "--tensor-type"],
    );
    ok(&quantize_file(&input, &out, "q4_k_m", &["--pure"]));
    assert_eq!(dtype(&inspect_json(&out), "blk.1.attn_v.weight"), "Q4_K");
    std::fs::remove_file(&out).unwrap();
    ok(&quantize_file(&input, &out, "q4_k_m", &["--tensor-type", "attn_v=q5_k"]));
    let v = inspect_json(&out);
    assert_eq!(dtype(&v, "blk.0.attn_v.weight"), "Q5_K");
    assert_eq!(dtype(&v, "token_embd.weight"), "Q6_K", "tied embeddings follow the output rule");
    std::fs::remove_file(&out).unwrap();
    ok(&quantize_file(&input, &out, "q8_0", &[]));
    assert_eq!(dtype(&inspect_json(&out), "blk.1.attn_v.weight"), "Q8_0");
}
