//! `qtool repack` end to end: GPTQ → AWQ → compressed-tensors → GPTQ gives back the same file
//! byte for byte (so the dequantized weights are identical), each output is detected by
//! `inspect`, the Marlin target writes `B`/`s` and `checkpoint_format: "marlin"` on a synthetic
//! checkpoint whose shapes Marlin runs, and every refusal (Marlin's shape rules on the tiny-llama
//! fixture, per-tp rules, asymmetric or 8-bit inputs AWQ/Marlin cannot hold) exits 2 with one
//! `error:` line naming the tensor and the rule, and leaves nothing behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    assert_fails, fixture, inspect_json, json_file, marlin_sized, ok, run, s, stderr, stdout,
    tensor,
};
use serde_json::Value;

fn quantize(input: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["quantize", s(input), "-o", s(out), "-q", "--fmt"];
    args.extend_from_slice(extra);
    ok(&run(&args));
}

fn repack(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["repack", s(input), "-o", s(out), "-q"];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn gptq_awq_compressed_tensors_gptq_round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (g, a, c, g2) =
        (dir.path().join("g"), dir.path().join("a"), dir.path().join("c"), dir.path().join("g2"));
    quantize(&fixture("tiny-llama"), &g, &["w4a16", "--layout", "gptq", "--group-size", "32"]);
    ok(&repack(&g, &a, &["--target", "awq"]));
    assert_eq!(inspect_json(&a)["scheme"], "awq");
    assert_eq!(json_file(&a.join("config.json"))["quantization_config"]["quant_method"], "awq");
    ok(&repack(&a, &c, &["--target", "compressed-tensors"]));
    let rc = inspect_json(&c);
    assert_eq!(rc["scheme"], "compressed-tensors:pack-quantized");
    // Symmetric codes survive the AWQ leg (all zeros at 8): no zero points are written.
    assert!(!rc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"].as_str().unwrap().ends_with("zero_point")));
    ok(&repack(&c, &g2, &["--target", "gptq"]));
    assert_eq!(inspect_json(&g2)["scheme"], "gptq");
    assert!(
        fs::read(g.join("model.safetensors")).unwrap()
            == fs::read(g2.join("model.safetensors")).unwrap()
    );
    assert_eq!(
        json_file(&g.join("quantize_config.json")),
        json_file(&g2.join("quantize_config.json"))
    );
}

#[test]
fn asymmetric_awq_to_gptq_v2_and_back_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g, a2) = (dir.path().join("a"), dir.path().join("g"), dir.path().join("a2"));
    quantize(&fixture("tiny-llama"), &a, &["w4a16", "--layout", "awq", "--group-size", "64"]);
    ok(&repack(&a, &g, &["--target", "gptq", "--gptq-format", "v2"]));
    let qc = json_file(&g.join("quantize_config.json"));
    assert_eq!(qc["checkpoint_format"], "gptq_v2");
    assert_eq!(qc["sym"], false);
    ok(&repack(&g, &a2, &["--target", "awq"]));
    assert!(
        fs::read(a.join("model.safetensors")).unwrap()
            == fs::read(a2.join("model.safetensors")).unwrap()
    );
}

#[test]
fn marlin_on_the_tiny_fixture_is_refused_naming_tensor_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(&fixture("tiny-llama"), &g, &["w4a16", "--layout", "gptq", "--group-size", "-1"]);
    // Every layer has K = 64 (or N = 32): the first one met (gate_proj, [128x64]) is reported.
    assert_fails(
        &repack(&g, &m, &["--target", "marlin"]),
        &m,
        &["tensor 'model.layers.0.mlp.gate_proj.qweight'", "K_partition % 128 == 0", "tp=1"],
    );
}

#[test]
fn marlin_target_writes_b_and_s_with_marlin_checkpoint_format() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(&marlin_sized(dir.path(), "big", 0x2545_f491), &g, &["w4a16", "--layout", "gptq"]);
    let out = run(&["repack", s(&g), "-o", s(&m), "--target", "marlin", "--tp", "1,2,4", "--json"]);
    ok(&out);
    let rep: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rep["layers"], 2);
    assert_eq!(rep["source"], "gptq");
    let r = inspect_json(&m);
    let up = "model.layers.0.mlp.up_proj";
    assert_eq!(tensor(&r, &format!("{up}.B"))["shape"], serde_json::json!([16, 1024]));
    assert_eq!(tensor(&r, &format!("{up}.B"))["dtype"], "I32");
    assert_eq!(tensor(&r, &format!("{up}.s"))["shape"], serde_json::json!([2, 512]));
    assert_eq!(tensor(&r, &format!("{up}.s"))["dtype"], "F16");
    assert_eq!(tensor(&r, "model.layers.0.mlp.down_proj.B")["shape"], serde_json::json!([32, 512]));
    let qc = json_file(&m.join("quantize_config.json"));
    assert_eq!(qc["checkpoint_format"], "marlin");
    assert_eq!(qc["bits"], 4);
    assert_eq!(qc["group_size"], 128);
    assert_eq!(qc["sym"], true);
    assert_eq!(json_file(&m.join("config.json"))["quantization_config"], qc);
}

#[test]
fn marlin_tp_8_is_refused_for_the_row_parallel_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(
        &marlin_sized(dir.path(), "big", 0x2545_f491),
        &g,
        &["w4a16", "--layout", "gptq", "--group-size", "-1"],
    );
    // down_proj K=512 split 8 ways is 64 columns per rank: K_partition % 128 fails.
    assert_fails(
        &repack(&g, &m, &["--target", "marlin", "--tp", "1,8"]),
        &m,
        &["model.layers.0.mlp.down_proj", "K_partition % 128 == 0", "tp=8", "row-parallel"],
    );
}

#[test]
fn marlin_refuses_asymmetric_input() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(
        &marlin_sized(dir.path(), "big", 0x2545_f491),
        &g,
        &["w4a16", "--layout", "gptq", "--asym"],
    );
    assert_fails(
        &repack(&g, &m, &["--target", "marlin"]),
        &m,
        &["model.layers.0.mlp", "symmetric only"],
    );
}

#[test]
fn marlin_refuses_group_size_64() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(
        &marlin_sized(dir.path(), "big", 0x2545_f491),
        &g,
        &["w4a16", "--layout", "gptq", "--group-size", "64"],
    );
    assert_fails(
        &repack(&g, &m, &["--target", "marlin"]),
        &m,
        &["model.layers.0.mlp", "group_size in [-1, 128]"],
    );
}

#[test]
fn awq_refuses_8_bit_input() {
    let dir = tempfile::tempdir().unwrap();
    let (g, a) = (dir.path().join("g"), dir.path().join("a"));
    quantize(&fixture("tiny-llama"), &g, &["w8a16", "--layout", "gptq", "--group-size", "32"]);
    assert_fails(
        &repack(&g, &a, &["--target", "awq"]),
        &a,
        &["model.layers.0.", "4-bit weights only"],
    );
}

#[test]
fn unquantized_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &repack(&fixture("tiny-llama"), &out, &["--target", "gptq"]),
        &out,
        &["tiny-llama", "quantization_config"],
    );
}

#[test]
fn tp_is_refused_for_non_marlin_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (g, a) = (dir.path().join("g"), dir.path().join("a"));
    quantize(&fixture("tiny-llama"), &g, &["w4a16", "--layout", "gptq", "--group-size", "32"]);
    assert_fails(&repack(&g, &a, &["--target", "awq", "--tp", "2"]), &a, &["--tp", "marlin"]);
}

#[test]
fn non_empty_output_directory_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (g, a) = (dir.path().join("g"), dir.path().join("a"));
    quantize(&fixture("tiny-llama"), &g, &["w4a16", "--layout", "gptq", "--group-size", "32"]);
    fs::create_dir_all(&a).unwrap();
    fs::write(a.join("keep.txt"), "x").unwrap();
    let out = repack(&g, &a, &["--target", "awq"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: ") && stderr(&out).contains("not empty"));
    assert!(a.join("keep.txt").exists());
}

#[test]
fn marlin_tp_8_with_group_128_is_refused_for_splitting_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let (g, m) = (dir.path().join("g"), dir.path().join("m"));
    quantize(&marlin_sized(dir.path(), "big", 0x2545_f491), &g, &["w4a16", "--layout", "gptq"]);
    assert_fails(
        &repack(&g, &m, &["--target", "marlin", "--tp", "8"]),
        &m,
        &["model.layers.0.mlp.down_proj", "K_partition % group_size == 0", "tp=8"],
    );
}

/// A GPTQ checkpoint of the fixture whose quantize_config.json is then replaced by `edit`.
fn gptq_with_config(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let g = dir.join("g");
    quantize(&fixture("tiny-llama"), &g, &["w4a16", "--layout", "gptq", "--group-size", "32"]);
    let p = g.join("quantize_config.json");
    fs::write(&p, edit(fs::read_to_string(&p).unwrap())).unwrap();
    g
}

#[test]
fn config_group_size_that_disagrees_with_the_scales_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let g = gptq_with_config(dir.path(), |s| s.replace("\"group_size\": 32", "\"group_size\": 64"));
    let a = dir.path().join("a");
    assert_fails(
        &repack(&g, &a, &["--target", "awq"]),
        &a,
        &["model.layers.0.mlp.down_proj.scales", "group size 64"],
    );
}

#[test]
fn unsupported_bits_in_config_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = gptq_with_config(dir.path(), |s| s.replace("\"bits\": 4", "\"bits\": 3"));
    let a = dir.path().join("a");
    assert_fails(&repack(&g, &a, &["--target", "awq"]), &a, &["quantize_config.json", "bits 3"]);
}

#[test]
fn invalid_quantize_config_json_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = gptq_with_config(dir.path(), |_| "{".into());
    let a = dir.path().join("a");
    assert_fails(
        &repack(&g, &a, &["--target", "awq"]),
        &a,
        &["quantize_config.json", "not valid JSON"],
    );
}
