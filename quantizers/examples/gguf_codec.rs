//! Raw-file front end to the GGML block codecs, for the cross-checks in `tests/crosscheck`.
//!
//! ```text
//! gguf_codec quantize TYPE in.f32 out.bin       # little-endian f32 in, raw blocks out
//! gguf_codec dequantize TYPE in.bin out.f32     # raw blocks in, little-endian f32 out
//! gguf_codec quantize-rows TYPE N_PER_ROW in.f32 out.bin
//! gguf_codec quantize-rows-weighted TYPE N_PER_ROW imatrix.f32 in.f32 out.bin
//! ```
//! `imatrix.f32` holds one importance value per column (`N_PER_ROW` f32), as llama.cpp's
//! `ggml_quantize_chunk` takes it.
//! TYPE is a GGML type name (`Q4_K`, `q8_0`, ...). Exit status 2 with `error: ...` on bad input.

use std::process::ExitCode;

use qtool_formats::GgmlType;
use qtool_quantizers::gguf;

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn write(path: &str, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {path}: {e}"))
}

fn parse_type(name: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(name).ok_or_else(|| format!("unknown GGML type {name:?}"))
}

fn read_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = read(path)?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{path}: {} bytes is not a whole number of f32 values", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn encoded_len(ty: GgmlType, values: usize, path: &str) -> Result<usize, String> {
    let block = ty.block_size() as usize;
    if values % block != 0 {
        return Err(format!(
            "{path}: {values} values is not a whole number of {block}-value {ty} blocks"
        ));
    }
    Ok(values / block * ty.type_size() as usize)
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, ty, input, output] if cmd == "quantize" => {
            let ty = parse_type(ty)?;
            let x = read_f32(input)?;
            let mut out = vec![0u8; encoded_len(ty, x.len(), input)?];
            gguf::quantize(ty, &x, &mut out).map_err(|e| format!("{input}: {e}"))?;
            write(output, &out)
        }
        [cmd, ty, n_per_row, input, output] if cmd == "quantize-rows" => {
            let ty = parse_type(ty)?;
            let n: usize = n_per_row.parse().map_err(|_| format!("bad row length {n_per_row:?}"))?;
            let x = read_f32(input)?;
            let mut out = vec![0u8; encoded_len(ty, x.len(), input)?];
            gguf::quantize_rows(ty, &x, n, &mut out).map_err(|e| format!("{input}: {e}"))?;
            write(output, &out)
        }
        [cmd, ty, n_per_row, imatrix, input, output] if cmd == "quantize-rows-weighted" => {
            let ty = parse_type(ty)?;
            let n: usize =
                n_per_row.parse().map_err(|_| format!("bad row length {n_per_row:?}"))?;
            let importance = read_f32(imatrix)?;
            let x = read_f32(input)?;
            let mut out = vec![0u8; encoded_len(ty, x.len(), input)?];
            gguf::quantize_rows_weighted(ty, &x, n, &importance, &mut out)
                .map_err(|e| format!("{input}: {e}"))?;
            write(output, &out)
        }
        [cmd, ty, input, output] if cmd == "dequantize" => {
            let ty = parse_type(ty)?;
            let bytes = read(input)?;
            let (block, size) = (ty.block_size() as usize, ty.type_size() as usize);
            if bytes.len() % size != 0 {
                return Err(format!("{input}: {} bytes is not a whole number of {size}-byte {ty} blocks", bytes.len()));
            }
            let mut y = vec![0f32; bytes.len() / size * block];
            gguf::dequantize(ty, &bytes, &mut y).map_err(|e| format!("{input}: {e}"))?;
            let out: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            write(output, &out)
        }
        _ => Err("usage: gguf_codec quantize|dequantize TYPE IN OUT | quantize-rows TYPE N_PER_ROW IN OUT \
             | quantize-rows-weighted TYPE N_PER_ROW IMATRIX IN OUT".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
