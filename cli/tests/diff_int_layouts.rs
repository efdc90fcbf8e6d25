//! One W4A16 quantization of the llama-shaped fixture, written as GPTQ and repacked to AWQ and
//! compressed-tensors: `qtool diff` between any two layouts must show identical tensors
//! (infinite SQNR, cosine 1), and each against the original the same error.

mod common;

use std::path::Path;

use common::{fixture, run, stderr, stdout};

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(0), "qtool {args:?}: {}", stderr(&o));
    stdout(&o)
}

fn rows(a: &Path, b: &Path) -> Vec<serde_json::Value> {
    let text = ok(&["--json", "diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"].as_array().unwrap().clone()
}

#[test]
fn gptq_awq_and_compressed_tensors_of_one_quantization_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (gptq, awq, ct) = (p("gptq"), p("awq"), p("ct"));
    let tiny = fixture("tiny-llama");
    ok(&[
        "quantize",
        tiny.to_str().unwrap(),
        "-o",
        gptq.to_str().unwrap(),
        "--fmt",
        "w4a16",
        "--layout",
        "gptq",
        "--group-size",
        "32",
    ]);
    for (out, target) in [(&awq, "awq"), (&ct, "compressed-tensors")] {
        ok(&["repack", gptq.to_str().unwrap(), "-o", out.to_str().unwrap(), "--target", target]);
    }
    for (a, b) in [(&gptq, &awq), (&gptq, &ct), (&awq, &ct)] {
        let rows = rows(a, b);
        let quantized: Vec<_> = rows
            .iter()
            .filter(|r| r["scheme"].as_str().is_some_and(|s| s.contains("int4")))
            .collect();
        assert_eq!(quantized.len(), 14, "{a:?} vs {b:?}: every linear layer compared");
        for r in &rows {
            assert_eq!(r["status"], "compared", "{r}");
            assert_eq!(r["sqnr_db"], "inf", "{a:?} vs {b:?}: {r}");
            assert_eq!(r["cosine"], 1.0, "{r}");
        }
    }
    let (vs_gptq, vs_ct) = (rows(&tiny, &gptq), rows(&tiny, &ct));
    for (x, y) in vs_gptq.iter().zip(&vs_ct) {
        assert_eq!(x["name"], y["name"]);
        assert_eq!(x["mse"], y["mse"], "{}", x["name"]);
        assert_eq!(x["sqnr_db"], y["sqnr_db"], "{}", x["name"]);
    }
}
