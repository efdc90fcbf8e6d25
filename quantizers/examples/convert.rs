//! Conversion between a Hugging Face llama-family directory and GGUF.
//!
//! ```text
//! convert IN OUT [--fmt TYPE] [--dtype bf16|f16|f32] [--json]
//! ```
//! IN a `.gguf` file → OUT a new Hugging Face directory (`--dtype`, default lossless for the
//! source); IN a Hugging Face directory → OUT a `.gguf` file (`--fmt`, default `f16`: a llama.cpp
//! file type such as `f32`, `bf16`, `q8_0`, `q4_k_m`, or a GGML type applied uniformly).
//! `--json` prints the per-tensor summary as JSON. Exit status 2 with `error: ...` on bad input;
//! nothing is left at OUT on failure.

use std::path::PathBuf;
use std::process::ExitCode;

use qtool_quantizers::convert::{convert, ConvertOptions, Direction, HfDType};

const USAGE: &str = "usage: convert IN OUT [--fmt TYPE] [--dtype bf16|f16|f32] [--json]";

fn parse_args() -> Result<(PathBuf, PathBuf, ConvertOptions, bool), String> {
    let mut positional = Vec::new();
    let mut opts = ConvertOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fmt" => opts.fmt = Some(args.next().ok_or("--fmt needs a value")?),
            "--dtype" => {
                let v = args.next().ok_or("--dtype needs a value")?;
                opts.dtype = Some(
                    HfDType::from_name(&v)
                        .ok_or(format!("--dtype {v:?}: expected bf16, f16 or f32"))?,
                );
            }
            "--json" => json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    match <[PathBuf; 2]>::try_from(positional) {
        Ok([input, output]) => Ok((input, output, opts, json)),
        Err(_) => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let (input, output, opts, json) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut progress = |i: usize, n: usize, name: &str| {
        if !json {
            eprintln!("[{i:>4}/{n:>4}] {name}");
        }
    };
    match convert(&input, &output, &opts, &mut progress) {
        Ok(summary) => {
            if json {
                let tensors: Vec<serde_json::Value> = summary
                    .tensors
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "source": t.source_name, "name": t.name, "from": t.from, "to": t.to,
                            "shape": t.shape, "permuted": t.permuted,
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "direction": match summary.direction { Direction::GgufToHf => "gguf-to-hf", Direction::HfToGguf => "hf-to-gguf" },
                    "arch": summary.arch,
                    "files": summary.files,
                    "tensors": tensors,
                });
                println!("{doc}");
            } else {
                for f in &summary.files {
                    println!("wrote {}", f.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
