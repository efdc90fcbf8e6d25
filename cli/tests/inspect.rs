//! `qtool inspect` on the committed fixtures: text and JSON output, filters, global flags, and
//! the header-only default.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{fixture, run, safetensors_bytes, stderr, stdout};
use serde_json::Value;

fn inspect_json(args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run(&all);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "--json must keep stderr quiet: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn tensors_by_name(v: &Value) -> Vec<(String, String, Vec<u64>, u64)> {
    let mut ts: Vec<_> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["dtype"].as_str().unwrap().to_string(),
                t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    ts.sort();
    ts
}

#[test]
fn json_schema_on_single_file() {
    let path = fixture("tiny-llama/model.safetensors");
    let v = inspect_json(&[path.to_str().unwrap()]);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["scheme"], "unquantized");
    assert_eq!(v["metadata"]["format"], "pt");
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    let ts = v["tensors"].as_array().unwrap();
    assert_eq!(ts.len(), 21);
    let q = ts.iter().find(|t| t["name"] == "model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!(q["dtype"], "BF16");
    assert_eq!(q["shape"], serde_json::json!([32, 64]));
    assert_eq!(q["bytes"], 32 * 64 * 2);
    assert!(q["file"].as_str().unwrap().ends_with("model.safetensors"));
    assert!(q["offset"].as_u64().unwrap() > 8, "offset is absolute in the file");
    assert!(q.get("stats").is_none(), "no stats without --stats");
    // Summary is consistent with the tensor list.
    let s = &v["summary"];
    let bytes: u64 = ts.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    let params: u64 = ts
        .iter()
        .map(|t| {
            t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>()
        })
        .sum();
    assert_eq!(s["tensors"], 21);
    assert_eq!(s["bytes"], bytes);
    assert_eq!(s["params"], params);
    assert_eq!(s["params"], 106_816);
    assert_eq!(s["by_dtype"], serde_json::json!({"BF16": bytes}));
}

#[test]
fn sharded_and_single_have_the_same_tensors() {
    let single = inspect_json(&[fixture("tiny-llama").to_str().unwrap()]);
    let sharded = inspect_json(&[fixture("tiny-llama-sharded").to_str().unwrap()]);
    assert_eq!(tensors_by_name(&single), tensors_by_name(&sharded));
    assert_eq!(single["summary"], sharded["summary"]);
    assert_eq!(sharded["files"].as_array().unwrap().len(), 2);
    assert_eq!(sharded["scheme"], "unquantized");
    let files: Vec<&str> = sharded["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["file"].as_str().unwrap())
        .collect();
    assert!(files.iter().any(|f| f.ends_with("model-00001-of-00002.safetensors")));
    assert!(files.iter().any(|f| f.ends_with("model-00002-of-00002.safetensors")));
}

#[test]
fn gguf_json_keeps_stored_shape_order() {
    let v = inspect_json(&[fixture("tiny.gguf").to_str().unwrap()]);
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["scheme"], "gguf:MOSTLY_Q8_0");
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    let ts = v["tensors"].as_array().unwrap();
    assert_eq!(ts.len(), 12);
    // gguf-py wrote numpy shape [32, 64] as ne = [64, 32].
    let embd = ts.iter().find(|t| t["name"] == "token_embd.weight").unwrap();
    assert_eq!(embd["dtype"], "F16");
    assert_eq!(embd["shape"], serde_json::json!([64, 32]));
    let down = ts.iter().find(|t| t["name"] == "blk.0.ffn_down.weight").unwrap();
    assert_eq!(down["dtype"], "Q8_0");
    assert_eq!(down["shape"], serde_json::json!([128, 64]));
    assert_eq!(down["bytes"], 64 * (128 / 32) * 34);
    assert_eq!(v["summary"]["by_dtype"]["F32"], 3 * 64 * 4);
}

#[test]
fn text_output_has_table_summary_and_scheme() {
    let out = run(&["inspect", fixture("tiny-llama").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("scheme: unquantized"), "{text}");
    assert!(text.contains("| model.layers.1.mlp.down_proj.weight"), "{text}");
    assert!(text.contains("[64, 128]"), "{text}");
    assert!(text.contains("tensors: 21"), "{text}");
    assert!(text.contains("params: 106,816"), "{text}");
    assert!(text.contains("bytes: 213,632"), "{text}");
    assert!(text.contains("by dtype: BF16"), "{text}");
    assert!(text.contains("format: pt"), "{text}");
    assert!(out.stderr.is_empty(), "no progress or logs on a non-TTY: {}", stderr(&out));
}

#[test]
fn filter_selects_tensors_and_summary_follows() {
    let path = fixture("tiny-llama");
    let v = inspect_json(&[path.to_str().unwrap(), "--filter", r"layers\.0\..*_proj"]);
    let names: Vec<&str> =
        v["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("model.layers.0.") && n.contains("_proj")));
    assert_eq!(v["summary"]["tensors"], 7);
    let bytes: u64 =
        v["tensors"].as_array().unwrap().iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["summary"]["bytes"], bytes);

    let none = inspect_json(&[path.to_str().unwrap(), "--filter", "^no-such-tensor$"]);
    assert_eq!(none["summary"]["tensors"], 0);
    assert_eq!(none["summary"]["by_dtype"], serde_json::json!({}));
}

#[test]
fn invalid_filter_is_a_usage_error() {
    let out = run(&["inspect", fixture("tiny.gguf").to_str().unwrap(), "--filter", "(unclosed"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --filter"), "{err}");
}

#[test]
fn global_flags_go_anywhere() {
    let path = fixture("tiny.gguf");
    let a = run(&["--json", "--threads", "2", "inspect", path.to_str().unwrap()]);
    let b = run(&["inspect", path.to_str().unwrap(), "--json", "-q", "--threads", "1"]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn version_and_usage_errors() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("qtool "), "{}", stdout(&out));
    let out = run(&["inspect"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error:"));
    let out = run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error:"));
}

/// Header-only really means header-only: data bytes that are garbage (all 0xFF: NaN in BF16)
/// do not matter, and a tensor that claims 64 GiB of (sparse, unwritten) data inspects at once.
#[test]
fn default_inspect_never_reads_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    let header = r#"{"w":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,32]}}"#;
    fs::write(&garbage, safetensors_bytes(header, &[0xFF; 32])).unwrap();
    let v = inspect_json(&[garbage.to_str().unwrap()]);
    assert_eq!(v["summary"]["bytes"], 32);

    let huge = dir.path().join("huge.safetensors");
    let n: u64 = 16 << 30; // F32 elements: 64 GiB
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * 4);
    let bytes = safetensors_bytes(&header, &[]);
    fs::write(&huge, &bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&huge).unwrap();
    f.set_len(bytes.len() as u64 + n * 4).unwrap(); // a hole: no data blocks on disk
    drop(f);
    let start = Instant::now();
    let v = inspect_json(&[huge.to_str().unwrap()]);
    let took = start.elapsed();
    assert_eq!(v["summary"]["bytes"], n * 4);
    // Reading 64 GiB, even of holes, takes many seconds; parsing a header takes milliseconds.
    assert!(took < Duration::from_secs(5), "inspect took {took:?}: did it read the data?");
}

#[test]
fn stats_columns_and_json() {
    let path = fixture("tiny.gguf");
    let out = run(&["inspect", path.to_str().unwrap(), "--stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for col in ["min", "max", "absmax", "mean", "std", "nan", "inf"] {
        assert!(text.lines().nth(3).unwrap().contains(&format!(" {col} ")), "{col}: {text}");
    }
    let v = inspect_json(&[path.to_str().unwrap(), "--stats"]);
    for t in v["tensors"].as_array().unwrap() {
        let s = &t["stats"];
        let numel: u64 =
            t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product();
        assert_eq!(s["count"], numel, "{}", t["name"]);
        assert_eq!(s["nan"], 0);
        assert_eq!(s["inf"], 0);
        let (min, max, absmax) =
            (s["min"].as_f64().unwrap(), s["max"].as_f64().unwrap(), s["absmax"].as_f64().unwrap());
        assert!(min <= max && absmax == min.abs().max(max.abs()), "{s}");
        assert!(s["std"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn stats_do_not_depend_on_thread_count() {
    let path = fixture("tiny-llama-sharded");
    let one = run(&["--threads", "1", "inspect", path.to_str().unwrap(), "--stats", "--json"]);
    let four = run(&["--threads", "4", "inspect", path.to_str().unwrap(), "--stats", "--json"]);
    assert_eq!(one.status.code(), Some(0), "{}", stderr(&one));
    assert_eq!(one.stdout, four.stdout);
}

#[test]
fn stats_count_nan_and_inf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("special.safetensors");
    let values: [f32; 6] = [1.0, -3.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = r#"{"w":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}"#;
    fs::write(&path, safetensors_bytes(header, &data)).unwrap();
    let v = inspect_json(&[path.to_str().unwrap(), "--stats"]);
    let s = &v["tensors"][0]["stats"];
    assert_eq!(s["nan"], 1);
    assert_eq!(s["inf"], 2);
    assert_eq!(s["min"], -3.0);
    assert_eq!(s["max"], 2.0);
    assert_eq!(s["absmax"], 3.0);
    assert_eq!(s["mean"], 0.0);
}

/// Writes `model.safetensors` with the given tensors (name, dtype, shape, bytes) into `dir`.
fn write_model(dir: &std::path::Path, tensors: &[(&str, &str, &[u64], Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    fs::write(dir.join("model.safetensors"), safetensors_bytes(&header, &data)).unwrap();
}

#[test]
fn scheme_from_comfy_quant_marker_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let marker = br#"{"format": "float8_e4m3fn"}"#.to_vec();
    write_model(
        dir.path(),
        &[
            ("blocks.0.q.weight", "F8_E4M3", &[4, 4], vec![0; 16]),
            ("blocks.0.q.weight_scale", "F32", &[], vec![0, 0, 128, 63]),
            ("blocks.0.q.comfy_quant", "U8", &[marker.len() as u64], marker.clone()),
        ],
    );
    let v = inspect_json(&[dir.path().to_str().unwrap()]);
    assert_eq!(v["scheme"], "comfy-quant:float8_e4m3fn");
}

#[test]
fn scheme_from_config_and_side_files() {
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &[
            ("l.weight_packed", "I32", &[4, 1], vec![0; 16]),
            ("l.weight_scale", "BF16", &[4, 1], vec![0; 8]),
        ],
    );
    let path = dir.path().to_str().unwrap().to_string();
    assert_eq!(inspect_json(&[&path])["scheme"], Value::Null, "integer weights, no marker");

    fs::write(
        dir.path().join("config.json"),
        r#"{"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}}"#,
    )
    .unwrap();
    assert_eq!(inspect_json(&[&path])["scheme"], "compressed-tensors:pack-quantized");
    // The file path form finds the same config next to the weights.
    let file = dir.path().join("model.safetensors");
    assert_eq!(
        inspect_json(&[file.to_str().unwrap()])["scheme"],
        "compressed-tensors:pack-quantized"
    );

    fs::write(
        dir.path().join("hf_quant_config.json"),
        r#"{"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4"}}"#,
    )
    .unwrap();
    assert_eq!(inspect_json(&[&path])["scheme"], "modelopt:NVFP4");

    fs::write(dir.path().join("hf_quant_config.json"), "{ not json").unwrap();
    let out = run(&["inspect", &path]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains("hf_quant_config.json"), "{err}");
}
