//! `qtool gpu-info` is informational: exit 0 with or without a GPU, and a JSON report whose
//! `usable` agrees with its own fields.

mod common;

use common::{run, stderr, stdout};

#[test]
fn gpu_info_text_exits_zero() {
    let out = run(&["gpu-info"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("CUDA driver:"), "{text}");
    assert!(text.contains("NVRTC:"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("usable: "), "{text}");
}

#[test]
fn gpu_info_json_is_consistent() {
    let out = run(&["gpu-info", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    let usable = v["usable"].as_bool().unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(
        usable,
        v["driver_version"].is_string() && v["nvrtc_version"].is_string() && !devices.is_empty()
    );
    assert_eq!(usable, v["problems"].as_array().unwrap().is_empty());
    if v["driver_library"].is_null() {
        assert!(devices.is_empty());
    }
}
