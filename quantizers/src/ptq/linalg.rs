//! The dense f64 factorizations GPTQ needs, written for its one use: the upper Cholesky factor
//! `U` of `H⁻¹` (`H⁻¹ = UᵀU`).
//!
//! The GPTQ reference computes it as `chol(chol_inverse(chol(H)), upper)`: three cubic passes.
//! With `P` the index reversal, `P·H⁻¹·P = (P·H·P)⁻¹ = L⁻ᵀ·L⁻¹` where `L = chol(P·H·P)`, hence
//! `H⁻¹ = (P·L⁻ᵀ·P)·(P·L⁻¹·P)` and `U = P·L⁻¹·P` is upper triangular with a positive diagonal —
//! the same (unique) factor from one Cholesky and one triangular inverse. Both run in f64, each
//! output column computed by one thread in a fixed order (thread-count independent).

use rayon::prelude::*;

/// In-place lower Cholesky of the symmetric `k×k` row-major `a` (only `j ≤ i` is read and
/// written). On failure returns the pivot whose remaining diagonal was not positive.
pub fn cholesky_lower(a: &mut [f64], k: usize) -> Result<(), usize> {
    assert_eq!(a.len(), k * k, "cholesky: matrix length");
    for j in 0..k {
        let (head, tail) = a.split_at_mut((j + 1) * k);
        let row_j = &mut head[j * k..];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        let row_j = &*row_j;
        tail.par_chunks_mut(k).with_min_len(16).for_each(|row_i| {
            row_i[j] = (row_i[j] - dot(&row_i[..j], &row_j[..j])) / ljj;
        });
    }
    for i in 0..k {
        for v in &mut a[i * k + i + 1..(i + 1) * k] {
            *v = 0.0;
        }
    }
    Ok(())
}

/// Inverse of the lower-triangular `l` (positive diagonal), returned transposed: row `j` of
/// the result holds column `j` of `L⁻¹`, so each is computed contiguously by one task.
fn lower_inverse_transposed(l: &[f64], k: usize) -> Vec<f64> {
    let mut xt = vec![0.0f64; k * k];
    xt.par_chunks_mut(k).enumerate().for_each(|(j, col)| {
        col[j] = 1.0 / l[j * k + j];
        for i in j + 1..k {
            let s = dot(&l[i * k + j..i * k + i], &col[j..i]);
            col[i] = -s / l[i * k + i];
        }
    });
    xt
}

/// Upper Cholesky factor of `h⁻¹` for a symmetric positive definite `h` (`k×k`, f64), see the
/// module doc. Returns the failing pivot (in `h`'s own index) when `h` is not positive definite.
pub fn inverse_upper_cholesky(h: &[f64], k: usize) -> Result<Vec<f64>, usize> {
    assert_eq!(h.len(), k * k, "inverse_upper_cholesky: matrix length");
    let rev = |i: usize| k - 1 - i;
    let mut m = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            m[i * k + j] = h[rev(i) * k + rev(j)];
        }
    }
    cholesky_lower(&mut m, k).map_err(rev)?;
    let xt = lower_inverse_transposed(&m, k);
    // U[a][b] = L⁻¹[rev a][rev b] = xt[rev b][rev a]
    let mut u = vec![0.0f64; k * k];
    u.par_chunks_mut(k).enumerate().for_each(|(a, row)| {
        for (b, v) in row.iter_mut().enumerate().skip(a) {
            *v = xt[rev(b) * k + rev(a)];
        }
    });
    Ok(u)
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four independent partial sums: vectorizes, and the order is fixed.
    let mut acc = [0.0f64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            acc[l] += a[c * 4 + l] * b[c * 4 + l];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(k: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let a: Vec<f64> = (0..k * 2 * k).map(|_| r()).collect();
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = (0..2 * k).map(|t| a[i * 2 * k + t] * a[j * 2 * k + t]).sum::<f64>();
            }
            h[i * k + i] += 0.1;
        }
        h
    }

    /// Gauss-Jordan inverse, the dense reference.
    fn inverse(h: &[f64], k: usize) -> Vec<f64> {
        let mut a = h.to_vec();
        let mut inv: Vec<f64> =
            (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
        for c in 0..k {
            let p =
                (c..k).max_by(|&x, &y| a[x * k + c].abs().total_cmp(&a[y * k + c].abs())).unwrap();
            for j in 0..k {
                a.swap(c * k + j, p * k + j);
                inv.swap(c * k + j, p * k + j);
            }
            let d = a[c * k + c];
            for j in 0..k {
                a[c * k + j] /= d;
                inv[c * k + j] /= d;
            }
            for r in 0..k {
                if r != c {
                    let f = a[r * k + c];
                    for j in 0..k {
                        a[r * k + j] -= f * a[c * k + j];
                        inv[r * k + j] -= f * inv[c * k + j];
                    }
                }
            }
        }
        inv
    }

    #[test]
    fn upper_factor_reproduces_the_inverse() {
        for k in [1, 2, 7, 33] {
            let h = spd(k, k as u64);
            let u = inverse_upper_cholesky(&h, k).unwrap();
            let inv = inverse(&h, k);
            for i in 0..k {
                assert!(u[i * k + i] > 0.0);
                for j in 0..i {
                    assert_eq!(u[i * k + j], 0.0, "not upper at ({i},{j})");
                }
                for j in 0..k {
                    let utu: f64 = (0..k).map(|t| u[t * k + i] * u[t * k + j]).sum();
                    let tol = 1e-9 * inv[i * k + i].abs().max(1.0);
                    assert!(
                        (utu - inv[i * k + j]).abs() < tol,
                        "k={k} ({i},{j}) {utu} vs {}",
                        inv[i * k + j]
                    );
                }
            }
        }
    }

    #[test]
    fn cholesky_reports_the_failing_pivot() {
        // [[1, 2], [2, 1]] is indefinite: the second pivot is 1 - 4 < 0.
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_lower(&mut a, 2), Err(1));
        let h = vec![1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(inverse_upper_cholesky(&h, 3), Err(1));
    }
}
