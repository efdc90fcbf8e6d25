//! `qtool inspect PATH [--stats] [--filter REGEX]`: a checkpoint's tensors, metadata and scheme.
//!
//! Without `--stats` only headers are read (plus the few bytes of ComfyUI `.comfy_quant`
//! markers, see `qtool_formats::conventions::detect_scheme`), so inspecting a 30 GB checkpoint
//! takes milliseconds. With `--stats` every selected tensor is decoded in parallel.

use std::collections::BTreeMap;
use std::process::ExitCode;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use qtool_formats::conventions::detect_scheme;
use qtool_formats::{Checkpoint, TensorInfo, TensorSource};
use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::args::InspectArgs;
use crate::commands::stats::{compute_stats, TensorStats};
use crate::output::{human_bytes, short_float, thousands, Output};

/// `--json` output, `schema_version` 1 (docs/cli.md).
#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    format: &'static str,
    path: String,
    files: Vec<String>,
    metadata: Map<String, Value>,
    scheme: Option<String>,
    tensors: Vec<TensorEntry>,
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct TensorEntry {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    bytes: u64,
    file: String,
    offset: u64,
    /// Present (possibly `null` for an undecodable type) only with `--stats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<Option<TensorStats>>,
}

#[derive(Debug, Serialize)]
struct Summary {
    tensors: u64,
    params: u64,
    bytes: u64,
    by_dtype: BTreeMap<&'static str, u64>,
}

pub fn run(args: &InspectArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let filter = match &args.filter {
        Some(re) => Some(Regex::new(re).map_err(|e| {
            anyhow::anyhow!("--filter: invalid regular expression '{re}': {}", regex_reason(&e))
        })?),
        None => None,
    };
    let ckpt = qtool_formats::open(&args.path)?;
    let source = ckpt.source();
    let scheme = detect_scheme(&ckpt)?.map(|s| s.to_string());
    let selected: Vec<&TensorInfo> = source
        .tensors()
        .iter()
        .filter(|t| filter.as_ref().is_none_or(|re| re.is_match(&t.name)))
        .collect();

    let stats = if args.stats { Some(compute_stats(source, &selected, out)?) } else { None };
    let report = build_report(&ckpt, scheme, &selected, stats);

    if out.json {
        out.print_json(&report)?;
    } else {
        out.print(&render_text(&report, args.stats))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn build_report(
    ckpt: &Checkpoint,
    scheme: Option<String>,
    selected: &[&TensorInfo],
    stats: Option<Vec<Option<TensorStats>>>,
) -> Report {
    let source: &dyn TensorSource = ckpt.source();
    let files: Vec<String> = source.files().iter().map(|p| p.display().to_string()).collect();
    let mut by_dtype = BTreeMap::new();
    let (mut params, mut bytes) = (0u64, 0u64);
    for t in selected {
        *by_dtype.entry(t.dtype.name()).or_insert(0) += t.nbytes;
        params += t.numel();
        bytes += t.nbytes;
    }
    let mut stats = stats.map(Vec::into_iter);
    let tensors = selected
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            dtype: t.dtype.name(),
            shape: t.shape.clone(),
            bytes: t.nbytes,
            file: files.get(t.file).cloned().unwrap_or_default(),
            offset: t.offset,
            stats: stats.as_mut().and_then(Iterator::next),
        })
        .collect();
    Report {
        schema_version: 1,
        format: source.format().name(),
        path: ckpt.path().display().to_string(),
        files,
        metadata: source.metadata(),
        scheme,
        tensors,
        summary: Summary { tensors: selected.len() as u64, params, bytes, by_dtype },
    }
}

/// Longest metadata value shown in the text output; the JSON output has them whole.
const MAX_META_CHARS: usize = 100;

fn render_text(r: &Report, with_stats: bool) -> String {
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_content_arrangement(ContentArrangement::Disabled);
    let multi_file = r.files.len() > 1;
    let mut header = vec!["name", "dtype", "shape", "params", "bytes"];
    if multi_file {
        header.push("file");
    }
    if with_stats {
        header.extend(["min", "max", "absmax", "mean", "std", "nan", "inf"]);
    }
    table.set_header(header.clone());
    for t in &r.tensors {
        let numel: u64 = t.shape.iter().product();
        let shape =
            format!("[{}]", t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        let mut row =
            vec![t.name.clone(), t.dtype.to_string(), shape, thousands(numel), thousands(t.bytes)];
        if multi_file {
            row.push(
                std::path::Path::new(&t.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        match &t.stats {
            Some(Some(s)) => {
                let f = |x: Option<f64>| x.map(short_float).unwrap_or_else(|| "-".to_string());
                row.extend([
                    f(s.min),
                    f(s.max),
                    f(s.absmax),
                    f(s.mean),
                    f(s.std),
                    thousands(s.nan),
                    thousands(s.inf),
                ]);
            }
            // A type qtool cannot decode: listed, without numbers.
            Some(None) => row.extend(std::iter::repeat_n("-".to_string(), 7)),
            None => {}
        }
        table.add_row(row);
    }
    for (i, name) in header.iter().enumerate() {
        if !matches!(*name, "name" | "dtype" | "shape" | "file") {
            if let Some(col) = table.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }

    let mut s = String::new();
    s.push_str(&format!(
        "{} ({}, {} file{})\n",
        r.path,
        r.format,
        r.files.len(),
        if r.files.len() == 1 { "" } else { "s" }
    ));
    s.push_str(&format!("scheme: {}\n\n", r.scheme.as_deref().unwrap_or("unknown")));
    if !r.tensors.is_empty() {
        s.push_str(&table.to_string());
        s.push_str("\n\n");
    }
    s.push_str(&format!(
        "tensors: {}   params: {}   bytes: {} ({})\n",
        thousands(r.summary.tensors),
        thousands(r.summary.params),
        thousands(r.summary.bytes),
        human_bytes(r.summary.bytes)
    ));
    let mut by: Vec<_> = r.summary.by_dtype.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let by: Vec<String> = by.iter().map(|(d, b)| format!("{d} {}", human_bytes(**b))).collect();
    if !by.is_empty() {
        s.push_str(&format!("by dtype: {}\n", by.join(", ")));
    }
    if !r.metadata.is_empty() {
        s.push_str("metadata:\n");
        for (k, v) in &r.metadata {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!("  {k}: {}\n", clip(&text, MAX_META_CHARS)));
        }
    }
    s
}

/// Shortens long values (chat templates, token lists) to one readable line.
fn clip(text: &str, max: usize) -> String {
    let flat = text.replace(['\n', '\r', '\t'], " ");
    let count = flat.chars().count();
    if count <= max {
        return flat;
    }
    let head: String = flat.chars().take(max).collect();
    format!("{head}... ({count} chars)")
}

/// The regex crate's message is a multi-line diagram ending in `error: <reason>`; keep the reason.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_and_marks_long() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("a\nb", 5), "a b");
        assert_eq!(clip("abcdefgh", 3), "abc... (8 chars)");
    }
}
