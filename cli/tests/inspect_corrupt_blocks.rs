//! `inspect --stats` on GGUF blocks whose fp16 scale is NaN or Inf: the values are counted as
//! NaN/Inf (exactly as ggml's dequantizers would produce them), a one-line warning names each
//! such tensor in text mode, and the exit status is 0. Never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{ok, run, s, stderr, stdout, tensor, GgufBuilder};

const F16_NAN: [u8; 2] = 0x7E00u16.to_le_bytes();
const F16_INF: [u8; 2] = 0x7C00u16.to_le_bytes();
const F16_ONE: [u8; 2] = 0x3C00u16.to_le_bytes();

/// Two Q8_0 blocks: `d` = NaN with levels 1 (32 NaN), then `d` = +Inf with 16 zero levels
/// (Inf·0 = NaN) and 16 levels −1 (−Inf).
fn q8_0_data() -> Vec<u8> {
    let mut b = F16_NAN.to_vec();
    b.extend([1u8; 32]);
    b.extend(F16_INF);
    b.extend([0u8; 16]);
    b.extend([0xFFu8; 16]);
    b
}

/// Two Q4_K blocks (144 bytes each): `d` = NaN (every value NaN); then `d` = 1, `dmin` = +Inf
/// with every scale byte 1, which decodes to sub-block mins 1,1,1,1,0,0,0,0: the first 128 values
/// are −Inf, the last 128 are `q − Inf·0` = NaN.
fn q4_k_data() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(F16_NAN);
    b.extend([0u8; 2]);
    b.extend([0u8; 12 + 128]);
    b.extend(F16_ONE);
    b.extend(F16_INF);
    b.extend([1u8; 12]);
    b.extend([0x55u8; 128]);
    b
}

/// One Q6_K block (210 bytes): zero levels (q − 32 = −32), sub-block scales 1, `d` = +Inf
/// (stored last): 256 × −Inf.
fn q6_k_data() -> Vec<u8> {
    let mut b = vec![0u8; 128 + 64];
    b.extend([1u8; 16]);
    b.extend(F16_INF);
    b
}

/// A GGUF with the three corrupt tensors and one healthy F32 tensor.
fn write_corrupt(dir: &Path) -> PathBuf {
    let tensors: [(&str, u64, u32, Vec<u8>); 4] = [
        ("blk.0.attn_q.weight", 64, 8, q8_0_data()),
        ("blk.0.ffn_up.weight", 512, 12, q4_k_data()),
        ("blk.0.ffn_down.weight", 256, 14, q6_k_data()),
        (
            "output_norm.weight",
            4,
            0,
            [1.0f32, -2.0, 0.5, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    let mut g = GgufBuilder::header(b"GGUF", 3, tensors.len() as u64, 1);
    g.string("general.architecture").u32(8).string("llama");
    let mut offset = 0u64;
    for (name, n, ty, data) in &tensors {
        g.tensor(name, &[*n], *ty, offset);
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, _, _, data) in &tensors {
        g.data(0);
        g.bytes.extend_from_slice(data);
    }
    let path = dir.join("corrupt.gguf");
    fs::write(&path, &g.bytes).unwrap();
    path
}

#[test]
fn stats_count_nan_and_inf_from_corrupt_block_scales() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_corrupt(dir.path());
    let out = run(&["inspect", "--stats", "--json", s(&path)]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expect = [
        ("blk.0.attn_q.weight", 64, 48, 16),
        ("blk.0.ffn_up.weight", 512, 384, 128),
        ("blk.0.ffn_down.weight", 256, 0, 256),
    ];
    for (name, count, nan, inf) in expect {
        let st = &tensor(&v, name)["stats"];
        assert_eq!(
            (st["count"].as_u64(), st["nan"].as_u64(), st["inf"].as_u64()),
            (Some(count), Some(nan), Some(inf)),
            "{name}: {st}"
        );
        // No finite value: the finite-only summaries are null rather than garbage.
        assert!(st["min"].is_null() && st["mean"].is_null() && st["std"].is_null(), "{name}: {st}");
    }
    let healthy = &tensor(&v, "output_norm.weight")["stats"];
    assert_eq!((healthy["nan"].as_u64(), healthy["absmax"].as_f64()), (Some(0), Some(4.0)));
}

#[test]
fn stats_text_mode_warns_once_per_corrupt_tensor_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_corrupt(dir.path());
    let out = run(&["inspect", "--stats", s(&path)]);
    ok(&out);
    let err = stderr(&out);
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "one warning per corrupt tensor: {err}");
    for (line, name) in lines.iter().zip(["attn_q", "ffn_up", "ffn_down"]) {
        assert!(line.starts_with("warning: tensor 'blk.0."), "{line}");
        assert!(line.contains(name) && line.contains("NaN or Inf scale"), "{line}");
    }
    assert!(lines[0].contains("48 of 64 values decode to NaN, 16 to Inf"), "{}", lines[0]);
    // The table still lists every tensor with its counts.
    let text = stdout(&out);
    let row = text.lines().find(|l| l.contains("blk.0.ffn_down.weight")).unwrap();
    assert!(row.contains(" 256 |"), "{row}");
}

#[test]
fn stats_quiet_and_json_print_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_corrupt(dir.path());
    for extra in ["--json", "--quiet"] {
        let out = run(&["inspect", "--stats", extra, s(&path)]);
        ok(&out);
        assert!(out.stderr.is_empty(), "{extra}: {}", stderr(&out));
    }
}
