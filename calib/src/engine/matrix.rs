//! A row-major `f32` matrix and the one GEMM shape the engine needs: `x · Wᵀ` with `W` stored
//! as PyTorch stores a linear layer's weight, `[out_features, in_features]`.
//!
//! The GEMM is `matrixmultiply::sgemm` (bluss) rather than `gemm` (sarah-quinones): one small
//! pure-Rust crate with no dependencies of its own (`gemm` brings a family of crates —
//! gemm-common/-f16/-f32/-f64/-c32/-c64 and their generic kernels — into every clean build of
//! the CLI), run-time selected AVX2/FMA/AVX-512 micro-kernels, and arbitrary row/column strides,
//! so `Wᵀ` and per-head slices of q/k/v are read in place without copies. Measured on the 2-core
//! development machine: ~80 GFLOP/s per core on a SmolLM-sized linear (512 × 576 → 1536), and
//! `qtool eval` of SmolLM2 sustains ~78 GFLOP/s per core end to end, so the GEMM is not what
//! would be worth replacing first.
//!
//! Threads come from rayon, not from matrixmultiply: the output is split into column panels of
//! a width that depends only on the shape ([`panel_width`]), one task each. Each output element
//! is computed by one micro-kernel call per `k`-block in the same order whatever the split, so
//! results do not depend on the thread count.

use rayon::prelude::*;

/// A dense row-major matrix: element `(r, c)` is `data[r * cols + c]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// Wraps `data`; panics if its length is not `rows * cols` (a programming error).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Matrix {
        assert_eq!(
            data.len(),
            rows * cols,
            "Matrix::from_vec: {rows}x{cols} needs {} values",
            rows * cols
        );
        Matrix { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        let c = self.cols;
        &mut self.data[r * c..(r + 1) * c]
    }

    /// Rows `start..end` as a new matrix.
    pub fn slice_rows(&self, start: usize, end: usize) -> Matrix {
        Matrix::from_vec(
            end - start,
            self.cols,
            self.data[start * self.cols..end * self.cols].to_vec(),
        )
    }

    /// `self · wᵀ` where `w` is `[n, k]` (a linear layer's weight) and `self` is `[m, k]`:
    /// the result is `[m, n]`.
    pub fn matmul_t(&self, w: &Matrix) -> Matrix {
        assert_eq!(
            self.cols, w.cols,
            "matmul_t: x is [{}, {}], w is [{}, {}]",
            self.rows, self.cols, w.rows, w.cols
        );
        let mut out = Matrix::zeros(self.rows, w.rows);
        gemm_xwt(
            self.rows,
            self.cols,
            w.rows,
            &self.data,
            self.cols,
            &w.data,
            w.cols,
            &mut out.data,
            w.rows,
        );
        out
    }
}

/// Output columns per parallel task: about 16 tasks, in multiples of 64 columns, at most 1024.
/// A function of `n` alone (never of the thread count), so the work split, and with it every
/// rounding, is the same on any machine. Wide panels matter for the head (`n` = vocabulary):
/// every task packs all of `x` once, so 64-column panels would copy `x` a thousand times.
pub fn panel_width(n: usize) -> usize {
    (n.div_ceil(16).div_ceil(64) * 64).clamp(64, 1024)
}

/// `c[m, n] = a[m, k] · b[n, k]ᵀ` with row strides `lda`, `ldb`, `ldc` (elements), unit column
/// strides; `c` is overwritten. Splits `n` into [`panel_width`] tasks on the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm_xwt(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds are checked here once, so the unsafe calls below only touch memory inside the slices.
    assert!(lda >= k && ldb >= k && ldc >= n, "gemm_xwt: strides smaller than the rows");
    assert!(a.len() >= (m - 1) * lda + k, "gemm_xwt: a is too short");
    assert!(b.len() >= (n - 1) * ldb + k, "gemm_xwt: b is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm_xwt: c is too short");
    if k == 0 {
        for r in 0..m {
            c[r * ldc..r * ldc + n].fill(0.0);
        }
        return;
    }
    let c_ptr = SendPtr(c.as_mut_ptr());
    let panel = panel_width(n);
    let panels = n.div_ceil(panel);
    let work = m * k * n;
    let run = |p: usize| {
        let j0 = p * panel;
        let nj = panel.min(n - j0);
        let c_ptr = &c_ptr;
        // SAFETY: a, b and c were checked above to hold every element the strides address;
        // panel `p` writes only columns j0..j0+nj of c, disjoint from every other panel.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nj,
                1.0,
                a.as_ptr(),
                lda as isize,
                1,
                b.as_ptr().add(j0 * ldb),
                1,
                ldb as isize,
                0.0,
                c_ptr.0.add(j0),
                ldc as isize,
                1,
            );
        }
    };
    // Tiny products are not worth a task each.
    if panels == 1 || work < 1 << 16 {
        (0..panels).for_each(run);
    } else {
        (0..panels).into_par_iter().for_each(run);
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
struct SendPtr(*mut f32);
// SAFETY: only used by `gemm_xwt`, whose tasks write disjoint regions.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// `c[m, n] = a[m, k] · b[k, n]` (both row-major with row strides `lda`, `ldb`), single-threaded:
/// attention's `P · V` per head, which already runs one head per task.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nn(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldb >= n && ldc >= n, "gemm_nn: strides smaller than the rows");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "gemm_nn: b is too short");
    sgemm_serial(m, k, n, a, lda, b, (ldb, 1), c, ldc);
}

/// `c[m, n] = a[m, k] · b[n, k]ᵀ`, single-threaded (attention scores per head).
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_serial(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldb >= k && ldc >= n, "gemm_nt_serial: strides smaller than the rows");
    assert!(k == 0 || b.len() >= (n - 1) * ldb + k, "gemm_nt_serial: b is too short");
    sgemm_serial(m, k, n, a, lda, b, (1, ldb), c, ldc);
}

/// `c = a · b` on one thread, `b` read through `(row, column)` strides so the same call serves
/// `b` and `bᵀ`; the callers check `b`'s extent for their layout.
#[allow(clippy::too_many_arguments)]
fn sgemm_serial(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
    ldc: usize,
) {
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "sgemm: a is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "sgemm: c is too short");
    // SAFETY: a and c checked above, b by the caller for its stride pattern.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &Matrix, w: &Matrix) -> Vec<f64> {
        let mut out = vec![0.0; x.rows * w.rows];
        for i in 0..x.rows {
            for j in 0..w.rows {
                out[i * w.rows + j] = (0..x.cols)
                    .map(|t| x.data[i * x.cols + t] as f64 * w.data[j * w.cols + t] as f64)
                    .sum();
            }
        }
        out
    }

    fn seeded(rows: usize, cols: usize, seed: u32) -> Matrix {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        let data = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Matrix::from_vec(rows, cols, data)
    }

    #[test]
    fn matmul_t_matches_a_naive_f64_product_on_odd_shapes() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 130), (65, 64, 200)] {
            let x = seeded(m, k, 1);
            let w = seeded(n, k, 2);
            let got = x.matmul_t(&w);
            for (g, r) in got.data.iter().zip(naive(&x, &w)) {
                assert!((*g as f64 - r).abs() < 1e-4 * (1.0 + r.abs()), "{m}x{k}x{n}: {g} vs {r}");
            }
        }
    }

    #[test]
    fn matmul_t_does_not_depend_on_the_thread_count() {
        let x = seeded(70, 96, 3);
        let w = seeded(300, 96, 4);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| x.matmul_t(&w));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| x.matmul_t(&w));
        assert_eq!(one.data, three.data);
    }
}
