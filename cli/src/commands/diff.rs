//! `qtool diff REF CAND [--worst N] [--filter REGEX] [--plot FILE.svg] [--fail-below-sqnr DB]`:
//! per-tensor error of a candidate (usually a quantized checkpoint) against its reference.
//!
//! All the work is `qtool_quantizers::diff`: tensors matched by name across containers and
//! layouts, each side decoded by the scheme that wrote it, metrics accumulated in f64 in a
//! thread-count-independent order. This module only chooses what to print: a table in model
//! order (the three worst rows marked `!`) or the N worst by SQNR, a summary, the optional SVG
//! plot (written atomically), and the exit code — 1 when `--fail-below-sqnr` finds a tensor
//! below the threshold, NaN, or not comparable.
//!
//! `--calib LOG.json` adds the per-layer log of a GPTQ/AWQ run (module `calib`). REF and CAND
//! are then optional: `qtool diff --calib LOG` shows only the log, `qtool diff REF CAND --calib
//! LOG` shows the weight table, then the log's table; under `--json` the log's document is the
//! `calib` key of the weight document. The log is read and checked before any checkpoint is
//! opened, so a bad log fails fast.

mod calib;

use std::io::Write;
use std::process::ExitCode;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use qtool_quantizers::diff::{
    self, plot, DiffOptions, DiffReport, DiffRow, Input, Registry, RowStatus,
};
use regex::Regex;
use serde::Serialize;

use crate::args::DiffArgs;
use crate::output::{short_float, Output};

/// Rows marked as the worst in the full table.
const HIGHLIGHT: usize = 3;

/// `--json` output, `schema_version` 1: the library's report plus the two paths and the
/// threshold verdict.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    reference: String,
    candidate: String,
    #[serde(flatten)]
    report: &'a DiffReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<Threshold>,
    /// `--calib`: the calibration log's document.
    #[serde(skip_serializing_if = "Option::is_none")]
    calib: Option<&'a calib::CalibReport>,
}

#[derive(Clone, Debug, Serialize)]
struct Threshold {
    sqnr_db: f64,
    passed: bool,
    /// Tensors below the threshold, NaN, or not comparable.
    failing: Vec<String>,
}

pub fn run(args: &DiffArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let filter = match &args.filter {
        Some(re) => Some(
            Regex::new(re)
                .map_err(|e| anyhow::anyhow!("--filter: invalid regular expression '{re}': {e}"))?,
        ),
        None => None,
    };
    let calib_report = match &args.calib {
        Some(path) => {
            let log = calib::load(path)?;
            Some(calib::report(path, &log, filter.as_ref(), args.worst))
        }
        None => None,
    };
    let (reference, candidate) = match (&args.reference, &args.candidate) {
        (Some(r), Some(c)) => (r, c),
        // clap requires both unless --calib is given.
        _ => {
            let Some(report) = &calib_report else {
                anyhow::bail!("expected REF and CAND, or --calib LOG.json");
            };
            if out.json {
                out.print_json(report)?;
            } else {
                out.print(&calib::render(report))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(db) = args.fail_below_sqnr {
        if db.is_nan() {
            anyhow::bail!("--fail-below-sqnr: expected a number of dB, got NaN");
        }
    }
    if let Some(path) = &args.plot {
        qtool_formats::atomic::ensure_not_input(path, &[reference.clone(), candidate.clone()])?;
    }
    let ref_path = reference;
    let cand_path = candidate;
    let reference = qtool_formats::open(ref_path)?;
    let candidate = qtool_formats::open(cand_path)?;
    let plan = diff::plan(
        &Input::from_checkpoint(&reference),
        &Input::from_checkpoint(&candidate),
        &Registry::standard(),
        &DiffOptions { filter },
    )?;
    let bar = elements_bar(out, plan.total_elements());
    let tick = |n: u64| bar.inc(n);
    let report = plan.run(Some(&tick))?;
    bar.finish_and_clear();

    if let Some(path) = &args.plot {
        let name = |p: &std::path::Path| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
        };
        let title = format!("{} vs {}", name(ref_path), name(cand_path));
        let svg = plot::sqnr_svg(&report, &title);
        let mut file = qtool_formats::atomic::AtomicFile::create(path)?;
        file.writer()
            .write_all(svg.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.commit()?;
    }

    let threshold = args.fail_below_sqnr.map(|db| {
        let failing: Vec<String> = report
            .rows
            .iter()
            .filter(|r| match (r.status, r.sqnr_db()) {
                (RowStatus::NotCompared, _) => true,
                (_, Some(s)) => s.is_nan() || s < db,
                _ => false,
            })
            .map(|r| r.name.clone())
            .collect();
        Threshold { sqnr_db: db, passed: failing.is_empty(), failing }
    });

    let shown: Vec<&DiffRow> = match args.worst {
        Some(n) => report.worst(n),
        None => report.rows.iter().collect(),
    };
    if out.json {
        // With --worst the rows are the N worst, worst first; the summary still covers all.
        let trimmed;
        let body = if args.worst.is_some() {
            let mut t = report.clone();
            t.rows = shown.iter().map(|r| (*r).clone()).collect();
            trimmed = t;
            &trimmed
        } else {
            &report
        };
        out.print_json(&JsonReport {
            reference: ref_path.display().to_string(),
            candidate: cand_path.display().to_string(),
            report: body,
            threshold: threshold.clone(),
            calib: calib_report.as_ref(),
        })?;
    } else {
        let marked =
            if args.worst.is_some() { Vec::new() } else { report.worst_indices(HIGHLIGHT) };
        let mut text = render_table(&report, &shown, &marked);
        text.push_str(&render_summary(&report));
        if let Some(t) = &threshold {
            if t.passed {
                text.push_str(&format!("every tensor is at or above {} dB SQNR\n", t.sqnr_db));
            } else {
                text.push_str(&format!(
                    "{} tensor(s) below {} dB SQNR, NaN or not comparable: {}\n",
                    t.failing.len(),
                    t.sqnr_db,
                    t.failing.join(", ")
                ));
            }
        }
        if let Some(r) = &calib_report {
            text.push('\n');
            text.push_str(&calib::render(r));
        }
        out.print(&text)?;
    }
    Ok(match threshold {
        Some(t) if !t.passed => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// A bar counting compared elements, hidden when progress is off.
fn elements_bar(out: &Output, total: u64) -> ProgressBar {
    if !out.progress_enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "diff [{bar:30}] {percent:>3}% of {human_len} weights, eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn db(x: f64) -> String {
    if x == f64::INFINITY {
        "inf".into()
    } else if x.is_finite() {
        format!("{x:.2}")
    } else {
        short_float(x)
    }
}

fn render_table(report: &DiffReport, rows: &[&DiffRow], marked: &[usize]) -> String {
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(vec![
        "", "tensor", "shape", "scheme", "bits/w", "SQNR dB", "cosine", "rel_fro", "rmse",
        "max_abs",
    ]);
    for r in rows {
        let index = report.rows.iter().position(|x| std::ptr::eq(x, *r));
        let mark = if index.is_some_and(|i| marked.contains(&i)) { "!" } else { "" };
        let name = match &r.cand_name {
            Some(c) if *c != r.name && r.status != RowStatus::OnlyCand => {
                format!("{} ↔ {c}", r.name)
            }
            _ => r.name.clone(),
        };
        let shape =
            format!("[{}]", r.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        let scheme = match (&r.ref_scheme, &r.scheme) {
            (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
            (_, Some(b)) => b.clone(),
            (Some(a), None) => a.clone(),
            _ => String::new(),
        };
        let bpw = r.bits_per_weight.map_or(String::new(), |b| format!("{b:.3}"));
        let mut row = vec![mark.to_string(), name, shape, scheme, bpw];
        match (&r.metrics, r.status) {
            (Some(m), _) => row.extend([
                db(m.sqnr_db),
                format!("{:.6}", m.cosine),
                short_float(m.rel_fro),
                short_float(m.rmse),
                short_float(m.max_abs),
            ]),
            (None, RowStatus::OnlyRef) => row.push("only in REF".into()),
            (None, RowStatus::OnlyCand) => row.push("only in CAND".into()),
            (None, _) => row.push(format!("not compared: {}", r.reason.as_deref().unwrap_or(""))),
        }
        table.add_row(row);
    }
    for c in 4..10 {
        if let Some(col) = table.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = table.to_string();
    text.push('\n');
    text
}

fn render_summary(report: &DiffReport) -> String {
    let s = &report.summary;
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
    let mut text = format!(
        "{} compared ({} identical{}), {} only in REF, {} only in CAND, {} not compared\n",
        s.compared,
        s.identical,
        if s.nan > 0 { format!(", {} NaN", s.nan) } else { String::new() },
        s.only_ref,
        s.only_cand,
        s.not_compared
    );
    text.push_str(&format!(
        "SQNR: mean {} dB, worst {} dB{}; {} bits/weight (REF {}), size ratio {}\n",
        opt(s.mean_sqnr_db, db),
        opt(s.worst_sqnr_db, db),
        s.worst_tensor.as_deref().map(|t| format!(" ({t})")).unwrap_or_default(),
        opt(s.bits_per_weight, |b| format!("{b:.3}")),
        opt(s.ref_bits_per_weight, |b| format!("{b:.3}")),
        opt(s.size_ratio, |r| format!("{r:.4}"))
    ));
    text
}
