//! Quantizes a raw little-endian f32 matrix with one of the float schemes and writes the parts
//! as raw bytes, for the Python cross-check (`tests/crosscheck/test_float_schemes.py`).
//!
//! ```text
//! float_schemes SCHEME ROWS COLS INPUT.f32 OUTDIR [--compute f32|bf16|f16] [--allow-nonfinite]
//! ```
//! Writes `OUTDIR/data.bin` (FP8 codes or packed E2M1 bytes), `OUTDIR/scales.bin` (f32 LE for
//! FP8 schemes, E4M3/E8M0 bytes otherwise), `OUTDIR/global.bin` (NVFP4 tensor scale, f32 LE) and
//! `OUTDIR/dequant.bin` (f32 LE, `[ROWS, COLS]`). Exit 2 with `error: ...` on bad input.
//!
//! Schemes: `fp8_comfy_e4m3`, `fp8_comfy_e5m2`, `fp8_ct_tensor`, `fp8_ct_channel`,
//! `fp8_ct_block`, `nvfp4_{modelopt,ct,comfy,comfy_experimental}`, the conversions
//! `nvfp4_<producer>_as_{modelopt,ct,comfy}`, `mxfp4_ggml`, `mxfp4_ct`, `mxfp8_ct`, `mxfp8_comfy`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qtool_quantizers::float::fp8_scaled::{self, Granularity};
use qtool_quantizers::float::mx::{self, Mxfp4Rule};
use qtool_quantizers::float::nvfp4::{self, Layout, Producer};
use qtool_quantizers::float::{ComputeDType, Fp8Format, Matrix, Options};

struct Parts {
    data: Vec<u8>,
    scales: Vec<u8>,
    global: Option<f32>,
    dequant: Vec<f32>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn producer(name: &str) -> Result<Producer, String> {
    Ok(match name {
        "modelopt" => Producer::ModelOpt,
        "ct" => Producer::CompressedTensors,
        "comfy" => Producer::Comfy,
        "comfy_experimental" => Producer::ComfyExperimental,
        _ => return Err(format!("unknown NVFP4 producer '{name}'")),
    })
}

fn layout(name: &str) -> Result<Layout, String> {
    Ok(match name {
        "modelopt" => Layout::ModelOpt,
        "ct" => Layout::CompressedTensors,
        "comfy" => Layout::Comfy,
        _ => return Err(format!("unknown NVFP4 layout '{name}'")),
    })
}

fn run_scheme(scheme: &str, m: &Matrix<'_>, opts: &Options) -> Result<Parts, String> {
    let e = |e: qtool_quantizers::float::FloatError| e.to_string();
    let fp8 = |q: fp8_scaled::Fp8Scaled| Parts {
        dequant: q.dequantize(),
        scales: f32_bytes(&q.scales),
        data: q.data,
        global: None,
    };
    if let Some(rest) = scheme.strip_prefix("nvfp4_") {
        let (p, target) = match rest.split_once("_as_") {
            Some((p, l)) => (producer(p)?, Some(layout(l)?)),
            None => (producer(rest)?, None),
        };
        let mut q = nvfp4::quantize(m, p, opts).map_err(e)?;
        if let Some(t) = target {
            q = q.to_layout(t).map_err(e)?;
        }
        return Ok(Parts {
            dequant: q.dequantize().map_err(e)?,
            global: Some(q.global_scale),
            data: q.packed,
            scales: q.block_scales,
        });
    }
    Ok(match scheme {
        "fp8_comfy_e4m3" => fp8(fp8_scaled::quantize_comfy(m, Fp8Format::E4M3Fn, opts).map_err(e)?),
        "fp8_comfy_e5m2" => fp8(fp8_scaled::quantize_comfy(m, Fp8Format::E5M2, opts).map_err(e)?),
        "fp8_ct_tensor" => {
            fp8(fp8_scaled::quantize_compressed_tensors(m, Granularity::Tensor, opts).map_err(e)?)
        }
        "fp8_ct_channel" => {
            fp8(fp8_scaled::quantize_compressed_tensors(m, Granularity::Channel, opts)
                .map_err(e)?)
        }
        "fp8_ct_block" => fp8(fp8_scaled::quantize_compressed_tensors(
            m,
            Granularity::Block { rows: 128, cols: 128 },
            opts,
        )
        .map_err(e)?),
        "mxfp4_ggml" | "mxfp4_ct" => {
            let rule =
                if scheme == "mxfp4_ggml" { Mxfp4Rule::Ggml } else { Mxfp4Rule::CompressedTensors };
            let q = mx::quantize_mxfp4(m, rule, opts).map_err(e)?;
            Parts { dequant: q.dequantize(), data: q.packed, scales: q.scales, global: None }
        }
        "mxfp8_ct" => {
            let q = mx::quantize_mxfp8_ct(m, opts).map_err(e)?;
            Parts { dequant: q.dequantize(), data: q.data, scales: q.scales, global: None }
        }
        "mxfp8_comfy" => {
            let q = mx::quantize_mxfp8_comfy(m, opts).map_err(e)?;
            Parts {
                dequant: q.dequantize().map_err(e)?,
                data: q.data,
                scales: q.scales,
                global: None,
            }
        }
        _ => return Err(format!("unknown scheme '{scheme}'")),
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

fn run(args: &[String]) -> Result<(), String> {
    let mut pos = Vec::new();
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--compute" => {
                opts.compute = match it.next().map(String::as_str) {
                    Some("f32") => ComputeDType::F32,
                    Some("bf16") => ComputeDType::BF16,
                    Some("f16") => ComputeDType::F16,
                    other => {
                        return Err(format!("--compute takes f32, bf16 or f16, got {other:?}"))
                    }
                }
            }
            "--allow-nonfinite" => opts.allow_nonfinite = true,
            _ => pos.push(a.clone()),
        }
    }
    let [scheme, rows, cols, input, outdir] = pos.as_slice() else {
        return Err(
            "usage: float_schemes SCHEME ROWS COLS INPUT.f32 OUTDIR [--compute f32|bf16|f16] [--allow-nonfinite]"
                .into(),
        );
    };
    let rows: usize = rows.parse().map_err(|_| format!("ROWS '{rows}' is not a number"))?;
    let cols: usize = cols.parse().map_err(|_| format!("COLS '{cols}' is not a number"))?;
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{input}: {} bytes is not a whole number of f32", bytes.len()));
    }
    let data: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let m = Matrix::new(&data, rows, cols).map_err(|e| format!("{input}: {e}"))?;
    let parts = run_scheme(scheme, &m, &opts).map_err(|e| format!("{input}: {e}"))?;
    let dir = PathBuf::from(outdir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{outdir}: {e}"))?;
    write(&dir, "data.bin", &parts.data)?;
    write(&dir, "scales.bin", &parts.scales)?;
    if let Some(g) = parts.global {
        write(&dir, "global.bin", &g.to_le_bytes())?;
    }
    write(&dir, "dequant.bin", &f32_bytes(&parts.dequant))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
