//! The command line, as clap parses it. Global flags may be given before or after the
//! subcommand (`qtool --json inspect x` and `qtool inspect x --json` are the same).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Prepare model checkpoints (safetensors, GGUF) for fast inference.
#[derive(Debug, Parser)]
#[command(name = "qtool", version, about, propagate_version = true)]
pub struct Cli {
    /// Worker threads for parallel work (default: one per CPU core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<NonZeroUsize>,

    /// Print nothing on stderr but errors (no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a checkpoint's tensors, metadata and quantization scheme.
    Inspect(InspectArgs),
    /// Quantize a checkpoint: FP8/FP4/MX and INT4/INT8 (RTN, GPTQ, AWQ) for safetensors, GGUF
    /// types and recipes for GGUF.
    Quantize(QuantizeArgs),
    /// List every --fmt name quantize accepts and what each one writes.
    Formats,
    /// Convert a Hugging Face llama-family directory to GGUF, or a GGUF file to a Hugging Face
    /// directory (tensors, hyper-parameters and tokenizer).
    Convert(ConvertArgs),
    /// Report the CUDA driver, NVRTC and GPUs qtool can use (always exits 0).
    GpuInfo,
    /// Move an INT4/INT8 checkpoint (GPTQ, AWQ, compressed-tensors) to another layout or to
    /// vLLM's legacy Marlin checkpoint, losslessly or not at all.
    Repack(RepackArgs),
    /// Per-tensor error of a candidate checkpoint against a reference (SQNR, cosine, bits per
    /// weight), tensors matched across containers and layouts.
    Diff(DiffArgs),
    /// Run the real GPU kernels for each quantized layer on the stored bytes and compare with
    /// an FP32 reference (and with the original weights given by --ref).
    Verify(crate::commands::verify::VerifyArgs),
    /// Perplexity of a llama-family checkpoint on a text file, with qtool's own forward engine.
    Eval(crate::commands::eval::EvalArgs),
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a .gguf
    /// file.
    pub input: PathBuf,

    /// The output: a .gguf file (from a directory) or a new directory (from a GGUF file).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// HF -> GGUF: f32, f16 (default), bf16, q8_0, a llama.cpp recipe (q4_k_m, q5_k_m, ...) or a
    /// GGML type applied to every quantizable tensor.
    #[arg(long, value_name = "FMT")]
    pub fmt: Option<String>,

    /// GGUF -> HF: f32, f16 or bf16 (default: lossless for the source).
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .safetensors file, a .gguf file, or a directory of safetensors shards.
    pub path: PathBuf,

    /// Also decode every tensor and report min, max, absmax, mean, std and NaN/Inf counts.
    #[arg(long)]
    pub stats: bool,

    /// Only tensors whose name matches this regular expression (searched anywhere in the name;
    /// anchor with ^...$). The summary then covers the selected tensors only.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The input: a .safetensors file, a directory of shards, or a .gguf file.
    pub input: PathBuf,

    /// The output: a .safetensors file, a directory (mirrors the input), or a .gguf file.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// What to write (`qtool formats` lists every name).
    #[arg(long, value_name = "FMT")]
    pub fmt: String,

    /// Checkpoint layout: comfy, comfy-legacy, compressed-tensors, modelopt, gptq, awq (default
    /// per FMT).
    #[arg(long, value_name = "L")]
    pub layout: Option<String>,

    /// Leave tensors whose name matches this regular expression unquantized (repeatable; wins
    /// over --include).
    #[arg(long, value_name = "REGEX")]
    pub ignore: Vec<String>,

    /// Quantize 2-D weights matching this regular expression even where convention keeps them
    /// (embeddings, lm_head, norms) (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub include: Vec<String>,

    /// Print the plan (tensor, action, bytes in/out) and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Quantize NaN/Inf weights (saturated; NaN to the format's NaN) instead of refusing.
    #[arg(long)]
    pub allow_nonfinite: bool,

    /// GGUF only: allow requantizing tensors that are already quantized.
    #[arg(long)]
    pub allow_requantize: bool,

    /// GGUF only: give tensors whose name matches REGEX (searched anywhere in the name) the
    /// GGML type TYPE instead of the recipe's choice, as llama-quantize's --tensor-type does
    /// (repeatable; the first matching pattern wins).
    #[arg(long, value_name = "REGEX=TYPE")]
    pub tensor_type: Vec<String>,

    /// GGUF only: the GGML type of output.weight (and of a tied token_embd.weight).
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<String>,

    /// GGUF only: the GGML type of token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<String>,

    /// GGUF only: every quantizable tensor gets the recipe's default type (no per-tensor
    /// rules; shape fallbacks still apply).
    #[arg(long)]
    pub pure: bool,

    /// w4a16/w8a16: how weights are rounded — rtn (round-to-nearest with the layout's own
    /// scale/zero formula), gptq or awq (calibrated, llama-family checkpoints; docs/ptq.md).
    #[arg(long, value_name = "METHOD", value_parser = ["rtn", "gptq", "awq"], default_value = "rtn")]
    pub method: String,

    /// gptq/awq: calibration text, plain UTF-8 or JSON Lines with a "text" field (default:
    /// the built-in text, docs/ptq.md).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,

    /// gptq/awq: calibration windows.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub calib_samples: usize,

    /// gptq/awq: tokens per calibration window.
    #[arg(long, value_name = "L", default_value_t = 512)]
    pub calib_seqlen: usize,

    /// gptq: dampening, as a fraction of the Hessian's mean diagonal.
    #[arg(long, value_name = "F", default_value_t = 0.01)]
    pub damp: f64,

    /// gptq: quantize columns in decreasing Hessian diagonal order (static groups, so no
    /// g_idx reordering is needed at inference).
    #[arg(long)]
    pub act_order: bool,

    /// gptq/awq: continue an interrupted run from the state beside OUT.
    #[arg(long)]
    pub resume: bool,

    /// gptq/awq: where the calibration pipeline runs: auto (the GPU when one is usable, else the
    /// CPU), cuda (no usable GPU is an error) or cpu. On the GPU: forward passes, statistics,
    /// GPTQ's solve, AWQ's error evaluations and the per-layer log.
    #[arg(long, value_name = "DEV", default_value = "auto", value_parser = ["auto", "cuda", "cpu"])]
    pub device: String,

    /// w4a16/w8a16: columns per scale (32, 64, 128, ... or -1 for one per output channel;
    /// default 128).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub group_size: Option<i64>,

    /// w4a16/w8a16: symmetric codes, no zero points (the default except for awq).
    #[arg(long, conflicts_with = "asym")]
    pub sym: bool,

    /// w4a16/w8a16: asymmetric codes with zero points (awq is asymmetric only).
    #[arg(long)]
    pub asym: bool,

    /// --layout gptq: v1 (AutoGPTQ, zeros stored as zero-1; default) or v2 (true zeros).
    #[arg(long, value_name = "V", value_parser = ["v1", "v2"])]
    pub gptq_format: Option<String>,
}

#[derive(Debug, Args)]
pub struct RepackArgs {
    /// A GPTQ, AWQ (GEMM) or compressed-tensors pack-quantized checkpoint directory.
    pub input: PathBuf,

    /// The output directory (created; must not exist or be empty).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// The layout to write: marlin (vLLM legacy B/s), gptq, awq or compressed-tensors.
    #[arg(long, value_name = "T", value_parser = ["marlin", "gptq", "awq", "compressed-tensors"])]
    pub target: String,

    /// Tensor-parallel sizes the Marlin output must load on (each layer is checked split
    /// column- or row-parallel as vLLM splits it), e.g. 1,2,4,8 (default 1).
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_value = "1")]
    pub tp: Vec<usize>,

    /// --target gptq: v1 (zeros stored as zero-1; default) or v2 (true zeros).
    #[arg(long, value_name = "V", value_parser = ["v1", "v2"])]
    pub gptq_format: Option<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The reference checkpoint (.safetensors, .gguf or a directory of shards). Optional when
    /// --calib is given.
    #[arg(value_name = "REF", required_unless_present = "calib", requires = "candidate")]
    pub reference: Option<PathBuf>,

    /// The candidate, usually a quantized version of REF, in any layout qtool reads.
    #[arg(value_name = "CAND", required_unless_present = "calib")]
    pub candidate: Option<PathBuf>,

    /// Show only the N tensors with the lowest SQNR, worst first (with --calib: also the N
    /// layers with the highest method/RTN error ratio, worst first).
    #[arg(long, value_name = "N")]
    pub worst: Option<usize>,

    /// Only tensors (and --calib layers) whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Also write an SVG chart of SQNR per layer, one line per tensor role (needs REF CAND).
    #[arg(long, value_name = "FILE.svg", requires = "reference")]
    pub plot: Option<PathBuf>,

    /// Exit 1 if any compared tensor has an SQNR below DB (or NaN), or could not be compared
    /// (needs REF CAND).
    #[arg(long, value_name = "DB", allow_negative_numbers = true, requires = "reference")]
    pub fail_below_sqnr: Option<f64>,

    /// Show the per-layer log of a GPTQ/AWQ run (the OUT.calib.json that `qtool quantize
    /// --method gptq|awq` writes): output-space error of RTN and of the method per linear.
    /// Alone, or after the REF CAND table.
    #[arg(long, value_name = "LOG.json")]
    pub calib: Option<PathBuf>,
}
