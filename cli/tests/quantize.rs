//! `qtool quantize` and `qtool formats` end to end on the fixtures: every seed name writes a
//! checkpoint that opens and is detected as what it claims; each bad input exits 2 with one
//! `error:` line and leaves no output behind; output bytes do not depend on `--threads`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixture, run, safetensors_bytes, stderr, stdout};
use serde_json::Value;

const SEED: [(&str, &str); 12] = [
    ("disabled", "unquantized"),
    ("fp8_e4m3fn", "comfy-quant:float8_e4m3fn"),
    ("fp8_e4m3fn_fast", "comfy-quant:float8_e4m3fn"),
    ("fp8_e4m3fn_scaled", "comfy-quant:float8_e4m3fn"),
    ("fp8_e4m3fn_scaled_fast", "comfy-quant:float8_e4m3fn"),
    ("fp8_e5m2", "comfy-quant:float8_e5m2"),
    ("fp8_e5m2_fast", "comfy-quant:float8_e5m2"),
    ("fp8_e5m2_scaled", "comfy-quant:float8_e5m2"),
    ("fp8_e5m2_scaled_fast", "comfy-quant:float8_e5m2"),
    ("fp4_experimental", "comfy-quant:nvfp4"),
    ("fp4_scaled", "comfy-quant:nvfp4"),
    ("fp4_scaled_fast", "comfy-quant:nvfp4"),
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn quantize(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["quantize", s(input), "-o", s(out)];
    args.extend_from_slice(extra);
    run(&args)
}

fn inspect_json(path: &Path) -> Value {
    let out = run(&["inspect", "--json", s(path)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn tensor<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

/// The bad-input contract: exit 2, one `error:` line mentioning each of `mentions`, nothing on
/// stdout, no panic, and nothing at `out`.
fn assert_fails(out: &Output, target: &Path, mentions: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in mentions {
        assert!(lines[0].contains(m), "error does not mention {m:?}: {err}");
    }
    assert!(!target.exists(), "{} was left behind", target.display());
    lines[0].to_string()
}

#[test]
fn every_seed_name_writes_a_detectable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for (fmt, scheme) in SEED {
        let out = dir.path().join(format!("{fmt}.safetensors"));
        let r = quantize(&fixture("tiny-llama/model.safetensors"), &out, &["--fmt", fmt, "-q"]);
        assert_eq!(r.status.code(), Some(0), "{fmt}: {}", stderr(&r));
        let report = inspect_json(&out);
        assert_eq!(report["scheme"], scheme, "{fmt}");
        let q = tensor(&report, "model.layers.0.self_attn.q_proj.weight");
        let want = match fmt {
            "disabled" => "BF16",
            f if f.starts_with("fp8_e4m3fn") => "F8_E4M3",
            f if f.starts_with("fp8_e5m2") => "F8_E5M2",
            _ => "U8",
        };
        assert_eq!(q["dtype"], want, "{fmt}");
        // Conventionally kept tensors stay in their dtype.
        assert_eq!(tensor(&report, "lm_head.weight")["dtype"], "BF16", "{fmt}");
        assert_eq!(tensor(&report, "model.embed_tokens.weight")["dtype"], "BF16", "{fmt}");
        assert_eq!(tensor(&report, "model.norm.weight")["dtype"], "BF16", "{fmt}");
    }
}

#[test]
fn disabled_is_a_byte_identical_copy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let input = fixture("tiny-llama/model.safetensors");
    let r = quantize(&input, &out, &["--fmt", "disabled", "-q"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    // The writer lays tensors out in the source's order with the same header rules, so a copy
    // of a canonical file is the same file.
    assert!(fs::read(&input).unwrap() == fs::read(&out).unwrap(), "copy differs from the input");
}

#[test]
fn other_layouts_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("fp8_e4m3fn_scaled", "comfy-legacy", "comfy fp8 scaled"),
        ("fp8_e4m3fn", "comfy-legacy", "fp8:e4m3fn"),
        ("fp8_e4m3fn_scaled", "compressed-tensors", "compressed-tensors:float-quantized"),
        ("fp4_scaled", "compressed-tensors", "compressed-tensors:nvfp4-pack-quantized"),
        ("nvfp4", "compressed-tensors", "compressed-tensors:nvfp4-pack-quantized"),
        ("fp4_scaled", "modelopt", "modelopt:W4A16_NVFP4"),
        ("fp8_dynamic", "compressed-tensors", "compressed-tensors:float-quantized"),
        ("fp8_channel", "compressed-tensors", "compressed-tensors:float-quantized"),
        ("mxfp4", "compressed-tensors", "compressed-tensors:mxfp4-pack-quantized"),
        ("mxfp8", "compressed-tensors", "compressed-tensors:mxfp8-quantized"),
        ("mxfp8", "comfy", "comfy-quant:mxfp8"),
    ];
    for (i, (fmt, layout, scheme)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let r = quantize(&fixture("tiny-llama"), &out, &["--fmt", fmt, "--layout", layout, "-q"]);
        assert_eq!(r.status.code(), Some(0), "{fmt} {layout}: {}", stderr(&r));
        assert_eq!(inspect_json(&out)["scheme"], scheme, "{fmt} {layout}");
        assert!(out.join("config.json").is_file());
    }
}

#[test]
fn legacy_marker_encodes_full_precision_matmul() {
    let dir = tempfile::tempdir().unwrap();
    for (fmt, n) in [("fp8_e4m3fn_scaled", 2), ("fp8_e4m3fn_scaled_fast", 0)] {
        let out = dir.path().join(format!("{fmt}.safetensors"));
        let r = quantize(
            &fixture("tiny-llama/model.safetensors"),
            &out,
            &["--fmt", fmt, "--layout", "comfy-legacy", "-q"],
        );
        assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
        let report = inspect_json(&out);
        let marker = tensor(&report, "scaled_fp8");
        assert_eq!(marker["dtype"], "F8_E4M3");
        assert_eq!(marker["shape"], serde_json::json!([n]));
        assert_eq!(tensor(&report, "model.layers.1.mlp.up_proj.scale_weight")["dtype"], "F32");
    }
}

#[test]
fn sharded_input_gives_sharded_output_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = quantize(&fixture("tiny-llama-sharded"), &out, &["--fmt", "fp8_e4m3fn_scaled", "-q"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = inspect_json(&out);
    assert_eq!(report["files"].as_array().unwrap().len(), 2);
    assert_eq!(report["scheme"], "comfy-quant:float8_e4m3fn");
}

#[test]
fn output_bytes_do_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    for fmt in ["fp8_e4m3fn_scaled", "fp4_scaled"] {
        let mut outputs = Vec::new();
        for threads in ["1", "3"] {
            let out = dir.path().join(format!("{fmt}-{threads}.safetensors"));
            let r = quantize(
                &fixture("tiny-llama/model.safetensors"),
                &out,
                &["--fmt", fmt, "--threads", threads, "-q"],
            );
            assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
            outputs.push(fs::read(&out).unwrap());
        }
        assert!(outputs[0] == outputs[1], "{fmt}: output differs between 1 and 3 threads");
    }
}

#[test]
fn dry_run_writes_nothing_and_reports_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &out,
        &["--fmt", "fp4_scaled", "--dry-run", "--json", "--ignore", "layers\\.1\\."],
    );
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(!out.exists());
    let v: Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["summary"]["quantized"], 7, "layer 0 only");
    let up1 = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    assert_eq!(up1["action"], "copy");
    assert!(up1["note"].as_str().unwrap().contains("--ignore"));
}

#[test]
fn include_quantizes_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &out,
        &["--fmt", "fp8_e4m3fn_scaled", "--include", "^lm_head", "-q"],
    );
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let report = inspect_json(&out);
    assert_eq!(tensor(&report, "lm_head.weight")["dtype"], "F8_E4M3");
    assert_eq!(tensor(&report, "model.embed_tokens.weight")["dtype"], "BF16");
}

#[test]
fn formats_lists_every_name_with_its_layouts() {
    let r = run(&["formats", "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let v: Value = serde_json::from_str(&stdout(&r)).unwrap();
    let formats = v["formats"].as_array().unwrap();
    for (fmt, _) in SEED {
        let f = formats.iter().find(|f| f["name"] == fmt).unwrap_or_else(|| panic!("{fmt}"));
        assert_eq!(f["default_layout"], "comfy");
        assert!(f["layouts"].as_array().unwrap().iter().any(|l| l == "comfy"));
    }
    for gguf in ["q8_0", "q4_k_m", "q6_k"] {
        assert!(
            formats.iter().any(|f| f["name"] == gguf && f["default_layout"] == "gguf"),
            "{gguf}"
        );
    }
    let text = run(&["formats"]);
    assert!(stdout(&text).contains("fp8_e4m3fn_scaled_fast"));
}

#[test]
fn gguf_input_with_gguf_type_is_requantized() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let r = quantize(&fixture("tiny.gguf"), &out, &["--fmt", "q8_0", "-q"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let report = inspect_json(&out);
    assert_eq!(report["format"], "gguf");
    assert_eq!(report["scheme"], "gguf:MOSTLY_Q8_0");
}

#[test]
fn gguf_dry_run_reports_the_recipe_plan() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let r = quantize(&fixture("tiny.gguf"), &out, &["--fmt", "Q4_K_M", "--dry-run", "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(!out.exists());
    let v: Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!((v["fmt"].as_str(), v["layout"].as_str()), (Some("Q4_K_M"), Some("gguf")));
    let n = v["tensors"].as_array().unwrap().len() as u64;
    assert_eq!(v["summary"]["tensors"], n);
    assert!(n > 0);
}

// ---- bad input: one named test per case ----

#[test]
fn already_quantized_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("q.safetensors");
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &first,
        &["--fmt", "fp8_e4m3fn_scaled", "-q"],
    );
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let out = dir.path().join("again.safetensors");
    let r = quantize(&first, &out, &["--fmt", "fp4_scaled"]);
    assert_fails(&r, &out, &["q.safetensors", "already quantized", "comfy-quant:float8_e4m3fn"]);
}

/// A 2×16 F32 linear weight named `layer.weight` with `bad` at element 5.
fn write_weight(dir: &Path, bad: f32) -> PathBuf {
    let header = r#"{"layer.weight":{"dtype":"F32","shape":[2,16],"data_offsets":[0,128]}}"#;
    let mut data: Vec<u8> = Vec::new();
    for i in 0..32 {
        let v = if i == 5 { bad } else { i as f32 * 0.25 - 3.0 };
        data.extend_from_slice(&v.to_le_bytes());
    }
    let path = dir.join("w.safetensors");
    fs::write(&path, safetensors_bytes(header, &data)).unwrap();
    path
}

#[test]
fn nan_weight_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_weight(dir.path(), f32::NAN);
    for fmt in ["fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp4_scaled"] {
        let out = dir.path().join(format!("{fmt}.safetensors"));
        let r = quantize(&input, &out, &["--fmt", fmt]);
        assert_fails(&r, &out, &["w.safetensors", "layer.weight", "NaN", "row 0, column 5"]);
    }
}

#[test]
fn inf_weight_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_weight(dir.path(), f32::INFINITY);
    let out = dir.path().join("o.safetensors");
    let r = quantize(&input, &out, &["--fmt", "fp8_e4m3fn_scaled"]);
    assert_fails(&r, &out, &["layer.weight", "inf"]);
    let r = quantize(&input, &out, &["--fmt", "fp8_e4m3fn_scaled", "--allow-nonfinite", "-q"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(out.is_file());
}

#[test]
fn unknown_fmt_lists_the_valid_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(&fixture("tiny-llama/model.safetensors"), &out, &["--fmt", "fp8_e4m3"]);
    assert_fails(&r, &out, &["fp8_e4m3", "fp8_e4m3fn_scaled_fast", "fp4_experimental", "q4_k_m"]);
}

#[test]
fn layout_that_cannot_express_the_fmt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &out,
        &["--fmt", "fp4_scaled", "--layout", "comfy-legacy"],
    );
    assert_fails(&r, &out, &["comfy-legacy", "fp4_scaled", "comfy, compressed-tensors, modelopt"]);
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &out,
        &["--fmt", "fp8_e5m2_scaled", "--layout", "compressed-tensors"],
    );
    assert_fails(&r, &out, &["compressed-tensors", "E4M3 only", "comfy"]);
}

#[test]
fn output_equal_to_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    fs::copy(fixture("tiny-llama/model.safetensors"), &input).unwrap();
    let before = fs::read(&input).unwrap();
    let r = quantize(&input, &input, &["--fmt", "fp8_e4m3fn"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).starts_with("error: ") && stderr(&r).contains("input"), "{}", stderr(&r));
    assert_eq!(stderr(&r).lines().count(), 1);
    assert_eq!(fs::read(&input).unwrap(), before, "input was modified");
}

#[test]
fn config_layout_with_file_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(&fixture("tiny-llama/model.safetensors"), &out, &["--fmt", "nvfp4"]);
    assert_fails(&r, &out, &["compressed-tensors", "directory"]);
}

#[test]
fn sharded_input_with_file_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(&fixture("tiny-llama-sharded"), &out, &["--fmt", "fp8_e4m3fn"]);
    assert_fails(&r, &out, &["2 shards", "directory"]);
}

#[test]
fn gguf_type_on_safetensors_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let r = quantize(&fixture("tiny-llama"), &out, &["--fmt", "q4_k_m"]);
    assert_fails(&r, &out, &["tiny-llama", "GGUF input"]);
}

#[test]
fn safetensors_fmt_on_gguf_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(&fixture("tiny.gguf"), &out, &["--fmt", "fp8_e4m3fn_scaled"]);
    assert_fails(&r, &out, &["tiny.gguf", "GGUF"]);
}

#[test]
fn invalid_ignore_regex_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let r = quantize(
        &fixture("tiny-llama/model.safetensors"),
        &out,
        &["--fmt", "fp8_e4m3fn", "--ignore", "("],
    );
    assert_fails(&r, &out, &["--ignore", "\"(\"", "unclosed group"]);
}

#[test]
fn failed_directory_output_leaves_nothing() {
    // A directory output is created by the run; a failure must remove it again.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in");
    fs::create_dir(&src).unwrap();
    let input = write_weight(&src, f32::NAN);
    assert!(input.is_file());
    let out = dir.path().join("out");
    let r = quantize(&src, &out, &["--fmt", "fp8_e4m3fn_scaled"]);
    assert_fails(&r, &out, &["layer.weight"]);
}
