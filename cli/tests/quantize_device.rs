//! `qtool quantize --method gptq --device auto|cuda|cpu`: where the pipeline runs. Without a
//! usable GPU `--device cuda` is an exit-2 error naming the reason and `auto` falls back to the
//! CPU (saying so on stderr); with one, the GPU and CPU runs agree on every layer's error.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{quantize_calibrated, run, stderr, tiny_with_tokenizer};
use serde_json::Value;

/// `qtool quantize` of the tiny model with `extra` flags; returns the process and the log path.
fn quantize(dir: &Path, tiny: &Path, tag: &str, extra: &[&str]) -> (Output, PathBuf) {
    let calib = dir.join("calib.txt");
    let text = "Sphinx of black quartz, judge my vow; pack my box with five dozen liquor jugs.\n";
    std::fs::write(&calib, text.repeat(60)).unwrap();
    quantize_calibrated(dir, tiny, &calib, tag, extra)
}

fn gpu_present() -> bool {
    qtool_kernels::Gpu::open(0).is_ok()
}

fn layer_errors(log: &Path) -> Vec<(String, f64)> {
    let v: Value = serde_json::from_slice(&std::fs::read(log).unwrap()).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["error"].as_f64().unwrap()))
        .collect()
}

fn log_device(log: &Path) -> String {
    let v: Value = serde_json::from_slice(&std::fs::read(log).unwrap()).unwrap();
    v["device"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn device_cuda_without_gpu_is_a_usage_error_and_auto_falls_back() {
    if gpu_present() {
        println!("skipped: a GPU is present (this test covers the machine without one)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_with_tokenizer(dir.path());
    let (o, _) = quantize(dir.path(), &tiny, "cuda", &["--method", "gptq", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("--device cuda") && err.contains("no usable GPU"), "{err}");
    let (o, _) = quantize(dir.path(), &tiny, "awq-cuda", &["--method", "awq", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no usable GPU"), "{}", stderr(&o));
    let (o, awq_log) = quantize(dir.path(), &tiny, "awq-auto", &["--method", "awq"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("AWQ runs on the CPU"), "{}", stderr(&o));
    assert_eq!(log_device(&awq_log), "cpu");
    let (o, log) = quantize(dir.path(), &tiny, "auto", &["--method", "gptq"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("GPTQ runs on the CPU"), "{}", stderr(&o));
    let (o, log_cpu) = quantize(dir.path(), &tiny, "cpu", &["--method", "gptq", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("GPTQ runs on the CPU"), "{}", stderr(&o));
    assert_eq!(layer_errors(&log), layer_errors(&log_cpu));
}

#[test]
fn device_gpu_and_cpu_runs_agree() {
    if !gpu_present() {
        if std::env::var("QTOOL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("QTOOL_REQUIRE_GPU=1 but no usable GPU");
        }
        println!("skipped: no usable GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_with_tokenizer(dir.path());
    let flags = |d| ["--method", "gptq", "--act-order", "--device", d];
    let (o, log_gpu) = quantize(dir.path(), &tiny, "cuda", &flags("cuda"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (o, log_cpu) = quantize(dir.path(), &tiny, "cpu", &flags("cpu"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!((log_device(&log_gpu).as_str(), log_device(&log_cpu).as_str()), ("cuda", "cpu"));
    let (g, c) = (layer_errors(&log_gpu), layer_errors(&log_cpu));
    assert_eq!(g.len(), c.len());
    // The GPU forward pass differs from the CPU's by f32 rounding, which can flip GPTQ's
    // rounding ties: the errors agree closely, not exactly.
    for ((name, eg), (_, ec)) in g.iter().zip(&c) {
        assert!((eg - ec).abs() <= 5e-2 * ec.abs().max(1e-12), "{name}: gpu {eg} vs cpu {ec}");
    }
}

#[test]
fn device_flag_is_refused_where_it_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_with_tokenizer(dir.path());
    // An unknown device name.
    let (o, _) = quantize(dir.path(), &tiny, "bad", &["--method", "gptq", "--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("gpu"), "{}", stderr(&o));
    // Round-to-nearest has no solve to place.
    let out = dir.path().join("out-rtn");
    let o = run(&[
        "quantize",
        tiny.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--fmt",
        "w4a16",
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--device applies to --method gptq or awq"), "{}", stderr(&o));
}
