//! Reads a GGUF file and writes every KV and tensor back unchanged through qtool's writer, or
//! dumps what the reader saw as JSON. The cross-checks in `tests/crosscheck/test_gguf_io.py`
//! use it to compare qtool's reader and writer with gguf-py's.
//!
//! ```text
//! rewrite_gguf IN.gguf OUT.gguf
//! rewrite_gguf --dump-json IN.gguf
//! rewrite_gguf --ggml-types
//! ```
//!
//! The dump lists every KV with its full typed value (`Value::to_typed_json`) and every tensor
//! with its GGML type, GGUF-order shape, absolute offset and byte count. `--ggml-types` prints
//! qtool's GGML type table (id, name, block size, type size) for comparison with gguf-py.

use std::path::Path;
use std::process::ExitCode;

use qtool_formats::gguf::{GgmlType, GgufFile, GgufWriter};
use qtool_formats::tensor::{PlannedTensor, TensorSink, TensorSource};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag] if flag == "--ggml-types" => {
            ggml_types();
            Ok(())
        }
        [flag, input] if flag == "--dump-json" => dump(Path::new(input)),
        [input, output] if !input.starts_with("--") => rewrite(Path::new(input), Path::new(output)),
        _ => {
            eprintln!("usage: rewrite_gguf IN.gguf OUT.gguf | --dump-json IN.gguf | --ggml-types");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn rewrite(input: &Path, output: &Path) -> qtool_formats::Result<()> {
    qtool_formats::atomic::ensure_not_input(output, &[input.to_path_buf()])?;
    let file = GgufFile::open(input)?;
    let plan = file
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        })
        .collect();
    let mut writer = GgufWriter::create(output, file.kvs().to_vec(), plan, file.alignment())?;
    for t in file.tensors() {
        writer.write(&t.name, file.data(t))?;
    }
    writer.finish()?;
    Ok(())
}

fn dump(input: &Path) -> qtool_formats::Result<()> {
    let file = GgufFile::open(input)?;
    let kvs: Vec<serde_json::Value> = file
        .kvs()
        .iter()
        .map(|(k, v)| {
            let mut entry = serde_json::Map::new();
            entry.insert("key".into(), k.as_str().into());
            if let serde_json::Value::Object(typed) = v.to_typed_json() {
                entry.extend(typed);
            }
            serde_json::Value::Object(entry)
        })
        .collect();
    let tensors: Vec<serde_json::Value> = file
        .tensors()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "type": t.dtype.name(), "shape": t.shape,
                "offset": t.offset, "nbytes": t.nbytes,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "version": file.version(), "alignment": file.alignment(),
        "data_offset": file.data_offset(), "kvs": kvs, "tensors": tensors,
        "metadata": file.metadata(),
    });
    println!("{doc}");
    Ok(())
}

fn ggml_types() {
    let table: Vec<serde_json::Value> = GgmlType::ALL
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id(), "name": t.name(),
                "block_size": t.block_size(), "type_size": t.type_size(),
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(table));
}
