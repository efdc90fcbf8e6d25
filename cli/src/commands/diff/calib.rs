//! `qtool diff --calib LOG.json`: the per-layer log of a GPTQ/AWQ run, read back and judged.
//!
//! The log (`qtool_calib::pipeline::CalibLog`, written beside the output as `OUT.calib.json`)
//! holds, per quantized linear, the output-space error `‖XWᵀ − XQᵀ‖² / ‖XWᵀ‖²` on held-out
//! calibration tokens for round-to-nearest and for the method. This module adds the one number
//! the log leaves implicit — the ratio method/RTN, below 1 where the method helped — and
//! recomputes the summary over the layers shown (`--filter`), so a filtered view never reports
//! the whole run's counts. The log is parsed with the writer's own types, so a format change
//! there is a compile-time change here.

use std::path::Path;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use qtool_calib::pipeline::{CalibInfo, CalibLog, LayerLog};
use regex::Regex;
use serde::Serialize;

use crate::output::short_float;

/// The only log `schema_version` this reader understands.
const LOG_SCHEMA: u32 = 1;

/// `--json` document (`schema_version` 1) for the calibration log.
#[derive(Debug, Serialize)]
pub struct CalibReport {
    pub schema_version: u32,
    /// The log file as given on the command line.
    pub log: String,
    pub method: String,
    pub layout: String,
    pub bits: u32,
    pub group_size: i64,
    pub symmetric: bool,
    pub act_order: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    pub calibration: CalibInfo,
    /// In model order, or with `--worst N` the N highest ratios, worst first.
    pub layers: Vec<LayerRow>,
    /// Over every layer selected by `--filter` (all of them without it), even with `--worst`.
    pub summary: CalibSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub block: usize,
    pub shape: [usize; 2],
    /// The log's method, or `rtn` where the layer fell back to round-to-nearest.
    pub method: String,
    pub rtn_error: f64,
    pub error: f64,
    /// `error / rtn_error`; 1 when both are 0; `null` when RTN's error is 0 and the method's is
    /// not (the ratio is unbounded).
    pub ratio: Option<f64>,
    /// `error < rtn_error`, the log's own definition of "better" (ties are not wins).
    pub beats_rtn: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CalibSummary {
    pub layers: usize,
    /// Mean of the defined ratios; `null` when none is.
    pub mean_ratio: Option<f64>,
    pub better_than_rtn: usize,
    /// `better_than_rtn` as a percentage of `layers`; `null` for no layers.
    pub better_than_rtn_pct: Option<f64>,
    pub mean_rtn_error: Option<f64>,
    pub mean_error: Option<f64>,
    pub fallbacks: Vec<Fallback>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fallback {
    pub name: String,
    /// The reason exactly as the log records it.
    pub reason: String,
}

/// Reads and checks the log. Every error names the file; layer errors name the layer too.
pub fn load(path: &Path) -> anyhow::Result<CalibLog> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{shown}: cannot read the calibration log: {e}"))?;
    // The version first, so a future log fails with the version rather than a missing field.
    let head: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{shown}: not a calibration log (invalid JSON: {e})"))?;
    match head.get("schema_version") {
        Some(v) if v.as_u64() == Some(u64::from(LOG_SCHEMA)) => {}
        Some(v) => anyhow::bail!(
            "{shown}: calibration log schema_version {v} is not supported (this qtool reads \
             {LOG_SCHEMA})"
        ),
        None => anyhow::bail!(
            "{shown}: not a calibration log (no 'schema_version'; expected the OUT.calib.json \
             written by qtool quantize --method gptq|awq)"
        ),
    }
    let log: CalibLog = serde_json::from_value(head)
        .map_err(|e| anyhow::anyhow!("{shown}: not a calibration log: {e}"))?;
    for l in &log.layers {
        for (key, v) in [("rtn_error", l.rtn_error), ("error", l.error)] {
            // A ratio of squared norms: negative or infinite values mean a corrupt log.
            if !(v >= 0.0 && v.is_finite()) {
                anyhow::bail!("{shown}: layer '{}': {key} {v} is not a finite error >= 0", l.name);
            }
        }
    }
    Ok(log)
}

fn ratio(l: &LayerLog) -> Option<f64> {
    if l.rtn_error > 0.0 {
        Some(l.error / l.rtn_error)
    } else if l.error == 0.0 {
        Some(1.0)
    } else {
        None
    }
}

fn row(log: &CalibLog, l: &LayerLog) -> LayerRow {
    LayerRow {
        name: l.name.clone(),
        block: l.block,
        shape: l.shape,
        method: if l.fallback.is_some() { "rtn".to_string() } else { log.method.clone() },
        rtn_error: l.rtn_error,
        error: l.error,
        ratio: ratio(l),
        beats_rtn: l.error < l.rtn_error,
        damp: l.damp,
        alpha: l.alpha,
        fallback: l.fallback.clone(),
    }
}

fn summarize(rows: &[LayerRow]) -> CalibSummary {
    let n = rows.len();
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let better = rows.iter().filter(|r| r.beats_rtn).count();
    CalibSummary {
        layers: n,
        mean_ratio: mean(rows.iter().filter_map(|r| r.ratio).collect()),
        better_than_rtn: better,
        better_than_rtn_pct: (n > 0).then(|| 100.0 * better as f64 / n as f64),
        mean_rtn_error: mean(rows.iter().map(|r| r.rtn_error).collect()),
        mean_error: mean(rows.iter().map(|r| r.error).collect()),
        fallbacks: rows
            .iter()
            .filter_map(|r| {
                r.fallback
                    .as_ref()
                    .map(|reason| Fallback { name: r.name.clone(), reason: reason.clone() })
            })
            .collect(),
    }
}

/// The N layers with the highest ratio, worst first; an undefined ratio (RTN exact, method
/// not) ranks worst of all. Ties keep model order, so the output is deterministic.
fn worst(rows: &[LayerRow], n: usize) -> Vec<LayerRow> {
    let key = |r: &LayerRow| r.ratio.unwrap_or(f64::INFINITY);
    let mut sorted: Vec<LayerRow> = rows.to_vec();
    sorted.sort_by(|a, b| key(b).total_cmp(&key(a)));
    sorted.truncate(n);
    sorted
}

pub fn report(
    path: &Path,
    log: &CalibLog,
    filter: Option<&Regex>,
    worst_n: Option<usize>,
) -> CalibReport {
    let rows: Vec<LayerRow> = log
        .layers
        .iter()
        .filter(|l| filter.is_none_or(|re| re.is_match(&l.name)))
        .map(|l| row(log, l))
        .collect();
    let summary = summarize(&rows);
    let layers = match worst_n {
        Some(n) => worst(&rows, n),
        None => rows,
    };
    CalibReport {
        schema_version: 1,
        log: path.display().to_string(),
        method: log.method.clone(),
        layout: log.layout.clone(),
        bits: log.bits,
        group_size: log.group_size,
        symmetric: log.symmetric,
        act_order: log.act_order,
        damp: log.damp,
        calibration: log.calibration.clone(),
        layers,
        summary,
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.4}"))
}

pub fn render(r: &CalibReport) -> String {
    let c = &r.calibration;
    let mut text = format!(
        "{} int{} (layout {}, group {}{}{}) on {} windows x {} tokens of {}; errors on {} \
         held-out window(s)\n",
        r.method,
        r.bits,
        r.layout,
        r.group_size,
        if r.symmetric { ", symmetric" } else { ", asymmetric" },
        if r.act_order { ", act-order" } else { "" },
        c.samples,
        c.seqlen,
        c.source,
        c.held_out_windows,
    );
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(vec!["layer", "method", "RTN error", "method error", "ratio", "beats RTN"]);
    for l in &r.layers {
        table.add_row(vec![
            l.name.clone(),
            l.method.clone(),
            short_float(l.rtn_error),
            short_float(l.error),
            ratio_cell(l.ratio),
            if l.beats_rtn { "yes" } else { "no" }.to_string(),
        ]);
    }
    for col in 2..5 {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    text.push_str(&table.to_string());
    text.push('\n');
    let s = &r.summary;
    text.push_str(&format!(
        "{} layers: mean ratio {} (mean error {} vs RTN {}); {} better than RTN ({})\n",
        s.layers,
        ratio_cell(s.mean_ratio),
        s.mean_error.map_or("-".to_string(), short_float),
        s.mean_rtn_error.map_or("-".to_string(), short_float),
        s.better_than_rtn,
        s.better_than_rtn_pct.map_or("-".to_string(), |p| format!("{p:.1}%")),
    ));
    if s.fallbacks.is_empty() {
        text.push_str("no layer fell back to RTN\n");
    } else {
        text.push_str(&format!("{} layer(s) fell back to RTN:\n", s.fallbacks.len()));
        for f in &s.fallbacks {
            text.push_str(&format!("  {}: {}\n", f.name, f.reason));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, rtn: f64, err: f64) -> LayerLog {
        LayerLog {
            name: name.into(),
            block: 0,
            shape: [4, 4],
            rtn_error: rtn,
            error: err,
            damp: None,
            alpha: None,
            fallback: None,
        }
    }

    #[test]
    fn ratio_edge_cases() {
        assert_eq!(ratio(&layer("a", 0.5, 0.25)), Some(0.5));
        assert_eq!(ratio(&layer("a", 0.0, 0.0)), Some(1.0));
        assert_eq!(ratio(&layer("a", 0.0, 0.1)), None);
    }

    #[test]
    fn worst_ranks_undefined_first_and_keeps_model_order_on_ties() {
        let log = CalibLog {
            schema_version: 1,
            method: "gptq".into(),
            layout: "gptq".into(),
            bits: 4,
            group_size: 32,
            symmetric: true,
            damp: None,
            act_order: false,
            calibration: CalibInfo {
                source: "x".into(),
                samples: 1,
                seqlen: 1,
                held_out_windows: 1,
                text_tokens: 1,
            },
            seconds: 0.0,
            device: "cpu".into(),
            block_seconds: vec![],
            layers: vec![
                layer("a", 1.0, 0.5),
                layer("b", 1.0, 0.9),
                layer("c", 0.0, 0.1),
                layer("d", 2.0, 1.0),
            ],
            summary: qtool_calib::pipeline::Summary::of(&[]),
        };
        let r = report(Path::new("l.json"), &log, None, Some(3));
        let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a"]);
        assert_eq!(r.summary.layers, 4);
        assert_eq!(r.summary.better_than_rtn, 3);
        assert_eq!(r.summary.mean_ratio, Some((0.5 + 0.9 + 0.5) / 3.0));
    }
}
