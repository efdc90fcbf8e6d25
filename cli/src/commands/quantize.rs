//! `qtool quantize IN -o OUT --fmt FMT [--layout L] [--ignore RE]... [--include RE]...
//! [--dry-run]`: safetensors inputs with the FP8/FP4 names go through
//! `qtool_quantizers::export`; GGUF inputs with a GGUF type or recipe name go through the
//! llama.cpp-compatible requantizer in `qtool_quantizers::recipe`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use qtool_formats::conventions::{detect_scheme, Scheme as Detected};
use qtool_formats::GgmlType;
use qtool_formats::{Checkpoint, PlannedTensor};
use qtool_quantizers::export::{
    self, output, Action, FmtSpec, IntOptions, Layout, QuantizePlan, Request,
};
use qtool_quantizers::recipe::gguf::parse_target_type;
use qtool_quantizers::recipe::{self, FileType, FileTypeError, RecipeOptions, TensorTypeOverride};
use serde::Serialize;

use crate::args::QuantizeArgs;
use crate::output::{human_bytes, Output};
use crate::progress::bytes_bar;

/// `--json` output, `schema_version` 1.
#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    input: String,
    output: String,
    fmt: String,
    layout: String,
    scheme: String,
    dry_run: bool,
    /// Files written (empty for a dry run).
    files: Vec<String>,
    tensors: Vec<Entry>,
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    /// `quantize`, `copy` or `add` (a tensor the layout adds, e.g. the legacy marker).
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    outputs: Vec<Part>,
}

#[derive(Debug, Serialize)]
struct Part {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Summary {
    tensors: usize,
    quantized: usize,
    copied: usize,
    bytes_in: u64,
    bytes_out: u64,
}

pub fn run(args: &QuantizeArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if let Some(code) = super::quantize_calibrated::dispatch(args, out)? {
        return Ok(code);
    }
    if let Some(spec) = export::lookup(&args.fmt) {
        return run_safetensors(args, spec, out);
    }
    match FileType::from_name(&args.fmt) {
        Ok(ft) => run_gguf(args, ft, out),
        Err(e @ FileTypeError::Refused { .. }) => bail!("--fmt {}: {e}", args.fmt),
        Err(FileTypeError::Unknown { .. }) => bail!(
            "unknown --fmt {:?}; valid names: {}; GGUF types/recipes (GGUF input): {}",
            args.fmt,
            export::FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", "),
            gguf_names().join(", ")
        ),
    }
}

/// The GGUF names, lower case as users type them.
pub fn gguf_names() -> Vec<String> {
    FileType::ALL.iter().map(|t| t.name().to_ascii_lowercase()).collect()
}

fn parse_layout(name: &str) -> anyhow::Result<Layout> {
    Layout::from_name(name).ok_or_else(|| {
        let known: Vec<_> = Layout::ALL.iter().map(|l| l.name()).collect();
        anyhow!(
            "unknown --layout {name:?}; safetensors layouts: {}; GGUF types use gguf",
            known.join(", ")
        )
    })
}

fn run_safetensors(
    args: &QuantizeArgs,
    spec: &'static FmtSpec,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    if let Some(flag) = gguf_only_flag(args) {
        bail!("{flag} applies to GGUF types and recipes; --fmt {} writes safetensors", spec.name);
    }
    let layout = match args.layout.as_deref() {
        None => None,
        Some("gguf") => bail!(
            "--fmt {} writes safetensors; --layout gguf is for GGUF types such as q8_0",
            spec.name
        ),
        Some(name) => Some(parse_layout(name)?),
    };
    let int_opts = IntOptions {
        group_size: args.group_size,
        symmetric: match (args.sym, args.asym) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        gptq_v2: args.gptq_format.as_deref() == Some("v2"),
    };
    let req = Request::new(spec, layout, &args.ignore, &args.include, args.allow_nonfinite)?
        .with_int_options(&int_opts)?;
    let ckpt = qtool_formats::open(&args.input)?;
    if let Checkpoint::Gguf { .. } = ckpt {
        bail!(
            "{}: the input is GGUF; --fmt {} writes safetensors (GGUF inputs take GGUF types such as q8_0 or q4_k_m)",
            args.input.display(),
            spec.name
        );
    }
    match detect_scheme(&ckpt)? {
        Some(Detected::Unquantized) => {}
        Some(scheme) => bail!(
            "{}: the checkpoint is already quantized ({scheme}); quantize starts from unquantized weights",
            args.input.display()
        ),
        None => bail!(
            "{}: the weights are not plain floats and carry no quantization marker qtool knows; cannot quantize",
            args.input.display()
        ),
    }
    let plan = export::plan(ckpt.source(), &req)?;
    output::check_target(&ckpt, &plan, &args.output)?;

    let files = if args.dry_run {
        Vec::new()
    } else {
        let total: u64 = plan.entries.iter().map(|e| e.bytes_in).sum();
        let bar = bytes_bar(out, total, "quantize");
        let written = output::write(&ckpt, &plan, &args.output, &mut |e| bar.inc(e.bytes_in))?;
        bar.finish_and_clear();
        written
    };
    let report = build_report(args, &plan, files);
    if out.json {
        out.print_json(&report)?;
    } else {
        out.print(&render_text(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn part(t: &PlannedTensor) -> Part {
    Part { name: t.name.clone(), dtype: t.dtype.name(), shape: t.shape.clone(), bytes: t.nbytes }
}

fn build_report(
    args: &QuantizeArgs,
    plan: &QuantizePlan,
    files: Vec<std::path::PathBuf>,
) -> Report {
    let tensors: Vec<Entry> = plan
        .entries
        .iter()
        .map(|e| Entry {
            name: e.name.clone(),
            action: match e.action {
                Action::Copy => "copy",
                Action::Quantize(_) => "quantize",
                Action::Marker(_) => "add",
            },
            note: e.note.clone(),
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out(),
            outputs: e.outputs.iter().map(part).collect(),
        })
        .collect();
    let quantized = tensors.iter().filter(|t| t.action == "quantize").count();
    let summary = Summary {
        tensors: tensors.len(),
        quantized,
        copied: tensors.iter().filter(|t| t.action == "copy").count(),
        bytes_in: tensors.iter().map(|t| t.bytes_in).sum(),
        bytes_out: tensors.iter().map(|t| t.bytes_out).sum(),
    };
    Report {
        schema_version: 1,
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        fmt: plan.fmt.name.to_string(),
        layout: plan.layout.name().to_string(),
        scheme: plan.fmt.scheme.name().to_string(),
        dry_run: args.dry_run,
        files: files.iter().map(|p| p.display().to_string()).collect(),
        tensors,
        summary,
    }
}

fn render_text(r: &Report) -> String {
    let mut text = String::new();
    if r.dry_run {
        let mut table = Table::new();
        table
            .load_style(presets::ASCII_MARKDOWN)
            .set_content_arrangement(ContentArrangement::Disabled);
        table.set_header(vec!["tensor", "action", "writes", "bytes in", "bytes out", "note"]);
        for t in &r.tensors {
            let writes = t
                .outputs
                .iter()
                .map(|p| format!("{} {}", p.name.rsplit('.').next().unwrap_or(&p.name), p.dtype))
                .collect::<Vec<_>>()
                .join(", ");
            table.add_row(vec![
                t.name.clone(),
                t.action.to_string(),
                writes,
                t.bytes_in.to_string(),
                t.bytes_out.to_string(),
                t.note.clone().unwrap_or_default(),
            ]);
        }
        for i in [3, 4] {
            if let Some(col) = table.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        text.push_str(&format!("{table}\n\n"));
    }
    let s = &r.summary;
    text.push_str(&format!(
        "{} {} -> {} as {} (layout {}): {} of {} tensors quantized, {} -> {}\n",
        if r.dry_run { "plan:" } else { "quantized" },
        r.input,
        r.output,
        r.fmt,
        r.layout,
        s.quantized,
        s.tensors,
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out),
    ));
    if !r.dry_run {
        for t in r.tensors.iter().filter(|t| t.note.is_some()) {
            text.push_str(&format!("kept {}: {}\n", t.name, t.note.as_deref().unwrap_or("")));
        }
        for f in &r.files {
            text.push_str(&format!("wrote {f}\n"));
        }
    }
    text
}

/// `GGUF input + GGUF type/recipe`: the llama.cpp-compatible requantizer.
fn run_gguf(args: &QuantizeArgs, ft: FileType, out: &Output) -> anyhow::Result<ExitCode> {
    if let Some(l) = args.layout.as_deref().filter(|l| *l != "gguf") {
        bail!(
            "--fmt {} writes GGUF; --layout {l} does not apply (use gguf or leave it out)",
            args.fmt
        );
    }
    if !args.ignore.is_empty() || !args.include.is_empty() {
        bail!("--ignore/--include apply to safetensors formats; GGUF recipes follow llama.cpp's per-tensor rules");
    }
    if args.group_size.is_some() || args.sym || args.asym || args.gptq_format.is_some() {
        bail!("--group-size, --sym/--asym and --gptq-format apply to w4a16 and w8a16 only");
    }
    let opts = gguf_recipe_options(args)?;
    let ckpt = qtool_formats::open(&args.input)?;
    let Checkpoint::Gguf { file, .. } = &ckpt else {
        bail!(
            "{}: --fmt {} needs a GGUF input (convert the safetensors checkpoint to GGUF first)",
            args.input.display(),
            args.fmt
        );
    };
    let plan = recipe::prepare(file, ft, &opts)?;
    let files = if args.dry_run {
        Vec::new()
    } else {
        if !is_gguf_path(&args.output) {
            bail!("{}: a GGUF output needs a .gguf file name", args.output.display());
        }
        let total: u64 = plan.recipe.tensors.iter().map(|t| t.bytes_in()).sum();
        let bar = bytes_bar(out, total, "quantize");
        let path = recipe::requantize_to_path(
            file,
            &plan,
            args.allow_requantize,
            &args.output,
            &mut |_, t| bar.inc(t.bytes_in()),
        )?;
        bar.finish_and_clear();
        vec![path]
    };
    let tensors: Vec<Entry> = plan
        .recipe
        .tensors
        .iter()
        .map(|t| Entry {
            name: t.name.clone(),
            action: if t.from == t.to { "copy" } else { "quantize" },
            note: None,
            bytes_in: t.bytes_in(),
            bytes_out: t.bytes_out(),
            outputs: vec![Part {
                name: t.name.clone(),
                dtype: t.to.name(),
                shape: t.ne.clone(),
                bytes: t.bytes_out(),
            }],
        })
        .collect();
    let summary = Summary {
        tensors: tensors.len(),
        quantized: tensors.iter().filter(|t| t.action == "quantize").count(),
        copied: tensors.iter().filter(|t| t.action == "copy").count(),
        bytes_in: tensors.iter().map(|t| t.bytes_in).sum(),
        bytes_out: tensors.iter().map(|t| t.bytes_out).sum(),
    };
    let report = Report {
        schema_version: 1,
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        fmt: ft.name().to_string(),
        layout: "gguf".into(),
        scheme: ft.name().to_string(),
        dry_run: args.dry_run,
        files: files.iter().map(|p| p.display().to_string()).collect(),
        tensors,
        summary,
    };
    if out.json {
        out.print_json(&report)?;
    } else if args.dry_run {
        let mut text = recipe::log::plan_lines(&plan.recipe, false).join("\n");
        text.push('\n');
        out.print(&text)?;
    } else {
        out.print(&render_text(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--tensor-type`, `--output-tensor-type`, `--token-embedding-type` and `--pure`, checked
/// before the input is opened so that a typo costs nothing.
fn gguf_recipe_options(args: &QuantizeArgs) -> anyhow::Result<RecipeOptions> {
    let ty = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<GgmlType>> {
        v.as_deref()
            .map(|name| parse_target_type(name).map_err(|e| anyhow!("--{flag} {name:?}: {e}")))
            .transpose()
    };
    Ok(RecipeOptions {
        tensor_types: args
            .tensor_type
            .iter()
            .map(|spec| TensorTypeOverride::parse(spec))
            .collect::<Result<_, _>>()?,
        output_tensor_type: ty("output-tensor-type", &args.output_tensor_type)?,
        token_embedding_type: ty("token-embedding-type", &args.token_embedding_type)?,
        pure: args.pure,
        leave_output_tensor: false,
    })
}

/// The GGUF-only flags, refused for safetensors formats rather than silently ignored.
fn gguf_only_flag(args: &QuantizeArgs) -> Option<&'static str> {
    if !args.tensor_type.is_empty() {
        Some("--tensor-type")
    } else if args.output_tensor_type.is_some() {
        Some("--output-tensor-type")
    } else if args.token_embedding_type.is_some() {
        Some("--token-embedding-type")
    } else if args.pure {
        Some("--pure")
    } else {
        None
    }
}

fn is_gguf_path(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
