//! `qtool quantize IN -o OUT --fmt w4a16|w8a16 --method gptq|awq [--calib FILE]
//! [--calib-samples N] [--calib-seqlen L] [--damp F] [--act-order] [--resume]`: the calibrated
//! methods, through the layer-wise pipeline of `qtool_calib::pipeline`; the checkpoint is then
//! written by the same exporter as RTN, with the calibrated layers taken from the pipeline's
//! state. `--layout marlin` writes GPTQ first and repacks it (`qtool repack --target marlin`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use qtool_calib::calibration::{CalibSource, CalibSpec};
use qtool_calib::engine::Model;
use qtool_calib::pipeline::{self, log_path, CalibLog, Device, Method, Options, Store};
use qtool_formats::conventions::{detect_scheme, Scheme as Detected};
use qtool_formats::Checkpoint;
use qtool_quantizers::export::repack::{self, Target};
use qtool_quantizers::export::{self, output, IntOptions, Layout, Request, Scheme};
use qtool_quantizers::int::{check_marlin_shape, MarlinKind, MarlinShape};
use serde::Serialize;

use crate::args::QuantizeArgs;
use crate::output::Output;
use crate::progress::count_bar;

#[derive(Debug, Serialize)]
struct Report<'a> {
    schema_version: u32,
    input: String,
    output: String,
    fmt: &'a str,
    method: &'a str,
    layout: &'a str,
    /// The per-layer log written beside the output.
    log: String,
    files: Vec<String>,
    seconds: f64,
    resumed_from_block: Option<usize>,
    summary: &'a pipeline::Summary,
}

/// Runs the calibrated path when `--method` asks for it; `None` hands the request back to RTN
/// (after refusing calibration flags that RTN would silently ignore).
pub fn dispatch(args: &QuantizeArgs, out: &Output) -> anyhow::Result<Option<ExitCode>> {
    let method = match args.method.as_str() {
        "gptq" => Method::Gptq,
        "awq" => Method::Awq,
        _ => {
            if let Some(flag) = calibration_flag(args) {
                bail!("{flag} applies to --method gptq or awq");
            }
            return Ok(None);
        }
    };
    if args.dry_run {
        // The plan of a calibrated run is RTN's: same tensors, same outputs.
        return Ok(None);
    }
    run(args, method, out).map(Some)
}

fn calibration_flag(args: &QuantizeArgs) -> Option<&'static str> {
    if args.calib.is_some() {
        Some("--calib")
    } else if args.calib_samples != 128 {
        Some("--calib-samples")
    } else if args.calib_seqlen != 512 {
        Some("--calib-seqlen")
    } else if args.damp != 0.01 {
        Some("--damp")
    } else if args.act_order {
        Some("--act-order")
    } else if args.resume {
        Some("--resume")
    } else if args.device != "auto" {
        Some("--device")
    } else {
        None
    }
}

fn run(args: &QuantizeArgs, method: Method, out: &Output) -> anyhow::Result<ExitCode> {
    let spec = export::lookup(&args.fmt)
        .filter(|s| matches!(s.scheme, Scheme::IntWeight { .. }))
        .ok_or_else(|| {
        anyhow!("--method {} needs --fmt w4a16 or w8a16 (got {})", method.name(), args.fmt)
    })?;
    if method == Method::Awq && (args.act_order || args.damp != 0.01) {
        bail!("--act-order and --damp apply to --method gptq");
    }
    let (layout, marlin) = match args.layout.as_deref() {
        Some("marlin") => (Layout::Gptq, true),
        Some(name) => (
            Layout::from_name(name).ok_or_else(|| {
                anyhow!("unknown --layout {name:?} for --method {}: gptq, awq, compressed-tensors or marlin", method.name())
            })?,
            false,
        ),
        None => (Layout::CompressedTensors, false),
    };
    if marlin && (args.asym || args.gptq_format.is_some()) {
        bail!("--layout marlin is symmetric with Marlin's own zero convention: drop --asym/--gptq-format");
    }
    let int_opts = IntOptions {
        group_size: args.group_size,
        symmetric: match (args.sym, args.asym) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        gptq_v2: args.gptq_format.as_deref() == Some("v2"),
    };
    let req = Request::new(spec, Some(layout), &args.ignore, &args.include, args.allow_nonfinite)?
        .with_int_options(&int_opts)?;
    let model = Model::open(&args.input)?;
    let ckpt = model.checkpoint();
    if let Checkpoint::Gguf { .. } = ckpt {
        bail!(
            "{}: --method {} writes safetensors from a Hugging Face checkpoint; convert the GGUF first (qtool convert)",
            args.input.display(),
            method.name()
        );
    }
    match detect_scheme(ckpt)? {
        Some(Detected::Unquantized) => {}
        Some(scheme) => bail!(
            "{}: the checkpoint is already quantized ({scheme}); quantize starts from unquantized weights",
            args.input.display()
        ),
        None => bail!("{}: the weights are not plain floats; cannot quantize", args.input.display()),
    }
    let plan = export::plan(ckpt.source(), &req)?;
    if marlin {
        check_marlin(&plan)?;
    }
    let final_out = args.output.clone();
    let write_to: PathBuf =
        if marlin { with_suffix(&final_out, ".gptq-tmp") } else { final_out.clone() };
    output::check_target(ckpt, &plan, &final_out)?;
    if marlin {
        output::check_target(ckpt, &plan, &write_to)?;
    }

    let opts = Options {
        method,
        damp: args.damp,
        act_order: args.act_order,
        calib: CalibSpec {
            source: args.calib.clone().map_or(CalibSource::Builtin, CalibSource::File),
            samples: args.calib_samples,
            seqlen: args.calib_seqlen,
        },
        output: final_out.clone(),
        resume: args.resume,
    };
    let bar = count_bar(out, method.name());
    bar.set_length(model.config().n_layers as u64);
    let device = match args.device.as_str() {
        "cuda" => Device::Cuda,
        "cpu" => Device::Cpu,
        _ => Device::Auto,
    };
    let outcome = pipeline::run_on(&model, &plan, &opts, device, &mut |b| {
        let (rtn, m) = b.layers.iter().fold((0.0, 0.0), |(r, m), l| (r + l.rtn_error, m + l.error));
        bar.set_position(b.block as u64 + 1);
        bar.set_message(format!(
            "block {}: {:.1} s, output error rtn {:.2e} -> {} {:.2e}",
            b.block,
            b.seconds,
            rtn,
            method.name(),
            m
        ));
        std::ops::ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();

    let wbar =
        crate::progress::bytes_bar(out, plan.entries.iter().map(|e| e.bytes_in).sum(), "write");
    let mut files = output::write_with(
        ckpt,
        &plan,
        &write_to,
        &mut |e| wbar.inc(e.bytes_in),
        Some(&outcome.store),
    )?;
    wbar.finish_and_clear();
    if marlin {
        let result = (|| -> anyhow::Result<Vec<PathBuf>> {
            let tmp = qtool_formats::open(&write_to)?;
            let source = repack::source_info(&tmp)?;
            let rplan = repack::plan(&tmp, source, Target::Marlin, &[1])?;
            Ok(repack::write(&tmp, &rplan, &final_out)?)
        })();
        let _ = std::fs::remove_dir_all(&write_to);
        files = result?;
    }
    let log_file = log_path(&final_out);
    write_log(&log_file, &outcome.log)?;
    Store::remove(outcome.store.dir())?;

    let layout_name = if marlin { "marlin" } else { plan.layout.name() };
    let report = Report {
        schema_version: 1,
        input: args.input.display().to_string(),
        output: final_out.display().to_string(),
        fmt: spec.name,
        method: method.name(),
        layout: layout_name,
        log: log_file.display().to_string(),
        files: files.iter().map(|p| p.display().to_string()).collect(),
        seconds: outcome.log.seconds,
        resumed_from_block: (outcome.started_at > 0).then_some(outcome.started_at),
        summary: &outcome.log.summary,
    };
    if out.json {
        out.print_json(&report)?;
    } else {
        out.print(&render(&report, &outcome.log))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Marlin's rules, checked before the (long) calibration rather than by the repack after it.
fn check_marlin(plan: &export::QuantizePlan) -> anyhow::Result<()> {
    let s = plan.int.ok_or_else(|| anyhow!("--layout marlin needs --fmt w4a16"))?;
    for e in &plan.entries {
        if let export::Action::Quantize(l) = &e.action {
            let shape = MarlinShape {
                n: l.rows,
                k: l.cols,
                bits: s.bits.get(),
                group_size: s.group_size.to_i64(),
                symmetric: s.symmetric,
                act_order: false,
            };
            check_marlin_shape(&shape, MarlinKind::Legacy, 1, repack::parallel_of(&l.prefix))
                .map_err(|err| {
                    anyhow!(
                        "{}: [{}x{}] cannot be written as Marlin: {err}",
                        e.name,
                        l.rows,
                        l.cols
                    )
                })?;
        }
    }
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    p.with_file_name(name)
}

fn write_log(path: &Path, log: &CalibLog) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(log)?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn render(r: &Report<'_>, log: &CalibLog) -> String {
    let s = r.summary;
    let mut text = format!(
        "quantized {} -> {} as {} with {} (layout {}, {} calibration windows × {} tokens from {}) in {:.1} s\n",
        r.input,
        r.output,
        r.fmt,
        r.method,
        r.layout,
        log.calibration.samples,
        log.calibration.seqlen,
        log.calibration.source,
        r.seconds
    );
    text.push_str(&format!(
        "{} layers: {} below RTN's held-out output error (mean {:.3e} vs RTN {:.3e}), {} fell back to RTN\n",
        s.layers, s.better_than_rtn, s.mean_error, s.mean_rtn_error, s.fallbacks
    ));
    for l in log.layers.iter().filter(|l| l.fallback.is_some()) {
        text.push_str(&format!("fallback {}: {}\n", l.name, l.fallback.as_deref().unwrap_or("")));
    }
    text.push_str(&format!("per-layer log: {}\n", r.log));
    for f in &r.files {
        text.push_str(&format!("wrote {f}\n"));
    }
    text
}
