//! `qtool`: parse the command line, run one subcommand, turn its outcome into an exit code.
//!
//! Exit codes: 0 success; 1 the command ran and found a failure; 2 bad input or usage, with
//! exactly one `error: ...` line on stderr. Panics are bugs: the hook reports them as one
//! `error: internal error: ...` line and exits 101 instead of printing a backtrace.

mod args;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::output::{one_line, Output};

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        let at =
            info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {}{at}", one_line(&msg));
        std::process::exit(101);
    }));

    // clap prints its own usage errors and exits 2 (0 for --help/--version).
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&error_message(&e)));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.get())
            .build_global()
            .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))?;
    }
    let out = Output { json: cli.json, quiet: cli.quiet };
    match cli.command {
        Command::Inspect(args) => commands::inspect::run(&args, &out),
        Command::GpuInfo => commands::gpu_info::run(&out),
        Command::Repack(args) => commands::repack::run(&args, &out),
        Command::Quantize(args) => commands::quantize::run(&args, &out),
        Command::Formats => commands::formats::run(&out),
        Command::Convert(args) => commands::convert::run(&args, &out),
        Command::Diff(args) => commands::diff::run(&args, &out),
        Command::Verify(args) => commands::verify::run(&args, &out),
        Command::Eval(args) => commands::eval::run(&args, &out),
    }
}

/// The error and its causes in one message, leaving out causes whose text the message already
/// quotes (qtool's format errors embed their I/O cause, so `{:#}` would say it twice).
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    msg
}
