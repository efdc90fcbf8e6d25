//! `qtool verify PATH [--ref REF] [--batch 1,16,128] [--filter REGEX] [--reps N] [--json]`: run
//! the kernel a runtime would run on every quantized layer's stored bytes, on the GPU, and
//! compare with an FP32 GEMM on the CPU-dequantized weights (and, with `--ref`, with the
//! original weights), timing each kernel against cuBLAS BF16 at the same shape.
//!
//! All the work is `qtool_verify`; this module parses, checks the input before touching the GPU
//! (so a checkpoint with nothing to verify says so even on a machine without one), prints a
//! table or the JSON report, and turns the verdict into the exit code: 0 every layer passed, 1
//! some layer failed (named in the table / `summary.failing`) or every layer was skipped, 2 bad
//! input or no usable GPU.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use qtool_verify::discover::{discover, input};
use qtool_verify::gpu::{GpuBackend, DEFAULT_REPS};
use qtool_verify::reference::Reference;
use qtool_verify::report::{LayerReport, Report, Status, Summary, SCHEMA_VERSION};
use qtool_verify::runner::{verify_layer, Backend, RefContext};
use qtool_verify::VerifyError;
use regex::Regex;

use crate::output::{short_float, Output};

/// Largest batch size accepted (the CPU reference holds `m × k` activations per layer).
const MAX_BATCH: usize = 65_536;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The quantized checkpoint (.safetensors, .gguf, or a directory).
    pub input: PathBuf,
    /// The original weights the checkpoint was made from; each layer's output error against
    /// them must stay within twice what qtool's own quantizer makes for the same scheme.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<PathBuf>,
    /// Batch sizes (activation rows) to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128", value_name = "M,..")]
    pub batch: Vec<usize>,
    /// Only layers whose weight name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
    /// Timed repetitions per kernel (median reported).
    #[arg(long, default_value_t = DEFAULT_REPS, value_name = "N")]
    pub reps: usize,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device: usize,
}

pub fn run(args: &VerifyArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.batch.is_empty() || args.batch.iter().any(|&m| m == 0 || m > MAX_BATCH) {
        anyhow::bail!("--batch: expected sizes from 1 to {MAX_BATCH}, got {:?}", args.batch);
    }
    if args.reps == 0 {
        anyhow::bail!("--reps: expected at least 1");
    }
    let filter = match &args.filter {
        Some(re) => Some(
            Regex::new(re)
                .map_err(|e| anyhow::anyhow!("--filter: invalid regular expression '{re}': {e}"))?,
        ),
        None => None,
    };
    let checkpoint = qtool_formats::open(&args.input)?;
    let cand = input(&checkpoint);
    let keep = |name: &str| filter.as_ref().is_none_or(|re| re.is_match(name));
    let found = discover(&cand, &keep)?;
    if found.layers.is_empty() && found.unrunnable.is_empty() {
        return Err(VerifyError::NoQuantizedLayers {
            path: args.input.display().to_string(),
            tensors: found.tensors,
            filtered: args
                .filter
                .as_ref()
                .map_or(String::new(), |f| format!("; --filter '{f}' kept none")),
        }
        .into());
    }
    let ref_checkpoint = match &args.reference {
        Some(p) => Some(qtool_formats::open(p)?),
        None => None,
    };
    let reference = match (&args.reference, &ref_checkpoint) {
        (Some(p), Some(c)) => Some(Reference::new(
            &p.display().to_string(),
            qtool_quantizers::diff::Input::from_checkpoint(c),
            &cand,
        )?),
        _ => None,
    };
    if let Some(r) = &reference {
        r.check(&found.layers)?;
    }
    let probe = qtool_kernels::probe();
    if let Some(reason) = probe.unusable_reason() {
        anyhow::bail!("no usable GPU: {reason}");
    }
    let backend = GpuBackend::open(args.device, args.reps).map_err(|e| match e {
        qtool_kernels::KernelError::NoGpu(r) => anyhow::anyhow!("no usable GPU: {r}"),
        e => anyhow::anyhow!("no usable GPU: {e}"),
    })?;

    let bar = layers_bar(out, found.layers.len() as u64);
    let mut layers = Vec::with_capacity(found.layers.len() + found.unrunnable.len());
    for layer in &found.layers {
        bar.set_message(layer.name.clone());
        let cx = reference.as_ref().map(|r| RefContext { reference: r, candidate: &cand });
        layers.push(verify_layer(layer, &args.batch, Some(&backend as &dyn Backend), cx)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    for u in &found.unrunnable {
        layers.push(LayerReport {
            name: u.name.clone(),
            layout: u.scheme.clone(),
            kernel: None,
            shape: [0, 0],
            status: Status::Skipped,
            reason: Some(u.reason.clone()),
            batches: Vec::new(),
        });
    }
    let summary = Summary::of(&layers);
    let report = Report {
        schema_version: SCHEMA_VERSION,
        path: args.input.display().to_string(),
        reference: args.reference.as_ref().map(|p| p.display().to_string()),
        device: Some(backend.device()),
        batches: args.batch.clone(),
        layers,
        summary,
    };
    if out.json {
        out.print_json(&report)?;
    } else {
        out.print(&render(&report))?;
    }
    Ok(if report.summary.pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn layers_bar(out: &Output, total: u64) -> ProgressBar {
    if !out.progress_enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("verify [{bar:30}] {pos}/{len} layers {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Skipped => "skipped",
    }
}

/// One row per layer and batch size (the layer's name on its first row), then the verdict.
fn render(report: &Report) -> String {
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_content_arrangement(ContentArrangement::Disabled);
    let with_ref = report.reference.is_some();
    let mut header = vec![
        "layer",
        "layout",
        "kernel",
        "shape",
        "m",
        "max_rel",
        "mean_rel",
        "tolerance",
        "kernel µs",
        "bf16 µs",
        "speed-up",
    ];
    if with_ref {
        header.extend(["vs REF", "limit"]);
    }
    header.push("status");
    table.set_header(header);
    for l in &report.layers {
        let shape = format!("{}×{}", l.shape[0], l.shape[1]);
        let kernel = l.kernel.clone().unwrap_or_else(|| "-".into());
        if l.batches.is_empty() {
            let mut row = vec![l.name.clone(), l.layout.clone(), kernel, shape];
            row.push(format!("{}: {}", status(l.status), l.reason.as_deref().unwrap_or("")));
            table.add_row(row);
            continue;
        }
        for (i, b) in l.batches.iter().enumerate() {
            let first = i == 0;
            let mut row = vec![
                if first { l.name.clone() } else { String::new() },
                if first { l.layout.clone() } else { String::new() },
                if first { kernel.clone() } else { String::new() },
                if first { shape.clone() } else { String::new() },
                b.m.to_string(),
                opt(b.max_rel, short_float),
                opt(b.mean_rel, short_float),
                b.tolerance
                    .map_or("-".into(), |t| format!("{} ≤{}/{}", t.name, t.max_rel, t.mean_rel)),
                opt(b.kernel_us, |u| format!("{u:.1}")),
                opt(b.bf16_us, |u| format!("{u:.1}")),
                opt(b.speedup, |s| format!("{s:.2}×")),
            ];
            if with_ref {
                match &b.reference {
                    Some(r) => {
                        let worst = r.kernel_rel.map_or(r.cpu_rel, |k| k.max(r.cpu_rel));
                        row.push(short_float(worst));
                        row.push(r.limit.map_or_else(|| "not judged".into(), short_float));
                    }
                    None => row.extend(["-".to_string(), "-".to_string()]),
                }
            }
            row.push(match (b.pass, l.status) {
                (false, _) => "FAIL".into(),
                (true, Status::Skipped) => "skipped".into(),
                (true, _) => "pass".into(),
            });
            table.add_row(row);
        }
    }
    for c in 4..11 {
        if let Some(col) = table.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = table.to_string();
    text.push('\n');
    let s = &report.summary;
    if let Some(d) = &report.device {
        text.push_str(&format!("device: {d}\n"));
    }
    text.push_str(&format!(
        "{} layers: {} passed, {} failed, {} skipped\n",
        s.layers, s.passed, s.failed, s.skipped
    ));
    for l in report.layers.iter().filter(|l| l.status == Status::Skipped && !l.batches.is_empty()) {
        text.push_str(&format!("skipped {}: {}\n", l.name, l.reason.as_deref().unwrap_or("")));
    }
    if s.passed == 0 && s.failed == 0 {
        text.push_str("nothing verified: every layer was skipped\n");
    }
    for l in report.layers.iter().filter(|l| l.status == Status::Fail) {
        text.push_str(&format!("FAIL {}: {}\n", l.name, l.reason.as_deref().unwrap_or("")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtool_verify::report::{BatchResult, RefResult};
    use qtool_verify::tolerance::MARLIN_W4A16;

    fn batch(m: usize, pass: bool) -> BatchResult {
        BatchResult {
            m,
            max_rel: Some(if pass { 0.001 } else { 0.5 }),
            mean_rel: Some(0.0002),
            tolerance: Some(MARLIN_W4A16),
            pass,
            kernel_us: Some(10.0),
            bf16_us: Some(35.0),
            speedup: Some(3.5),
            reference: Some(RefResult {
                expected_rel: Some(0.1),
                cpu_rel: 0.11,
                kernel_rel: Some(0.11),
                limit: Some(0.2),
                pass: true,
                note: None,
            }),
        }
    }

    #[test]
    fn table_names_failing_layers_and_shows_speedups() {
        let layers = vec![
            LayerReport {
                name: "a.weight".into(),
                layout: "int4_g128/marlin".into(),
                kernel: Some("marlin_w4a16".into()),
                shape: [256, 512],
                status: Status::Pass,
                reason: None,
                batches: vec![batch(1, true), batch(16, true)],
            },
            LayerReport {
                name: "b.weight".into(),
                layout: "int4_g128/marlin".into(),
                kernel: Some("marlin_w4a16".into()),
                shape: [256, 512],
                status: Status::Fail,
                reason: Some("m=1: kernel vs CPU max_rel 0.5".into()),
                batches: vec![batch(1, false)],
            },
        ];
        let summary = Summary::of(&layers);
        let report = Report {
            schema_version: SCHEMA_VERSION,
            path: "x".into(),
            reference: Some("r".into()),
            device: Some("Test GPU".into()),
            batches: vec![1, 16],
            layers,
            summary,
        };
        let text = render(&report);
        assert!(text.contains("3.50×"), "{text}");
        assert!(text.contains("1 passed, 1 failed, 0 skipped"), "{text}");
        assert!(text.contains("FAIL b.weight: m=1"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["summary"]["failing"], serde_json::json!(["b.weight"]));
        assert_eq!(json["layers"][0]["batches"][1]["speedup"], 3.5);
        assert_eq!(json["layers"][0]["batches"][0]["reference"]["limit"], 0.2);
    }
}
