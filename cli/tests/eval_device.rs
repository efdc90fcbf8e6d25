//! `qtool eval --device auto|cpu|cuda`: without a usable GPU `cuda` is an exit-2 error naming
//! the reason and `auto` runs on the CPU; with one, `auto` and `cuda` run there and agree with
//! the CPU's perplexity to 1e-5 relative. The JSON names the device that ran.

mod common;

use std::path::Path;

use common::{run, stderr, stdout, tiny_with_tokenizer};
use serde_json::Value;

fn eval(tiny: &Path, text: &Path, device: &str) -> std::process::Output {
    run(&[
        "eval",
        tiny.to_str().unwrap(),
        "--ppl",
        text.to_str().unwrap(),
        "--ctx",
        "32",
        "--device",
        device,
        "--json",
    ])
}

fn json(o: &std::process::Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

#[test]
fn eval_device_choice() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_with_tokenizer(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog. ".repeat(20)).unwrap();
    let cpu = json(&eval(&tiny, &text, "cpu"));
    assert_eq!(cpu["device"], "cpu");
    let gpu_present = qtool_kernels::Gpu::open(0).is_ok();
    if !gpu_present && std::env::var("QTOOL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("QTOOL_REQUIRE_GPU=1 but no usable GPU");
    }
    let auto = json(&eval(&tiny, &text, "auto"));
    if gpu_present {
        assert_eq!(auto["device"], "cuda");
        let cuda = json(&eval(&tiny, &text, "cuda"));
        assert_eq!(cuda["device"], "cuda");
        let (a, b) = (cuda["ppl"].as_f64().unwrap(), cpu["ppl"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * b, "cuda {a} vs cpu {b}");
        assert_eq!(cuda["tokens"], cpu["tokens"]);
    } else {
        assert_eq!(auto["device"], "cpu");
        assert_eq!(auto["ppl"], cpu["ppl"]);
        let o = eval(&tiny, &text, "cuda");
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
        assert!(err.contains("--device cuda") && err.contains("no usable GPU"), "{err}");
    }
}
