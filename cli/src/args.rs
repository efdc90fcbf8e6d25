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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a checkpoint's tensors, metadata and quantization scheme.
    Inspect(InspectArgs),
    /// Report the CUDA driver, NVRTC and GPUs qtool can use (always exits 0).
    GpuInfo,
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
