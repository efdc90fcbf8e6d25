//! Errors of the calibrated quantizers. Each names the quantity that was wrong so the pipeline
//! can prefix the layer name and print one `error:` line.

use crate::int::IntError;

pub type PtqResult<T> = std::result::Result<T, PtqError>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PtqError {
    #[error(transparent)]
    Int(#[from] IntError),

    #[error("{what}: expected {expected} values, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },

    #[error("{what}[{index}] is not finite ({value})")]
    NonFinite { what: &'static str, index: usize, value: f64 },

    #[error("no calibration tokens were accumulated (the statistics are empty)")]
    NoTokens,

    #[error("invalid setting: {0}")]
    Config(String),
}

/// Checks `got == expected` for a named buffer.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> PtqResult<()> {
    if expected != got {
        return Err(PtqError::Length { what, expected, got });
    }
    Ok(())
}

/// The first non-finite value of a buffer, as an error naming it.
pub(crate) fn check_finite<T: Copy + Into<f64>>(what: &'static str, v: &[T]) -> PtqResult<()> {
    for (index, &x) in v.iter().enumerate() {
        let x: f64 = x.into();
        if !x.is_finite() {
            return Err(PtqError::NonFinite { what, index, value: x });
        }
    }
    Ok(())
}
