//! GPTQ v1 stores `zero − 1`, v2 the true zero (formats.md §3.1): the same quantization written
//! both ways must dequantize identically in `qtool diff`, which reads the convention from the
//! checkpoint's `checkpoint_format`.

mod common;

use common::{fixture, run, stderr, stdout};

fn quantize_gptq(out: &std::path::Path, format: &str) {
    let o = run(&[
        "quantize",
        fixture("tiny-llama").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--fmt",
        "w4a16",
        "--layout",
        "gptq",
        "--group-size",
        "32",
        "--gptq-format",
        format,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

fn diff_rows(cand: &std::path::Path) -> Vec<serde_json::Value> {
    let o =
        run(&["--json", "diff", fixture("tiny-llama").to_str().unwrap(), cand.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["rows"].as_array().expect("rows array").clone()
}

#[test]
fn gptq_v1_and_v2_files_of_one_quantization_diff_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    quantize_gptq(&v1, "v1");
    quantize_gptq(&v2, "v2");
    let (a, b) = (diff_rows(&v1), diff_rows(&v2));
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra["name"], rb["name"]);
        for key in ["mse", "max_abs", "sqnr_db", "cosine"] {
            assert_eq!(ra[key], rb[key], "{} {key}", ra["name"]);
        }
        if ra["scheme"].as_str().is_some_and(|s| s.contains("gptq")) {
            compared += 1;
            assert!(ra["scheme"].as_str().unwrap().contains("gptq(v1)"), "{}", ra["scheme"]);
            assert!(rb["scheme"].as_str().unwrap().contains("gptq(v2)"), "{}", rb["scheme"]);
            // 4-bit RTN of a random bf16 weight: a zero read one code off would cost far more.
            assert!(ra["sqnr_db"].as_f64().unwrap() > 10.0, "{ra}");
        }
    }
    assert_eq!(compared, 14, "every linear layer of the fixture is GPTQ-quantized");
}
