//! `qtool convert`: a Hugging Face llama-family directory to GGUF (`--fmt`), or a GGUF file to a
//! Hugging Face directory (`--dtype`); the direction follows from the input.

use std::process::ExitCode;

use qtool_quantizers::convert::{convert, ConvertOptions, ConvertSummary, Direction, HfDType};
use serde::Serialize;

use crate::args::ConvertArgs;
use crate::output::Output;
use crate::progress::count_bar;

#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    direction: &'static str,
    arch: &'a str,
    files: Vec<String>,
    tensors: Vec<TensorRow<'a>>,
}

#[derive(Serialize)]
struct TensorRow<'a> {
    source_name: &'a str,
    name: &'a str,
    from: &'a str,
    to: &'a str,
    shape: &'a [u64],
    permuted: bool,
}

pub fn run(args: &ConvertArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let dtype = match &args.dtype {
        None => None,
        Some(name) => Some(
            HfDType::from_name(name)
                .ok_or_else(|| anyhow::anyhow!("--dtype {name}: expected one of f32, f16, bf16"))?,
        ),
    };
    let opts = ConvertOptions { fmt: args.fmt.clone(), dtype };
    let bar = count_bar(out, "converting");
    let summary = convert(&args.input, &args.output, &opts, &mut |i, n, name| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    report(&summary, out)?;
    Ok(ExitCode::SUCCESS)
}

fn report(summary: &ConvertSummary, out: &Output) -> anyhow::Result<()> {
    let direction = match summary.direction {
        Direction::GgufToHf => "gguf-to-hf",
        Direction::HfToGguf => "hf-to-gguf",
    };
    let files: Vec<String> = summary.files.iter().map(|p| p.display().to_string()).collect();
    if out.json {
        let tensors = summary
            .tensors
            .iter()
            .map(|t| TensorRow {
                source_name: &t.source_name,
                name: &t.name,
                from: &t.from,
                to: &t.to,
                shape: &t.shape,
                permuted: t.permuted,
            })
            .collect();
        return out.print_json(&Report {
            schema_version: 1,
            direction,
            arch: &summary.arch,
            files,
            tensors,
        });
    }
    let permuted = summary.tensors.iter().filter(|t| t.permuted).count();
    let mut text = format!(
        "converted {} tensors ({}, {direction}; {permuted} q/k tensors re-permuted)\n",
        summary.tensors.len(),
        summary.arch
    );
    for f in files {
        text.push_str(&format!("wrote {f}\n"));
    }
    out.print(&text)
}
