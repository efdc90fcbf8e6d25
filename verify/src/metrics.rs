//! How far a result is from its reference ([`compare`] for the REF check, [`kernel_error`]
//! for the kernel check).
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

/// The kernel check's error: each output's deviation over that output's natural magnitude,
/// `e_ij = |y_ij − r_ij| / s_ij` with `s_ij = ‖x_i‖ · ‖w_j‖ / √k` (the standard deviation of
/// `x_i · w_j` for a random direction; by Cauchy–Schwarz `|r_ij| ≤ √k · s_ij`). Real weights have
/// rows of very different norms, and measured against the whole output's RMS the few largest
/// rows would dominate `max_rel`; per element, a kernel's rounding costs the same on every row.
/// `max_rel` and `mean_rel` are the max and mean of `e_ij`; `rel_fro` is [`compare`]'s. An
/// output whose `s_ij` is 0 (a zero row) counts 0 when it matches and +inf otherwise.
pub fn kernel_error(
    got: &[f32],
    want: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> ErrorStats {
    assert_eq!(got.len(), m * n, "kernel_error: got must be [m, n]");
    let base = compare(got, want);
    if base.is_nan() || got.is_empty() {
        return base;
    }
    let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>().sqrt();
    let xn: Vec<f64> = x.chunks_exact(k.max(1)).map(norm).collect();
    let wn: Vec<f64> = w.chunks_exact(k.max(1)).map(norm).collect();
    let root_k = (k.max(1) as f64).sqrt();
    let (mut max, mut sum) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let d = (f64::from(got[i * n + j]) - f64::from(want[i * n + j])).abs();
            let s = xn[i] * wn[j] / root_k;
            let e = if d == 0.0 {
                0.0
            } else if s == 0.0 {
                f64::INFINITY
            } else {
                d / s
            };
            max = max.max(e);
            sum += e;
        }
    }
    ErrorStats { max_rel: max, mean_rel: sum / (m * n) as f64, rel_fro: base.rel_fro }
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
    fn kernel_error_is_per_output_scale() {
        // Two rows of W with norms 1 and 100; x = [1, 0] so s_i0 = 1/√2, s_i1 = 100/√2.
        let (x, w) = ([1.0f32, 0.0], [1.0f32, 0.0, 0.0, 100.0]);
        let want = [1.0f32, 0.0];
        // The same absolute error of 0.1 on each output: large for row 0, small for row 1.
        let e = kernel_error(&[1.1, 0.1], &want, &x, &w, 1, 2, 2);
        let r2 = 2f64.sqrt();
        assert!((e.max_rel - 0.1 * r2).abs() < 1e-6, "{e:?}");
        assert!((e.mean_rel - (0.1 * r2 + 0.001 * r2) / 2.0).abs() < 1e-6, "{e:?}");
        assert!(kernel_error(&[f32::NAN, 0.0], &want, &x, &w, 1, 2, 2).is_nan());
        // A zero row must give exactly zero.
        let zw = [1.0f32, 0.0, 0.0, 0.0];
        assert_eq!(kernel_error(&[1.0, 0.0], &want, &x, &zw, 1, 2, 2).max_rel, 0.0);
        assert_eq!(kernel_error(&[1.0, 0.5], &want, &x, &zw, 1, 2, 2).max_rel, f64::INFINITY);
    }

    #[test]
    fn zero_reference() {
        assert_eq!(compare(&[0.0; 3], &[0.0; 3]).rel_fro, 0.0);
        assert_eq!(compare(&[0.0, 1.0, 0.0], &[0.0; 3]).max_rel, f64::INFINITY);
    }
}
