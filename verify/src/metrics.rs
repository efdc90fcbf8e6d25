//! How far a result is from its reference.
//!
//! Element-wise relative error `|y − r| / |r|` explodes wherever an output happens to be near
//! zero, which a GEMM with zero-mean activations produces all the time. So errors are measured
//! against the reference's RMS over the whole `[m, n]` output: `max_rel = max |y − r| / rms(r)`,
//! `mean_rel = mean |y − r| / rms(r)`. `rel_fro = ‖y − r‖ / ‖r‖` (the RMS error over the RMS
//! output) is what the REF check compares, since it is the quantity quantization noise adds up
//! to. Sums run in `f64` in element order (deterministic).

use serde::Serialize;

/// Error of one result against one reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ErrorStats {
    pub max_rel: f64,
    pub mean_rel: f64,
    pub rel_fro: f64,
}

impl ErrorStats {
    /// Whether any statistic is NaN (a NaN/inf in the result).
    pub fn is_nan(&self) -> bool {
        self.max_rel.is_nan() || self.mean_rel.is_nan() || self.rel_fro.is_nan()
    }
}

/// Compares `got` with `want` (same length). A non-finite `got` element makes every statistic
/// NaN, so no tolerance can pass it; an all-zero reference gives 0 when `got` is all zero too
/// and +inf otherwise.
pub fn compare(got: &[f32], want: &[f32]) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "compare: lengths differ");
    let nan = ErrorStats { max_rel: f64::NAN, mean_rel: f64::NAN, rel_fro: f64::NAN };
    if got.is_empty() {
        return ErrorStats { max_rel: 0.0, mean_rel: 0.0, rel_fro: 0.0 };
    }
    let (mut sq_ref, mut sq_err, mut sum_abs, mut max_abs) = (0f64, 0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() || !w.is_finite() {
            return nan;
        }
        let (g, w) = (f64::from(g), f64::from(w));
        let e = (g - w).abs();
        sq_ref += w * w;
        sq_err += e * e;
        sum_abs += e;
        max_abs = max_abs.max(e);
    }
    let len = got.len() as f64;
    let rms = (sq_ref / len).sqrt();
    if rms == 0.0 {
        let v = if max_abs == 0.0 { 0.0 } else { f64::INFINITY };
        return ErrorStats { max_rel: v, mean_rel: v, rel_fro: v };
    }
    ErrorStats {
        max_rel: max_abs / rms,
        mean_rel: sum_abs / len / rms,
        rel_fro: (sq_err / sq_ref).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_hand() {
        // rms(want) = sqrt((9 + 16) / 2) = sqrt(12.5); errors 1 and 0.
        let s = compare(&[4.0, 4.0], &[3.0, 4.0]);
        let rms = 12.5f64.sqrt();
        assert!((s.max_rel - 1.0 / rms).abs() < 1e-12);
        assert!((s.mean_rel - 0.5 / rms).abs() < 1e-12);
        assert!((s.rel_fro - (1.0f64 / 25.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn identical_is_zero_and_nan_poisons() {
        assert_eq!(compare(&[1.0, -2.0], &[1.0, -2.0]).max_rel, 0.0);
        assert!(compare(&[f32::NAN, 0.0], &[1.0, 0.0]).is_nan());
        assert!(compare(&[f32::INFINITY, 0.0], &[1.0, 0.0]).is_nan());
    }

    #[test]
    fn zero_reference() {
        assert_eq!(compare(&[0.0; 3], &[0.0; 3]).rel_fro, 0.0);
        assert_eq!(compare(&[0.0, 1.0, 0.0], &[0.0; 3]).max_rel, f64::INFINITY);
    }
}
