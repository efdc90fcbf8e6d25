//! `--ref` for AWQ checkpoints. AWQ multiplies a linear's input channels by scales `c` and folds
//! `1/c` into the op before it (the RMSNorm gain, or the output rows of `up_proj`/`v_proj`), so
//! the stored layer is `diag(r) · W · diag(c)` quantized, not `W`: the model computes the same
//! function, but the layer alone is not comparable with REF's. This estimates `r` and `c` from
//! the two weights (alternating row/column norm ratios, which converge in a few rounds because
//! quantization noise is small beside the scales) and gives REF in the candidate's scaling.
//! Only AWQ-layout layers are aligned, and only when the scaling explains most of the
//! difference, so the corruptions verify must catch (swapped nibbles, permuted scales, zero-point
//! mix-ups: none of them a pure row/column scaling) still fail in every other layout.

/// REF scaled like the candidate, with a note for the report; REF unchanged (and no note) when
/// no such scaling is there.
pub fn align(w_ref: &[f32], w_cand: &[f32], n: usize, k: usize) -> (Vec<f32>, Option<String>) {
    let mut r = vec![1f64; n];
    let mut c = vec![1f64; k];
    for _ in 0..4 {
        // Columns: c_j = ‖cand[:, j]‖ / ‖diag(r)·ref[:, j]‖.
        let mut num = vec![0f64; k];
        let mut den = vec![0f64; k];
        for i in 0..n {
            let (rr, rc) = (&w_ref[i * k..(i + 1) * k], &w_cand[i * k..(i + 1) * k]);
            for j in 0..k {
                let a = rr[j] as f64 * r[i];
                num[j] += (rc[j] as f64) * (rc[j] as f64);
                den[j] += a * a;
            }
        }
        for j in 0..k {
            c[j] = if den[j] > 0.0 && num[j] > 0.0 { (num[j] / den[j]).sqrt() } else { 1.0 };
        }
        // Rows: r_i = ‖cand[i, :]‖ / ‖ref[i, :]·diag(c)‖.
        for i in 0..n {
            let (rr, rc) = (&w_ref[i * k..(i + 1) * k], &w_cand[i * k..(i + 1) * k]);
            let (mut nu, mut de) = (0f64, 0f64);
            for j in 0..k {
                let a = rr[j] as f64 * c[j];
                nu += (rc[j] as f64) * (rc[j] as f64);
                de += a * a;
            }
            r[i] = if de > 0.0 && nu > 0.0 { (nu / de).sqrt() } else { 1.0 };
        }
    }
    let aligned: Vec<f32> =
        (0..n * k).map(|x| (w_ref[x] as f64 * r[x / k] * c[x % k]) as f32).collect();
    let err = |w: &[f32]| -> f64 {
        w.iter().zip(w_cand).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>()
    };
    let (plain, scaled) = (err(w_ref), err(&aligned));
    // Folded scales make the plain error many times the quantization error; aligning removes
    // it. Without folded scales both errors are the quantization error and REF stays as it is.
    if scaled < 0.25 * plain {
        let range = |v: &[f64]| {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!("[{lo:.3}, {hi:.3}]")
        };
        let note = format!(
            "AWQ scales folded into neighbouring ops: REF compared as diag(r)·W·diag(c), r in {}, c in {}",
            range(&r),
            range(&c)
        );
        (aligned, Some(note))
    } else {
        (w_ref.to_vec(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn recovers_folded_row_and_column_scales() {
        let (n, k) = (64, 96);
        let w = seeded(n * k, 1);
        let r: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.3).collect();
        let c: Vec<f32> = (0..k).map(|j| 0.25 + (j % 11) as f32 * 0.4).collect();
        let noise = seeded(n * k, 2);
        let cand: Vec<f32> =
            (0..n * k).map(|x| w[x] * r[x / k] * c[x % k] * (1.0 + 0.02 * noise[x])).collect();
        let (aligned, note) = align(&w, &cand, n, k);
        assert!(note.is_some());
        let e: f64 = aligned.iter().zip(&cand).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let s: f64 = cand.iter().map(|b| (*b as f64).powi(2)).sum();
        assert!((e / s).sqrt() < 0.02, "relative error {}", (e / s).sqrt());
    }

    #[test]
    fn leaves_plain_quantization_and_scrambling_alone() {
        let (n, k) = (32, 64);
        let w = seeded(n * k, 3);
        let noise = seeded(n * k, 4);
        let quantized: Vec<f32> = w.iter().zip(&noise).map(|(a, e)| a + 0.01 * e).collect();
        assert!(align(&w, &quantized, n, k).1.is_none());
        // Adjacent pairs swapped (a nibble-order bug) is no scaling: nothing to align.
        let mut swapped = w.clone();
        swapped.chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
        let (same, note) = align(&w, &swapped, n, k);
        assert!(note.is_none());
        assert_eq!(same, w);
    }
}
