//! `qtool eval`: perplexity of a checkpoint on a text file with the layer-streaming forward
//! engine (`qtool_calib::eval` documents the protocol).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use qtool_calib::engine::Model;
use qtool_calib::eval::{perplexity, perplexity_gpu, PplOptions};
use qtool_calib::tokenizer::Tokenizer;
use serde::Serialize;

use crate::output::Output;
use crate::progress::count_bar;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint: a Hugging Face directory, a .safetensors file with config.json beside
    /// it, or a .gguf file (any dtype or quantization qtool reads).
    pub input: PathBuf,
    /// UTF-8 text whose perplexity is measured (tokenized without BOS).
    #[arg(long, value_name = "FILE")]
    pub ppl: PathBuf,
    /// Tokens per window; windows do not overlap and the first token of each is not scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N windows.
    #[arg(long, value_name = "N")]
    pub max_windows: Option<usize>,
    /// Where the forward pass runs: `auto` uses GPU 0 when one is usable, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    model: String,
    text: String,
    arch: &'a str,
    device: &'static str,
    ppl: f64,
    nll: f64,
    tokens: u64,
    windows: usize,
    ctx: usize,
    text_tokens: usize,
    seconds: f64,
    tokens_per_second: f64,
}

pub fn run(args: &EvalArgs, out: &Output) -> anyhow::Result<ExitCode> {
    // `cuda` must have a GPU; `auto` takes one when there is one, quietly runs on the CPU on a
    // machine without one, and says why in one line when a GPU is there but unusable.
    let gpu = match args.device {
        Device::Cpu => None,
        Device::Cuda => {
            Some(qtool_kernels::Gpu::open(0).map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?)
        }
        Device::Auto => match qtool_kernels::Gpu::open(0) {
            Ok(g) => Some(g),
            Err(e) => {
                if !e.is_no_gpu() && !out.quiet && !out.json {
                    eprintln!("qtool: eval runs on the CPU ({e})");
                }
                None
            }
        },
    };
    let device = if gpu.is_some() { "cuda" } else { "cpu" };
    let model = Model::open(&args.input)?;
    let tokenizer = Tokenizer::for_model(&model)?;
    let bytes =
        std::fs::read(&args.ppl).map_err(|e| anyhow::anyhow!("{}: {e}", args.ppl.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (byte {})",
            args.ppl.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let tokens = tokenizer.encode(&text)?;
    if tokens.len() < args.ctx {
        anyhow::bail!(
            "{}: the text has {} tokens, fewer than one window of --ctx {}",
            args.ppl.display(),
            tokens.len(),
            args.ctx
        );
    }
    let opts = PplOptions { ctx: args.ctx, max_windows: args.max_windows, ..PplOptions::default() };
    let bar = count_bar(out, "eval");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = match &gpu {
        Some(g) => perplexity_gpu(&model, &tokens, &opts, g, &mut progress)?,
        None => perplexity(&model, &tokens, &opts, &mut progress)?,
    };
    bar.finish_and_clear();
    let cfg = model.config();
    if out.json {
        out.print_json(&Report {
            schema_version: 1,
            model: args.input.display().to_string(),
            text: args.ppl.display().to_string(),
            arch: cfg.arch,
            device,
            ppl: report.ppl,
            nll: report.nll,
            tokens: report.tokens,
            windows: report.windows,
            ctx: report.ctx,
            text_tokens: report.text_tokens,
            seconds: report.seconds,
            tokens_per_second: report.tokens_per_second,
        })?;
    } else {
        out.print(&format!(
            "perplexity {:.4} (nll {:.5} nats/token) over {} tokens: {} windows of {}, {} text tokens; {:.1} s, {:.0} tokens/s ({})\n",
            report.ppl,
            report.nll,
            report.tokens,
            report.windows,
            report.ctx,
            report.text_tokens,
            report.seconds,
            report.tokens_per_second,
            device
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
