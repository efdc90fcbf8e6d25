//! `rewrite_safetensors IN OUT [--max-shard-size BYTES]`
//!
//! Opens IN (a `.safetensors` file or a checkpoint directory) and writes every tensor
//! unchanged, metadata kept, to OUT through the streaming writer, sharded when the tensors
//! exceed `--max-shard-size`. On success prints one JSON document on stdout: the tensors as
//! read from IN (name, dtype, shape, file, offset, nbytes) and the files written, so the Python
//! cross-checks can compare qtool's reading and writing against the `safetensors` package.
//! Errors go to stderr as one `error:` line, exit status 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use qtool_formats::safetensors::rewrite;

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            // A closed stdout (the reader stopped early) is not this program's failure.
            let _ = writeln!(std::io::stdout(), "{report}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<serde_json::Value, String> {
    let usage = "usage: rewrite_safetensors IN OUT [--max-shard-size BYTES]";
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err(usage.into());
    };
    let max_shard_size = match (args.next(), args.next()) {
        (None, _) => None,
        (Some(flag), Some(value)) if flag == "--max-shard-size" => {
            let value = value.to_string_lossy();
            Some(value.parse::<u64>().map_err(|e| format!("--max-shard-size {value}: {e}"))?)
        }
        _ => return Err(usage.into()),
    };
    if args.next().is_some() {
        return Err(usage.into());
    }
    let (input, output) = (PathBuf::from(input), PathBuf::from(output));

    let ckpt = qtool_formats::open(&input).map_err(|e| e.to_string())?;
    let source = ckpt.source();
    let written = rewrite(source, &output, max_shard_size).map_err(|e| e.to_string())?;

    let tensors: Vec<_> = source
        .tensors()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "file": source.files()[t.file],
                "offset": t.offset,
                "nbytes": t.nbytes,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "files": source.files(),
        "metadata": source.metadata(),
        "tensors": tensors,
        "written": written,
    }))
}
