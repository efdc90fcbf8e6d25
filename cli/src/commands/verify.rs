//! `qtool verify` (being built: owner fills in the arguments and the run).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::output::Output;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The checkpoint.
    pub input: PathBuf,
}

pub fn run(args: &VerifyArgs, _out: &Output) -> anyhow::Result<ExitCode> {
    anyhow::bail!("{}: qtool verify is not available in this build", args.input.display())
}
