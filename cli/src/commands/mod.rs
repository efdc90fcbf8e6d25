//! One module per subcommand; each takes its parsed arguments and the output settings and
//! returns the exit code (errors become `error:` lines in `main`).

pub mod convert;
pub mod diff;
pub mod eval;
pub mod formats;
pub mod gpu_info;
pub mod inspect;
pub mod quantize;
pub mod quantize_calibrated;
pub mod repack;
pub mod stats;
pub mod verify;
