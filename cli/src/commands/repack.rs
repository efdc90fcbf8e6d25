//! `qtool repack IN -o OUT --target marlin|gptq|awq|compressed-tensors [--tp 1,2,4,8]`: an
//! integer checkpoint moved to another layout through `qtool_quantizers::export::repack`, after
//! every layer passed the target's rules (refusals name the tensor and the rule).

use std::process::ExitCode;

use anyhow::bail;
use qtool_formats::Checkpoint;
use qtool_quantizers::export::repack::{self, RepackAction, Target};
use qtool_quantizers::int::GptqZeros;
use serde::Serialize;

use crate::args::RepackArgs;
use crate::output::Output;

/// `--json` output, `schema_version` 1.
#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    input: String,
    output: String,
    source: &'static str,
    target: &'static str,
    bits: u32,
    group_size: i64,
    symmetric: bool,
    tp: Vec<usize>,
    layers: usize,
    copied: usize,
    files: Vec<String>,
}

pub fn run(args: &RepackArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let target = match args.target.as_str() {
        "marlin" => Target::Marlin,
        "gptq" => Target::Gptq(if args.gptq_format.as_deref() == Some("v2") {
            GptqZeros::V2
        } else {
            GptqZeros::V1
        }),
        "awq" => Target::Awq,
        _ => Target::CompressedTensors,
    };
    if args.gptq_format.is_some() && !matches!(target, Target::Gptq(_)) {
        bail!("--gptq-format applies to --target gptq, not {}", target.name());
    }
    if target != Target::Marlin && args.tp != [1] {
        bail!("--tp applies to --target marlin (the other layouts have no per-rank shape rules)");
    }
    let ckpt = qtool_formats::open(&args.input)?;
    if let Checkpoint::Gguf { .. } = ckpt {
        bail!("{}: repack reads safetensors integer checkpoints, not GGUF", args.input.display());
    }
    let source = repack::source_info(&ckpt)?;
    let plan = repack::plan(&ckpt, source, target, &args.tp)?;
    let files = repack::write(&ckpt, &plan, &args.output)?;
    let report = Report {
        schema_version: 1,
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        source: source.layout.name(),
        target: target.name(),
        bits: source.bits.get(),
        group_size: source.group_size.to_i64(),
        symmetric: source.symmetric,
        tp: args.tp.clone(),
        layers: plan.layers(),
        copied: plan.entries.iter().filter(|e| matches!(e.action, RepackAction::Copy(_))).count(),
        files: files.iter().map(|p| p.display().to_string()).collect(),
    };
    if out.json {
        out.print_json(&report)?;
    } else {
        let mut text = format!(
            "repacked {} -> {} ({} -> {}, {}-bit, group {}): {} layers, {} tensors copied\n",
            report.input,
            report.output,
            report.source,
            report.target,
            report.bits,
            report.group_size,
            report.layers,
            report.copied
        );
        for f in &report.files {
            text.push_str(&format!("wrote {f}\n"));
        }
        out.print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}
