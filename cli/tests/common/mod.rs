//! Helpers shared by the CLI tests: running the built binary and writing malformed inputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn qtool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qtool"))
}

pub fn run(args: &[&str]) -> Output {
    qtool().args(args).output().expect("running qtool")
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fixtures").join(rel)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Runs `qtool inspect PATH` and asserts the bad-input contract: exit 2, nothing on stdout,
/// exactly one stderr line, starting with `error:`, naming the file and every `mentions`
/// (tensor names, keys), and no panic. Returns the error line.
pub fn assert_inspect_fails(path: &Path, mentions: &[&str]) -> String {
    let out = run(&["inspect", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout not empty: {}", stdout(&out));
    assert!(!err.contains("panicked") && !err.contains("internal error"), "panic: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one stderr line, got: {err:?}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(line.contains(name), "error does not name the file {name}: {line}");
    for m in mentions {
        assert!(line.contains(m), "error does not mention '{m}': {line}");
    }
    println!("{line}");
    line.to_string()
}

/// A safetensors file: little-endian header length, header, data.
pub fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Builds GGUF files byte by byte, including ones no writer would produce.
#[derive(Default)]
pub struct GgufBuilder {
    pub bytes: Vec<u8>,
}

impl GgufBuilder {
    /// Magic, version, tensor count and KV count.
    pub fn header(magic: &[u8; 4], version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = GgufBuilder::default();
        b.bytes.extend_from_slice(magic);
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    /// A `UINT32` KV.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key).u32(4).u32(v)
    }

    /// A tensor info: name, dims (ne[0] first), ggml type id, data-relative offset.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ggml_type).u64(offset)
    }

    /// Zero padding to the default 32-byte alignment, then `n` bytes of data.
    pub fn data(&mut self, n: usize) -> &mut Self {
        while self.bytes.len() % 32 != 0 {
            self.bytes.push(0);
        }
        self.bytes.extend(std::iter::repeat_n(0u8, n));
        self
    }
}

/// A path as the `&str` argument `run` takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// Asserts a run succeeded, showing its stderr otherwise.
pub fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
}

/// `qtool inspect --json PATH`, parsed.
pub fn inspect_json(path: &Path) -> serde_json::Value {
    let out = run(&["inspect", "--json", s(path)]);
    ok(&out);
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The entry of `name` in an inspect report's `tensors`.
pub fn tensor<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

pub fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The bad-input contract for a command that writes `target`: exit 2, nothing on stdout, exactly
/// one `error:` line mentioning every `mentions`, no panic, and nothing left at `target`.
pub fn assert_fails(out: &Output, target: &Path, mentions: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in mentions {
        assert!(lines[0].contains(m), "error does not mention {m:?}: {err}");
    }
    assert!(!target.exists(), "{} was left behind", target.display());
}

/// A bf16 checkpoint `dir/name` with one column-parallel (`up_proj`, N=512, K=256) and one
/// row-parallel (`down_proj`, N=256, K=512) layer: shapes legacy Marlin runs on tp 1, 2 and 4.
/// Values are a xorshift stream from `seed`, mapped to roughly [-0.05, 0.05].
pub fn marlin_sized(dir: &Path, name: &str, seed: u32) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let layers = [
        ("model.layers.0.mlp.up_proj.weight", 512usize, 256usize),
        ("model.layers.0.mlp.down_proj.weight", 256, 512),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut state = seed;
    for (tensor, n, k) in layers {
        let start = data.len();
        for _ in 0..n * k {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1;
            // bf16 is the upper half of the f32.
            data.extend_from_slice(&x.to_bits().to_le_bytes()[2..]);
        }
        header.insert(
            tensor.into(),
            serde_json::json!({"dtype": "BF16", "shape": [n, k], "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_string(&header).unwrap();
    std::fs::write(root.join("model.safetensors"), safetensors_bytes(&header, &data)).unwrap();
    std::fs::write(
        root.join("config.json"),
        r#"{"model_type": "llama", "torch_dtype": "bfloat16"}"#,
    )
    .unwrap();
    root
}

/// The fixture copied with a byte-level BPE tokenizer.json (no merges: one token per byte,
/// ids 0..255 in GPT-2's byte alphabet), which the calibrated path needs.
pub fn tiny_with_tokenizer(dir: &Path) -> PathBuf {
    let d = dir.join("tiny");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), d.join(f)).unwrap();
    }
    let mut bs: Vec<u32> =
        (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = bs
        .iter()
        .zip(&cs)
        .map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), serde_json::json!(b)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false
    });
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    d
}

/// `qtool quantize TINY -o DIR/out-TAG --fmt w4a16 --group-size 32` calibrated on the text file
/// `calib` (16 windows × 64 tokens, quiet) plus `extra` flags; returns the process and the path
/// of the per-layer log it writes.
pub fn quantize_calibrated(
    dir: &Path,
    tiny: &Path,
    calib: &Path,
    tag: &str,
    extra: &[&str],
) -> (Output, PathBuf) {
    let out = dir.join(format!("out-{tag}"));
    let mut args = vec![
        "quantize",
        s(tiny),
        "-o",
        s(&out),
        "--fmt",
        "w4a16",
        "--group-size",
        "32",
        "--calib",
        s(calib),
        "--calib-samples",
        "16",
        "--calib-seqlen",
        "64",
        "-q",
    ];
    args.extend_from_slice(extra);
    (run(&args), dir.join(format!("out-{tag}.calib.json")))
}
