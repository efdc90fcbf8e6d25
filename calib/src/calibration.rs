//! Calibration data: where the text comes from, and how it becomes token windows.
//!
//! The text is `--calib FILE` — plain UTF-8 text, or JSON Lines with a `text` field per record
//! (`.jsonl`, or any file whose first non-empty line is a JSON object) — or, without `--calib`,
//! the built-in default shipped in qtool ([`BUILTIN`], sources and licences in docs/ptq.md).
//!
//! It is tokenized with the model's own tokenizer without special tokens (JSONL records one by
//! one, concatenated) and cut into `samples + held_out` windows of `seqlen` tokens, evenly
//! spaced over the token stream so that every part of the text contributes. Every `k`-th window
//! is held out (`k = windows / held_out`): those tokens are never seen by GPTQ/AWQ and only
//! measure each layer's output error for the per-layer log. Too little text is an error that
//! says how much there is and how much was asked for — never silently fewer samples.

use std::path::{Path, PathBuf};

use crate::engine::EngineError;
use crate::tokenizer::Tokenizer;

/// GPTQ/AWQ's customary calibration size.
pub const DEFAULT_SAMPLES: usize = 128;
pub const DEFAULT_SEQLEN: usize = 512;

/// The built-in calibration text: public-domain prose and qtool's own code (Apache-2.0).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "Jane Austen, Pride and Prejudice, chapters 1-18 (public domain)",
        include_str!("../data/prose_austen_pride_and_prejudice_ch1-18.txt"),
    ),
    ("qtool Rust sources (Apache-2.0)", include_str!("../data/code_rust_qtool.rs.txt")),
    (
        "William Shakespeare, Coriolanus, opening scenes (public domain)",
        include_str!("../data/prose_shakespeare_coriolanus_excerpt.txt"),
    ),
    (
        "qtool Python cross-check tests (Apache-2.0)",
        include_str!("../data/code_python_qtool.py.txt"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: not UTF-8 text (calibration files are plain text or JSON Lines)", path.display())]
    NotUtf8 { path: PathBuf },

    #[error("{}: line {line}: {msg}", path.display())]
    Jsonl { path: PathBuf, line: usize, msg: String },

    #[error("{}: contains no text", path.display())]
    Empty { path: PathBuf },

    #[error("{what} gives {tokens} tokens, but --calib-samples {samples} × --calib-seqlen {seqlen} plus {held_out} held-out windows need {needed}; give more text (--calib FILE) or ask for fewer/shorter samples")]
    TooShort {
        what: String,
        tokens: usize,
        samples: usize,
        seqlen: usize,
        held_out: usize,
        needed: usize,
    },

    #[error("--calib-samples and --calib-seqlen must be positive (got {samples} × {seqlen})")]
    BadSize { samples: usize, seqlen: usize },

    #[error(transparent)]
    Tokenizer(#[from] EngineError),
}

/// Where the calibration text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalibSource {
    Builtin,
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibSpec {
    pub source: CalibSource,
    pub samples: usize,
    pub seqlen: usize,
}

impl CalibSpec {
    /// Held-out windows: one per 16 calibration samples, at least one.
    pub fn held_out(&self) -> usize {
        (self.samples / 16).max(1)
    }
}

/// Token windows ready for the pipeline.
#[derive(Clone, Debug)]
pub struct CalibSet {
    pub samples: Vec<Vec<u32>>,
    pub held_out: Vec<Vec<u32>>,
    /// A human description of the source.
    pub source: String,
    /// Total tokens the text gave.
    pub text_tokens: usize,
}

impl CalibSet {
    /// FNV-1a of every window's ids: a resumed run must see exactly the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for w in self.samples.iter().chain(&self.held_out) {
            for &t in w.iter().chain(std::iter::once(&u32::MAX)) {
                for b in t.to_le_bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x100000001b3);
                }
            }
        }
        h
    }
}

/// The documents of a calibration file: one for plain text, one per record for JSONL.
pub fn read_documents(path: &Path) -> Result<Vec<String>, CalibrationError> {
    let bytes =
        std::fs::read(path).map_err(|source| CalibrationError::Io { path: path.into(), source })?;
    let text =
        String::from_utf8(bytes).map_err(|_| CalibrationError::NotUtf8 { path: path.into() })?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let is_jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
        || (first.trim_start().starts_with('{')
            && serde_json::from_str::<serde_json::Value>(first).is_ok_and(|v| v.is_object()));
    let docs = if is_jsonl {
        let mut docs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: String| CalibrationError::Jsonl { path: path.into(), line: i + 1, msg };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            match v.get("text") {
                Some(serde_json::Value::String(s)) => docs.push(s.clone()),
                Some(_) => return Err(bad("\"text\" is not a string".into())),
                None => return Err(bad("the record has no \"text\" field".into())),
            }
        }
        docs
    } else {
        vec![text]
    };
    if docs.iter().all(|d| d.trim().is_empty()) {
        return Err(CalibrationError::Empty { path: path.into() });
    }
    Ok(docs)
}

fn check_size(spec: &CalibSpec) -> Result<(), CalibrationError> {
    if spec.samples == 0 || spec.seqlen == 0 {
        return Err(CalibrationError::BadSize { samples: spec.samples, seqlen: spec.seqlen });
    }
    Ok(())
}

/// Tokenizes the spec's text and cuts the windows.
pub fn build(tok: &Tokenizer, spec: &CalibSpec) -> Result<CalibSet, CalibrationError> {
    check_size(spec)?;
    let (docs, what): (Vec<String>, String) = match &spec.source {
        CalibSource::Builtin => (
            BUILTIN.iter().map(|(_, t)| (*t).to_owned()).collect(),
            "the built-in calibration text".into(),
        ),
        CalibSource::File(p) => (read_documents(p)?, p.display().to_string()),
    };
    let mut tokens = Vec::new();
    for d in &docs {
        tokens.extend(tok.encode(d)?);
    }
    windows(tokens, spec, what)
}

/// Cuts `tokens` into the spec's windows (see the module doc).
pub fn windows(
    tokens: Vec<u32>,
    spec: &CalibSpec,
    what: String,
) -> Result<CalibSet, CalibrationError> {
    check_size(spec)?;
    let held = spec.held_out();
    let total = spec.samples + held;
    let needed = total.saturating_mul(spec.seqlen);
    if tokens.len() < needed {
        return Err(CalibrationError::TooShort {
            what,
            tokens: tokens.len(),
            samples: spec.samples,
            seqlen: spec.seqlen,
            held_out: held,
            needed,
        });
    }
    let stride = tokens.len() / total;
    let every = total / held;
    let (mut samples, mut held_out) = (Vec::with_capacity(spec.samples), Vec::with_capacity(held));
    for j in 0..total {
        let w = tokens[j * stride..j * stride + spec.seqlen].to_vec();
        if j % every == every - 1 && held_out.len() < held {
            held_out.push(w);
        } else {
            samples.push(w);
        }
    }
    Ok(CalibSet { samples, held_out, source: what, text_tokens: tokens.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(samples: usize, seqlen: usize) -> CalibSpec {
        CalibSpec { source: CalibSource::Builtin, samples, seqlen }
    }

    #[test]
    fn windows_are_disjoint_evenly_spaced_and_held_out_is_separate() {
        let tokens: Vec<u32> = (0..10_000).collect();
        let set = windows(tokens, &spec(32, 100), "t".into()).unwrap();
        assert_eq!(set.samples.len(), 32);
        assert_eq!(set.held_out.len(), 2);
        let mut starts: Vec<u32> = set.samples.iter().chain(&set.held_out).map(|w| w[0]).collect();
        starts.sort();
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= 100, "windows overlap: {pair:?}");
        }
        for w in set.samples.iter().chain(&set.held_out) {
            assert_eq!(w.len(), 100);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
    }

    #[test]
    fn too_little_text_is_an_error_naming_the_numbers() {
        let err = windows((0..1000).collect(), &spec(16, 100), "corpus.txt".into()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("corpus.txt gives 1000 tokens") && msg.contains("need 1700"), "{msg}");
        assert!(matches!(
            windows(vec![1], &spec(0, 4), "x".into()),
            Err(CalibrationError::BadSize { .. })
        ));
    }

    #[test]
    fn jsonl_records_become_documents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "{\"text\": \"alpha\"}\n\n{\"text\": \"beta\", \"id\": 2}\n").unwrap();
        assert_eq!(read_documents(&p).unwrap(), vec!["alpha".to_string(), "beta".to_string()]);
        let plain = dir.path().join("c.txt");
        std::fs::write(&plain, "just prose {not json}\n").unwrap();
        assert_eq!(read_documents(&plain).unwrap().len(), 1);
    }

    #[test]
    fn bad_calibration_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.jsonl");
        std::fs::write(&p, "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").unwrap();
        let e = read_documents(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl: line 2") && e.contains("no \"text\" field"), "{e}");
        std::fs::write(&p, "{\"text\": 5}\n").unwrap();
        assert!(read_documents(&p).unwrap_err().to_string().contains("not a string"));
        std::fs::write(&p, "{\"text\": \"a\"}\nnot json\n").unwrap();
        assert!(read_documents(&p).unwrap_err().to_string().contains("line 2: not JSON"));
        let bin = dir.path().join("b.txt");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(read_documents(&bin), Err(CalibrationError::NotUtf8 { .. })));
        let empty = dir.path().join("e.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(matches!(read_documents(&empty), Err(CalibrationError::Empty { .. })));
        assert!(matches!(
            read_documents(&dir.path().join("missing.txt")),
            Err(CalibrationError::Io { .. })
        ));
    }

    #[test]
    fn builtin_text_is_a_few_hundred_kilobytes() {
        let bytes: usize = BUILTIN.iter().map(|(_, t)| t.len()).sum();
        assert!((200_000..=400_000).contains(&bytes), "{bytes}");
    }
}
