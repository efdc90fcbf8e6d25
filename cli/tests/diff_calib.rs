//! `qtool diff --calib LOG.json` on real logs written by `qtool quantize --method gptq|awq` on
//! the tiny llama fixture (with a byte-level tokenizer), and on hand-broken logs: every number
//! shown is checked against the log file itself, read here independently of the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{quantize_calibrated, run, stderr, stdout, tiny_with_tokenizer};
use serde_json::Value;

struct Runs {
    _dir: tempfile::TempDir,
    tiny: PathBuf,
    gptq_out: PathBuf,
    gptq_log: PathBuf,
    awq_log: PathBuf,
}

/// One GPTQ and one AWQ run, shared by every test (each takes well under a second).
fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tiny = tiny_with_tokenizer(dir.path());
        let calib = dir.path().join("calib.txt");
        let text = "Sphinx of black quartz, judge my vow; pack my box with five dozen liquor \
                    jugs. fn main() { let x = [1, 2, 3]; println!(\"{x:?}\"); }\n";
        std::fs::write(&calib, text.repeat(60)).unwrap();
        let quantize = |method: &str| {
            let (o, log) =
                quantize_calibrated(dir.path(), &tiny, &calib, method, &["--method", method]);
            assert_eq!(o.status.code(), Some(0), "quantize {method}: {}", stderr(&o));
            assert!(log.is_file(), "no log at {}", log.display());
            (dir.path().join(format!("out-{method}")), log)
        };
        let (gptq_out, gptq_log) = quantize("gptq");
        let (_, awq_log) = quantize("awq");
        Runs { _dir: dir, tiny, gptq_out, gptq_log, awq_log }
    })
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok_stdout(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(0), "qtool {args:?}: {}", stderr(&o));
    stdout(&o)
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok_stdout(&all)).expect("one JSON document")
}

/// The data rows of the calibration table: (layer, method, ratio cell, beats cell).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| model."))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .filter(|cells: &Vec<String>| cells.len() == 6)
        .collect()
}

/// serde_json (without `float_roundtrip`) may parse a printed f64 one ulp off, so values that
/// went through the CLI's JSON output are compared to a few ulps.
fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "{got} vs {want}");
}

fn layer_ratio(layer: &Value) -> f64 {
    layer["error"].as_f64().unwrap() / layer["rtn_error"].as_f64().unwrap()
}

#[test]
fn gptq_log_table_is_in_model_order_with_ratios_from_the_log() {
    let r = runs();
    let log = read_json(&r.gptq_log);
    let layers = log["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 14, "2 blocks x 7 linears");
    let text = ok_stdout(&["diff", "--calib", s(&r.gptq_log)]);
    let rows = table_rows(&text);
    assert_eq!(rows.len(), layers.len(), "{text}");
    let mut better = 0;
    for (row, layer) in rows.iter().zip(layers) {
        assert_eq!(row[0], layer["name"].as_str().unwrap());
        assert_eq!(row[1], "gptq");
        assert_eq!(row[4], format!("{:.4}", layer_ratio(layer)));
        let beats = layer["error"].as_f64().unwrap() < layer["rtn_error"].as_f64().unwrap();
        better += usize::from(beats);
        assert_eq!(row[5], if beats { "yes" } else { "no" });
    }
    assert_eq!(better, log["summary"]["better_than_rtn"].as_u64().unwrap() as usize);
    let mean = layers.iter().map(layer_ratio).sum::<f64>() / layers.len() as f64;
    let pct = 100.0 * better as f64 / layers.len() as f64;
    let summary = format!("14 layers: mean ratio {mean:.4} ");
    assert!(text.contains(&summary), "{summary:?} not in {text}");
    assert!(text.contains(&format!("{better} better than RTN ({pct:.1}%)")), "{text}");
    assert!(text.contains("no layer fell back to RTN"), "{text}");
    assert!(mean < 1.0, "GPTQ beats RTN on average on the fixture: {mean}");
}

#[test]
fn gptq_log_json_document() {
    let r = runs();
    let log = read_json(&r.gptq_log);
    let doc = ok_json(&["diff", "--calib", s(&r.gptq_log)]);
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["method"], "gptq");
    assert_eq!(doc["calibration"], log["calibration"]);
    let rows = doc["layers"].as_array().unwrap();
    let layers = log["layers"].as_array().unwrap();
    assert_eq!(rows.len(), layers.len());
    for (row, layer) in rows.iter().zip(layers) {
        assert_eq!(row["name"], layer["name"]);
        assert_eq!(row["rtn_error"], layer["rtn_error"]);
        assert_eq!(row["error"], layer["error"]);
        assert_close(row["ratio"].as_f64().unwrap(), layer_ratio(layer));
        assert_eq!(row["method"], "gptq");
        assert_eq!(row["damp"], layer["damp"]);
    }
    let sum = &doc["summary"];
    assert_eq!(sum["layers"], 14);
    assert_eq!(sum["better_than_rtn"], log["summary"]["better_than_rtn"]);
    assert_eq!(sum["fallbacks"], serde_json::json!([]));
    let mean_err = sum["mean_error"].as_f64().unwrap();
    let logged = log["summary"]["mean_error"].as_f64().unwrap();
    assert!((mean_err - logged).abs() <= 1e-12 * logged, "{mean_err} vs {logged}");
}

#[test]
fn worst_sorts_by_ratio_and_keeps_the_summary_of_all_layers() {
    let r = runs();
    let log = read_json(&r.gptq_log);
    let mut ratios: Vec<(f64, String)> = log["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (layer_ratio(l), l["name"].as_str().unwrap().to_string()))
        .collect();
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    let expected: Vec<&str> = ratios.iter().take(3).map(|(_, n)| n.as_str()).collect();

    let doc = ok_json(&["diff", "--calib", s(&r.gptq_log), "--worst", "3"]);
    let names: Vec<&str> =
        doc["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected);
    assert_eq!(doc["summary"]["layers"], 14);

    let text = ok_stdout(&["diff", "--calib", s(&r.gptq_log), "--worst", "3"]);
    let rows: Vec<String> = table_rows(&text).into_iter().map(|c| c[0].clone()).collect();
    assert_eq!(rows, expected);
}

#[test]
fn filter_selects_layers_and_the_summary_follows() {
    let r = runs();
    let doc = ok_json(&["diff", "--calib", s(&r.gptq_log), "--filter", "mlp\\.down_proj"]);
    let names: Vec<&str> =
        doc["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    );
    assert_eq!(doc["summary"]["layers"], 2);
}

#[test]
fn awq_log_is_shown_with_its_method() {
    let r = runs();
    let log = read_json(&r.awq_log);
    let doc = ok_json(&["diff", "--calib", s(&r.awq_log)]);
    assert_eq!(doc["method"], "awq");
    let rows = doc["layers"].as_array().unwrap();
    assert_eq!(rows.len(), log["layers"].as_array().unwrap().len());
    for (row, layer) in rows.iter().zip(log["layers"].as_array().unwrap()) {
        assert_eq!(row["method"], if layer.get("fallback").is_some() { "rtn" } else { "awq" });
        assert_eq!(row["alpha"], layer.get("alpha").cloned().unwrap_or(Value::Null));
        assert_close(row["ratio"].as_f64().unwrap(), layer_ratio(layer));
    }
}

#[test]
fn with_ref_and_cand_both_tables_are_shown() {
    let r = runs();
    let args = ["diff", s(&r.tiny), s(&r.gptq_out), "--calib", s(&r.gptq_log)];
    let text = ok_stdout(&args);
    assert!(text.contains("SQNR dB"), "weight table missing: {text}");
    assert!(text.contains("beats RTN"), "calibration table missing: {text}");
    assert_eq!(table_rows(&text).len(), 14);

    let doc = ok_json(&args);
    assert!(doc["rows"].as_array().is_some_and(|r| !r.is_empty()), "weight rows: {doc}");
    assert_eq!(doc["calib"]["schema_version"], 1);
    assert_eq!(doc["calib"]["layers"].as_array().unwrap().len(), 14);
}

/// A copy of the real GPTQ log with `edit` applied.
fn edited_log(name: &str, edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, PathBuf) {
    let mut log = read_json(&runs().gptq_log);
    edit(&mut log);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&log).unwrap()).unwrap();
    (dir, path)
}

#[test]
fn fallback_layers_are_listed_with_the_logged_reason() {
    let reason = "Hessian not positive definite after dampening up to 1";
    let (_d, path) = edited_log("fallback.calib.json", |log| {
        let layer = &mut log["layers"][3];
        layer["fallback"] = Value::from(reason);
        layer["error"] = layer["rtn_error"].clone();
    });
    let text = ok_stdout(&["diff", "--calib", s(&path)]);
    let rows = table_rows(&text);
    assert_eq!(rows[3][1], "rtn");
    assert_eq!(rows[3][4], "1.0000");
    assert_eq!(rows[3][5], "no", "a tie is not a win");
    assert!(text.contains("1 layer(s) fell back to RTN:"), "{text}");
    assert!(
        text.contains(&format!("  model.layers.0.self_attn.o_proj.weight: {reason}")),
        "{text}"
    );

    let doc = ok_json(&["diff", "--calib", s(&path)]);
    assert_eq!(
        doc["summary"]["fallbacks"],
        serde_json::json!([{"name": "model.layers.0.self_attn.o_proj.weight", "reason": reason}])
    );
}

#[test]
fn zero_rtn_error_gives_an_undefined_ratio_ranked_worst() {
    let (_d, path) = edited_log("zero.calib.json", |log| {
        log["layers"][5]["rtn_error"] = Value::from(0.0);
    });
    let doc = ok_json(&["diff", "--calib", s(&path), "--worst", "1"]);
    assert_eq!(doc["layers"][0]["name"], "model.layers.0.mlp.up_proj.weight");
    assert_eq!(doc["layers"][0]["ratio"], Value::Null);
    assert_eq!(doc["summary"]["layers"], 14);
}

/// The bad-input contract: exit 2, nothing on stdout, one `error:` line naming the log file and
/// every `mentions`, no panic.
fn assert_bad_log(path: &Path, mentions: &[&str]) {
    let o = run(&["diff", "--calib", s(path)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(&o));
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line expected: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(lines[0].contains(name), "error does not name {name}: {err}");
    for m in mentions {
        assert!(lines[0].contains(m), "error does not mention {m:?}: {err}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn missing_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_log(&dir.path().join("absent.calib.json"), &["cannot read"]);
}

#[test]
fn a_directory_as_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("adir.calib.json");
    std::fs::create_dir(&d).unwrap();
    assert_bad_log(&d, &["cannot read"]);
}

#[test]
fn empty_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_log(&write(dir.path(), "empty.json", ""), &["invalid JSON"]);
}

#[test]
fn truncated_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&runs().gptq_log).unwrap();
    let cut = &text[..text.len() / 2];
    assert_bad_log(&write(dir.path(), "cut.calib.json", cut), &["invalid JSON"]);
}

#[test]
fn a_checkpoint_config_is_not_a_log() {
    // A JSON file of another kind: the error says what was expected.
    assert_bad_log(&common::fixture("tiny-llama/config.json"), &["no 'schema_version'"]);
}

#[test]
fn future_schema_version_is_an_error() {
    let (_d, path) = edited_log("v2.calib.json", |log| log["schema_version"] = Value::from(2));
    assert_bad_log(&path, &["schema_version 2", "not supported"]);
}

#[test]
fn missing_layers_field_is_an_error() {
    let (_d, path) = edited_log("nolayers.calib.json", |log| {
        log.as_object_mut().unwrap().remove("layers");
    });
    assert_bad_log(&path, &["layers"]);
}

#[test]
fn error_of_the_wrong_type_is_an_error() {
    let (_d, path) =
        edited_log("strerr.calib.json", |log| log["layers"][0]["error"] = Value::from("0.1"));
    assert_bad_log(&path, &["not a calibration log", "invalid type"]);
}

#[test]
fn negative_error_is_an_error() {
    let (_d, path) =
        edited_log("neg.calib.json", |log| log["layers"][2]["rtn_error"] = Value::from(-0.5));
    assert_bad_log(&path, &["model.layers.0.self_attn.v_proj.weight", "rtn_error -0.5"]);
}

#[test]
fn bad_log_fails_before_the_checkpoints_are_read() {
    let r = runs();
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.calib.json", "[1, 2]");
    let o = run(&["diff", s(&r.tiny), s(&r.gptq_out), "--calib", s(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).starts_with("error: ") && stderr(&o).contains("bad.calib.json"));
}

#[test]
fn ref_without_cand_is_a_usage_error() {
    let r = runs();
    let o = run(&["diff", s(&r.tiny), "--calib", s(&r.gptq_log)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).starts_with("error: ") && stderr(&o).contains("<CAND>"), "{}", stderr(&o));
}

#[test]
fn diff_without_inputs_is_a_usage_error() {
    let o = run(&["diff"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("error: ") && stderr(&o).contains("<REF>"), "{}", stderr(&o));
}

#[test]
fn plot_needs_ref_and_cand() {
    let r = runs();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("p.svg");
    let o = run(&["diff", "--calib", s(&r.gptq_log), "--plot", s(&svg)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    assert!(!svg.exists());
}
