//! `qtool quantize --fmt w4a16|w8a16` end to end on the tiny-llama fixture (hidden 64, so the
//! group size is 32 or 64 where the default 128 would not divide in_features): each layout is
//! detected by `inspect`, writes the tensors and configs its loaders read, and every refusal
//! exits 2 with one `error:` line and leaves nothing behind. The tensor values are checked
//! against numpy in tests/crosscheck/test_quantize_int.py.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{assert_fails, fixture, inspect_json, json_file, ok, run, s, stdout, tensor};
use serde_json::Value;

fn quantize(out: &Path, extra: &[&str]) -> Output {
    let input = fixture("tiny-llama");
    let mut args = vec!["quantize", s(&input), "-o", s(out), "-q"];
    args.extend_from_slice(extra);
    run(&args)
}

const Q: &str = "model.layers.0.self_attn.q_proj";
const K: &str = "model.layers.0.self_attn.k_proj";

#[test]
fn gptq_layout_writes_qweight_qzeros_scales_g_idx_and_quantize_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gptq");
    ok(&quantize(&out, &["--fmt", "w4a16", "--layout", "gptq", "--group-size", "32"]));
    let r = inspect_json(&out);
    assert_eq!(r["scheme"], "gptq");
    // q_proj: [N=64, K=64]; k_proj: [N=32, K=64].
    assert_eq!(tensor(&r, &format!("{Q}.qweight"))["shape"], serde_json::json!([8, 64]));
    assert_eq!(tensor(&r, &format!("{Q}.qweight"))["dtype"], "I32");
    assert_eq!(tensor(&r, &format!("{K}.qzeros"))["shape"], serde_json::json!([2, 4]));
    assert_eq!(tensor(&r, &format!("{K}.scales"))["shape"], serde_json::json!([2, 32]));
    assert_eq!(tensor(&r, &format!("{K}.scales"))["dtype"], "F16");
    assert_eq!(tensor(&r, &format!("{K}.g_idx"))["shape"], serde_json::json!([64]));
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["name"] != format!("{Q}.weight")));
    assert_eq!(tensor(&r, "lm_head.weight")["dtype"], "BF16");
    let qc = json_file(&out.join("quantize_config.json"));
    assert_eq!(
        qc,
        serde_json::json!({"bits": 4, "group_size": 32, "desc_act": false, "sym": true,
                           "quant_method": "gptq", "checkpoint_format": "gptq"})
    );
    let cfg = json_file(&out.join("config.json"));
    assert_eq!(cfg["quantization_config"], qc);
    assert_eq!(cfg["hidden_size"], 64, "the input's config.json is kept");
}

#[test]
fn gptq_v2_and_asym_and_int8_are_recorded_in_quantize_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v2");
    ok(&quantize(
        &out,
        &[
            "--fmt",
            "w8a16",
            "--layout",
            "gptq",
            "--gptq-format",
            "v2",
            "--asym",
            "--group-size",
            "-1",
        ],
    ));
    let qc = json_file(&out.join("quantize_config.json"));
    assert_eq!(qc["bits"], 8);
    assert_eq!(qc["group_size"], -1);
    assert_eq!(qc["sym"], false);
    assert_eq!(qc["checkpoint_format"], "gptq_v2");
    let r = inspect_json(&out);
    assert_eq!(r["scheme"], "gptq");
    // 8-bit: 4 values per word; per-channel: one group.
    assert_eq!(tensor(&r, &format!("{Q}.qweight"))["shape"], serde_json::json!([16, 64]));
    assert_eq!(tensor(&r, &format!("{Q}.qzeros"))["shape"], serde_json::json!([1, 16]));
}

#[test]
fn awq_layout_is_asymmetric_gemm_with_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("awq");
    ok(&quantize(&out, &["--fmt", "w4a16", "--layout", "awq", "--group-size", "64"]));
    let r = inspect_json(&out);
    assert_eq!(r["scheme"], "awq");
    assert_eq!(tensor(&r, &format!("{K}.qweight"))["shape"], serde_json::json!([64, 4]));
    assert_eq!(tensor(&r, &format!("{K}.qzeros"))["shape"], serde_json::json!([1, 4]));
    assert_eq!(tensor(&r, &format!("{K}.scales"))["shape"], serde_json::json!([1, 32]));
    let qc = &json_file(&out.join("config.json"))["quantization_config"];
    assert_eq!(qc["quant_method"], "awq");
    assert_eq!(qc["zero_point"], true);
    assert_eq!(qc["group_size"], 64);
    assert_eq!(qc["bits"], 4);
    assert_eq!(qc["version"], "gemm");
    assert_eq!(qc["modules_to_not_convert"], serde_json::json!(["lm_head", "model.embed_tokens"]));
    assert!(!out.join("quantize_config.json").exists());
}

#[test]
fn compressed_tensors_is_the_default_layout_with_pack_quantized_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct");
    ok(&quantize(&out, &["--fmt", "w4a16", "--group-size", "32"]));
    let r = inspect_json(&out);
    assert_eq!(r["scheme"], "compressed-tensors:pack-quantized");
    assert_eq!(tensor(&r, &format!("{K}.weight_packed"))["shape"], serde_json::json!([32, 8]));
    assert_eq!(tensor(&r, &format!("{K}.weight_scale"))["shape"], serde_json::json!([32, 2]));
    assert_eq!(tensor(&r, &format!("{K}.weight_scale"))["dtype"], "BF16");
    assert_eq!(tensor(&r, &format!("{K}.weight_shape"))["dtype"], "I64");
    let names: Vec<&str> =
        r["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!names.iter().any(|n| n.ends_with("weight_zero_point")), "symmetric has no zp");
    let qc = &json_file(&out.join("config.json"))["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["format"], "pack-quantized");
    assert_eq!(qc["quantization_status"], "compressed");
    let w = &qc["config_groups"]["group_0"]["weights"];
    assert_eq!(
        *w,
        serde_json::json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
                           "group_size": 32, "dynamic": false, "actorder": null})
    );
    assert_eq!(qc["ignore"], serde_json::json!(["lm_head", "model.embed_tokens"]));
    assert!(w.get("scale_dtype").is_none() && w.get("zp_dtype").is_none());
}

#[test]
fn compressed_tensors_asym_writes_zero_points_packed_along_n() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct");
    ok(&quantize(&out, &["--fmt", "w8a16", "--asym", "--group-size", "-1"]));
    let r = inspect_json(&out);
    assert_eq!(r["scheme"], "compressed-tensors:pack-quantized");
    assert_eq!(tensor(&r, &format!("{K}.weight_zero_point"))["shape"], serde_json::json!([8, 1]));
    assert_eq!(tensor(&r, &format!("{K}.weight_packed"))["shape"], serde_json::json!([32, 16]));
    let w = &json_file(&out.join("config.json"))["quantization_config"]["config_groups"]["group_0"]
        ["weights"];
    assert_eq!(w["strategy"], "channel");
    assert_eq!(w["group_size"], Value::Null);
    assert_eq!(w["symmetric"], false);
    assert_eq!(w["num_bits"], 8);
}

#[test]
fn output_bytes_do_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = ["--fmt", "w4a16", "--layout", "awq", "--group-size", "32"];
    let one = [&["--threads", "1"][..], &args[..]].concat();
    let four = [&["--threads", "4"][..], &args[..]].concat();
    ok(&quantize(&a, &one));
    ok(&quantize(&b, &four));
    assert!(
        fs::read(a.join("model.safetensors")).unwrap()
            == fs::read(b.join("model.safetensors")).unwrap()
    );
}

#[test]
fn default_group_size_128_that_does_not_divide_in_features_is_refused_naming_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "w4a16"]),
        &out,
        &["model.layers.0", "group size 128", "in_features 64"],
    );
}

#[test]
fn awq_refuses_sym() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "w4a16", "--layout", "awq", "--sym", "--group-size", "32"]),
        &out,
        &["awq", "asymmetric only"],
    );
}

#[test]
fn awq_refuses_int8() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "w8a16", "--layout", "awq", "--group-size", "32"]),
        &out,
        &["w8a16", "awq", "4-bit"],
    );
}

#[test]
fn int_options_are_refused_for_float_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "nvfp4", "--group-size", "32"]),
        &out,
        &["--group-size", "w4a16"],
    );
}

#[test]
fn gptq_format_is_refused_outside_gptq_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "w4a16", "--gptq-format", "v2", "--group-size", "32"]),
        &out,
        &["--gptq-format", "compressed-tensors"],
    );
}

#[test]
fn zero_group_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "w4a16", "--group-size", "0"]),
        &out,
        &["--group-size 0"],
    );
}

#[test]
fn float_formats_are_refused_in_gptq_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    assert_fails(
        &quantize(&out, &["--fmt", "nvfp4", "--layout", "gptq"]),
        &out,
        &["gptq", "integer weights only"],
    );
}

#[test]
fn single_file_output_is_refused_for_gptq() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    assert_fails(
        &quantize(&out, &["--fmt", "w4a16", "--layout", "gptq", "--group-size", "32"]),
        &out,
        &["gptq", "directory"],
    );
}

#[test]
fn dry_run_lists_the_int_parts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let r = run(&[
        "quantize",
        s(&fixture("tiny-llama")),
        "-o",
        s(&out),
        "--fmt",
        "w4a16",
        "--layout",
        "gptq",
        "--group-size",
        "64",
        "--dry-run",
        "--json",
    ]);
    ok(&r);
    let rep: Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(rep["scheme"], "int4-weight-only");
    let e = rep["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == format!("{Q}.weight"))
        .unwrap();
    let parts: Vec<&str> =
        e["outputs"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        parts,
        [
            format!("{Q}.qweight"),
            format!("{Q}.qzeros"),
            format!("{Q}.scales"),
            format!("{Q}.g_idx")
        ]
    );
    assert!(!out.exists());
}
