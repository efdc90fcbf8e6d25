//! `qtool formats`: every `--fmt` name `qtool quantize` accepts, what it writes, and the
//! layouts that can express it. The table is generated from the same catalog and part planner
//! the quantizer uses, so it cannot drift from what is written.

use std::process::ExitCode;

use comfy_table::{presets, ContentArrangement, Table};
use qtool_formats::DType;
use qtool_quantizers::export::plan::{comfy_quant_bytes, layer_outputs, LayerPlan};
use qtool_quantizers::export::{Layout, Scheme, FORMATS};
use qtool_quantizers::float::ComputeDType;
use qtool_quantizers::recipe::FileType;
use serde::Serialize;

use crate::commands::quantize::gguf_names;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    formats: Vec<Fmt>,
}

#[derive(Debug, Serialize)]
struct Fmt {
    name: String,
    /// `safetensors` (input and output) or `gguf`.
    container: &'static str,
    scheme: String,
    summary: String,
    default_layout: &'static str,
    layouts: Vec<&'static str>,
    /// Per quantized layer `L` in the default layout: `L.suffix DTYPE`.
    writes: Vec<String>,
    /// The exact text of `L.comfy_quant` in the `comfy` layout, where the name has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    comfy_quant: Option<String>,
}

pub fn run(out: &Output) -> anyhow::Result<ExitCode> {
    let probe = LayerPlan {
        prefix: "L".into(),
        rows: 64,
        cols: 64,
        dtype: DType::BF16,
        compute: ComputeDType::BF16,
    };
    let mut formats: Vec<Fmt> = FORMATS
        .iter()
        .map(|f| Fmt {
            name: f.name.to_string(),
            container: "safetensors",
            scheme: f.scheme.name().to_string(),
            summary: f.summary.to_string(),
            default_layout: f.default_layout.name(),
            layouts: f.layouts.iter().map(|l| l.name()).collect(),
            writes: if f.scheme == Scheme::Passthrough {
                Vec::new()
            } else {
                layer_outputs(f, f.default_layout, &probe)
                    .iter()
                    .map(|t| format!("{} {}", t.name, t.dtype))
                    .collect()
            },
            comfy_quant: (f.scheme != Scheme::Passthrough && f.supports(Layout::Comfy))
                .then(|| String::from_utf8_lossy(&comfy_quant_bytes(f)).into_owned()),
        })
        .collect();
    for (ft, name) in FileType::ALL.iter().zip(gguf_names()) {
        formats.push(Fmt {
            name,
            container: "gguf",
            scheme: ft.default_type().name().to_string(),
            summary: "llama.cpp recipe (llama-quantize rules); needs a GGUF input".into(),
            default_layout: "gguf",
            layouts: vec!["gguf"],
            writes: Vec::new(),
            comfy_quant: None,
        });
    }
    let report = Report { schema_version: 1, formats };
    if out.json {
        out.print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(vec![
        "fmt",
        "writes (per layer L, default layout)",
        "default layout",
        "layouts",
    ]);
    for f in &report.formats {
        let writes = if f.writes.is_empty() { f.summary.clone() } else { f.writes.join(", ") };
        table.add_row(vec![
            f.name.clone(),
            writes,
            f.default_layout.to_string(),
            f.layouts.join(", "),
        ]);
    }
    out.print(&format!("{table}\n"))?;
    Ok(ExitCode::SUCCESS)
}
