//! Reads a checkpoint `qtool quantize` wrote and writes qtool's own dequantization of every
//! quantized layer, so that an external consumer (comfy-kitchen, compressed-tensors,
//! transformers — tests/device/check_*.py) can be compared against it.
//!
//! The layer list and the part names come from re-planning the original input with the same
//! `--fmt` and `--layout` (the plan is what decided them); the parts are read from the output
//! and decoded with the `qtool_quantizers::float` dequantizers.
//!
//! Usage: `dequant_layers ORIGINAL OUTPUT FMT LAYOUT DUMPDIR`
//! Writes `DUMPDIR/NNNN.f32` (row-major `[rows, cols]`, little-endian f32) and
//! `DUMPDIR/index.json` = `[{"layer", "rows", "cols", "file", "dtype"}]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qtool_formats::codec::{self, Fp8Format};
use qtool_formats::{DType, TensorDType, TensorSource};
use qtool_quantizers::export::{self, Action, Layout, Request, Scheme};
use qtool_quantizers::float::fp8_scaled::{Fp8Scaled, Granularity};
use qtool_quantizers::float::mx::{Mxfp4Tensor, Mxfp8CtTensor, Mxfp8Tensor};
use qtool_quantizers::float::nvfp4::{self, Nvfp4Tensor};
use qtool_quantizers::float::ComputeDType;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(n) => {
            println!("dequantized {n} layers");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// One part's values as f32 (any float dtype the scales are stored in).
fn floats(src: &dyn TensorSource, name: &str) -> Result<Vec<f32>, String> {
    let t = src.get(name).ok_or_else(|| format!("output has no tensor '{name}'"))?;
    let TensorDType::St(d) = t.info.dtype else { return Err(format!("{name}: not safetensors")) };
    let n = t.info.shape.iter().product::<u64>() as usize;
    let mut out = vec![0f32; n];
    codec::decode_f32(d, t.data, &mut out).map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
}

fn bytes(src: &dyn TensorSource, name: &str) -> Result<Vec<u8>, String> {
    Ok(src.get(name).ok_or_else(|| format!("output has no tensor '{name}'"))?.data.to_vec())
}

fn run(args: &[String]) -> Result<usize, String> {
    let [orig, out, fmt, layout, dump] = args else {
        return Err("usage: dequant_layers ORIGINAL OUTPUT FMT LAYOUT DUMPDIR".into());
    };
    let spec = export::lookup(fmt).ok_or_else(|| format!("unknown fmt {fmt}"))?;
    let layout = Layout::from_name(layout).ok_or_else(|| format!("unknown layout {layout}"))?;
    let req = Request::new(spec, Some(layout), &[], &[], false).map_err(|e| e.to_string())?;
    let input = qtool_formats::open(Path::new(orig)).map_err(|e| e.to_string())?;
    let plan = export::plan(input.source(), &req).map_err(|e| e.to_string())?;
    let output = qtool_formats::open(Path::new(out)).map_err(|e| e.to_string())?;
    let src = output.source();
    let dump = PathBuf::from(dump);
    std::fs::create_dir_all(&dump).map_err(|e| e.to_string())?;
    let mut index = Vec::new();
    for e in &plan.entries {
        let Action::Quantize(l) = &e.action else { continue };
        let names: Vec<&str> = e.outputs.iter().map(|t| t.name.as_str()).collect();
        let (rows, cols) = (l.rows, l.cols);
        let err = |x: qtool_quantizers::float::FloatError| format!("{}: {x}", l.prefix);
        let values = match spec.scheme {
            Scheme::Fp8Cast(_) | Scheme::Fp8Scaled(_) | Scheme::Fp8Channel => {
                let format = match spec.scheme {
                    Scheme::Fp8Cast(f) | Scheme::Fp8Scaled(f) => f,
                    _ => Fp8Format::E4M3Fn,
                };
                let data = bytes(src, names[0])?;
                let (granularity, scales, scale_dtype) = match (spec.scheme, layout) {
                    (Scheme::Fp8Channel, _) => {
                        (Granularity::Channel, floats(src, names[1])?, l.compute)
                    }
                    (Scheme::Fp8Cast(_), Layout::ComfyLegacy) => {
                        (Granularity::Tensor, vec![1.0], ComputeDType::F32)
                    }
                    (_, Layout::CompressedTensors) => {
                        (Granularity::Tensor, floats(src, names[1])?, l.compute)
                    }
                    _ => (Granularity::Tensor, floats(src, names[1])?, ComputeDType::F32),
                };
                Fp8Scaled::from_parts(
                    format,
                    rows,
                    cols,
                    data,
                    granularity,
                    scales,
                    scale_dtype,
                    l.compute,
                )
                .map_err(err)?
                .dequantize()
            }
            Scheme::Nvfp4 | Scheme::Nvfp4Experimental => {
                let nl = match layout {
                    Layout::Comfy => nvfp4::Layout::Comfy,
                    Layout::CompressedTensors => nvfp4::Layout::CompressedTensors,
                    _ => nvfp4::Layout::ModelOpt,
                };
                let global = floats(src, names[2])?[0];
                Nvfp4Tensor::from_parts(
                    nl,
                    rows,
                    cols,
                    bytes(src, names[0])?,
                    bytes(src, names[1])?,
                    global,
                )
                .map_err(err)?
                .dequantize()
                .map_err(err)?
            }
            Scheme::Mxfp4 => {
                Mxfp4Tensor::from_parts(rows, cols, bytes(src, names[0])?, bytes(src, names[1])?)
                    .map_err(err)?
                    .dequantize()
            }
            Scheme::Mxfp8 if layout == Layout::Comfy => {
                Mxfp8Tensor::from_parts(rows, cols, bytes(src, names[0])?, bytes(src, names[1])?)
                    .map_err(err)?
                    .dequantize()
                    .map_err(err)?
            }
            Scheme::Mxfp8 => {
                Mxfp8CtTensor::from_parts(rows, cols, bytes(src, names[0])?, bytes(src, names[1])?)
                    .map_err(err)?
                    .dequantize()
            }
            other => {
                return Err(format!(
                    "{}: scheme {} is not dequantized here",
                    l.prefix,
                    other.name()
                ))
            }
        };
        if values.len() != rows * cols {
            return Err(format!("{}: {} values for [{rows}, {cols}]", l.prefix, values.len()));
        }
        let file = format!("{:04}.f32", index.len());
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dump.join(&file), raw).map_err(|e| e.to_string())?;
        let dtype = match l.dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => "f32",
        };
        index.push(serde_json::json!({
            "layer": l.prefix, "rows": rows, "cols": cols, "file": file, "dtype": dtype,
        }));
    }
    let n = index.len();
    std::fs::write(dump.join("index.json"), serde_json::to_string_pretty(&index).unwrap())
        .map_err(|e| e.to_string())?;
    Ok(n)
}
