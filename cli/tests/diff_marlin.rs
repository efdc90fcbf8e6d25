//! `qtool diff` reads vLLM legacy Marlin checkpoints (`L.B` + `L.s`, what `qtool repack --target
//! marlin` writes): a GPTQ checkpoint and its Marlin repack hold the same quantization in two
//! layouts, so they must diff as identical, and each must diff against the original weights
//! with the same metrics.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{marlin_sized, run, s, safetensors_bytes, stderr, stdout};
use serde_json::Value;

fn qtool_ok(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// The rows of `qtool --json diff REF CAND`, by name.
fn diff_rows(reference: &Path, candidate: &Path) -> Vec<Value> {
    let out = qtool_ok(&["--json", "diff", s(reference), s(candidate)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut rows = v["rows"].as_array().expect("rows array").clone();
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    rows
}

fn gptq_and_marlin(dir: &Path, group_size: &str) -> (PathBuf, PathBuf, PathBuf) {
    let orig = marlin_sized(dir, "orig", 0x1234_5679);
    let (g, m) = (dir.join("gptq"), dir.join("marlin"));
    qtool_ok(&[
        "quantize",
        s(&orig),
        "-o",
        s(&g),
        "-q",
        "--fmt",
        "w4a16",
        "--layout",
        "gptq",
        "--group-size",
        group_size,
    ]);
    qtool_ok(&["repack", s(&g), "-o", s(&m), "-q", "--target", "marlin"]);
    (orig, g, m)
}

fn check(group_size: &str, scheme: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (orig, g, m) = gptq_and_marlin(dir.path(), group_size);

    // Same quantization, two layouts: bit-identical weights.
    let same = diff_rows(&g, &m);
    assert_eq!(same.len(), 2, "{same:?}");
    for row in &same {
        assert_eq!(row["status"], "compared", "{row}");
        assert_eq!(row["scheme"], scheme, "{row}");
        assert_eq!(row["sqnr_db"], "inf", "{row}");
        assert_eq!(row["cosine"].as_f64(), Some(1.0), "{row}");
        assert_eq!(row["max_abs"].as_f64(), Some(0.0), "{row}");
    }

    // Against the original: the Marlin file scores exactly as the GPTQ file it came from.
    let (vs_gptq, vs_marlin) = (diff_rows(&orig, &g), diff_rows(&orig, &m));
    assert_eq!(vs_gptq.len(), 2);
    assert_eq!(vs_marlin.len(), 2);
    for (a, b) in vs_gptq.iter().zip(&vs_marlin) {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["shape"], b["shape"]);
        for key in ["mse", "rmse", "max_abs", "rel_fro", "sqnr_db", "cosine"] {
            assert_eq!(a[key], b[key], "{} {key}", a["name"]);
        }
        // 4-bit RTN of a uniform weight: a code or scale read from the wrong place costs more.
        assert!(b["sqnr_db"].as_f64().unwrap() > 10.0, "{b}");
        assert_eq!(b["scheme"], scheme, "{b}");
        // B (K·N/2 bytes) + s (G·N·2 bytes) per N·K weights: 4 bits plus the scales' share.
        let bpw = b["bits_per_weight"].as_f64().unwrap();
        assert!(bpw > 4.0 && bpw < 4.2, "{b}");
    }
}

#[test]
fn marlin_repack_of_gptq_group_128_diffs_identically() {
    check("128", "int4_g128/marlin");
}

#[test]
fn marlin_repack_of_per_channel_gptq_diffs_identically() {
    check("-1", "int4_channel/marlin");
}

/// `L.B` + `L.s` whose shapes fit no Marlin layout (`B` must be `[K/16, 2N]` for `s` `[G, N]`)
/// are claimed together and reported as one layer that was not compared, with the reason.
#[test]
fn marlin_parts_with_inconsistent_shapes_are_not_compared_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    // B [16, 100] I32 (6400 bytes), s [1, 64] F16 (128 bytes): 100 != 2 · 64.
    let header = r#"{"model.layers.0.mlp.up_proj.B": {"dtype": "I32", "shape": [16, 100], "data_offsets": [0, 6400]},
        "model.layers.0.mlp.up_proj.s": {"dtype": "F16", "shape": [1, 64], "data_offsets": [6400, 6528]}}"#;
    fs::write(&path, safetensors_bytes(header, &[0u8; 6528])).unwrap();
    let rows = diff_rows(&path, &path);
    assert_eq!(rows.len(), 1, "B and s are one layer: {rows:?}");
    let row = &rows[0];
    assert_eq!(row["name"], "model.layers.0.mlp.up_proj.weight", "{row}");
    assert_eq!(row["status"], "not_compared", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("do not fit the Marlin layout"), "{reason}");
    assert!(reason.contains("[16, 100]"), "{reason}");
}
