//! The CPU reference GEMM, `Y[m, n] = X[m, k] · W[n, k]ᵀ` in FP32.
//!
//! `matrixmultiply::sgemm` does the blocked, vectorised inner work on one thread; rayon splits
//! the output columns (rows of `W`) into fixed slices of [`N_SLICE`]. Each output element is
//! computed entirely inside one slice by the same code path whatever the thread count, so the
//! result is bit-identical across runs and machines with the same CPU features.

use rayon::prelude::*;

/// Rows of `W` per parallel task.
pub const N_SLICE: usize = 128;

/// `X · Wᵀ` for row-major `x` (`[m, k]`) and `w` (`[n, k]`), returning row-major `[m, n]`.
///
/// # Panics
/// When a slice length disagrees with its shape (a caller bug, not bad input).
pub fn gemm_xwt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x must be [m, k]");
    assert_eq!(w.len(), n * k, "w must be [n, k]");
    // Each slice writes its own `[m, rows]` block; the blocks are stitched together after.
    let blocks: Vec<(usize, Vec<f32>)> = w
        .par_chunks(N_SLICE * k.max(1))
        .enumerate()
        .map(|(i, ws)| {
            let rows = ws.len().checked_div(k).unwrap_or(0);
            let mut c = vec![0f32; m * rows];
            if rows > 0 && m > 0 && k > 0 {
                // C[m, rows] = A[m, k] · B[k, rows] with B = Wᵀ: B's row stride 1, column stride k.
                sgemm_slice(m, k, rows, x, ws, &mut c);
            }
            (i * N_SLICE, c)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (col0, c) in blocks {
        let rows = c.len().checked_div(m).unwrap_or(0);
        for r in 0..m {
            y[r * n + col0..r * n + col0 + rows].copy_from_slice(&c[r * rows..(r + 1) * rows]);
        }
    }
    y
}

/// `C[m, cols] = A[m, k] · Bᵀ` where `b` is `[cols, k]` row-major.
fn sgemm_slice(m: usize, k: usize, cols: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), cols * k);
    debug_assert_eq!(c.len(), m * cols);
    // SAFETY: the pointers come from slices whose lengths were checked against the strides above:
    // A is m×k with row stride k, B (= bᵀ) is k×cols with row stride 1 and column stride k, C is
    // m×cols with row stride cols; every index the routine forms stays inside those slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            cols,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] =
                    (0..k).map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t])).sum();
            }
        }
        y
    }

    #[test]
    fn matches_a_naive_f64_product_on_ragged_shapes() {
        for (m, n, k) in [(1, 1, 1), (3, 130, 17), (16, 257, 64), (5, 128, 300)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
            let got = gemm_xwt(&x, &w, m, n, k);
            let want = naive(&x, &w, m, n, k);
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn same_bits_for_any_thread_count() {
        let (m, n, k) = (7, 300, 129);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let a = one.install(|| gemm_xwt(&x, &w, m, n, k));
        let b = three.install(|| gemm_xwt(&x, &w, m, n, k));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn empty_batch() {
        assert!(gemm_xwt(&[], &[1.0; 6], 0, 2, 3).is_empty());
    }
}
