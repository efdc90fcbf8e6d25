//! The element-wise and per-head pieces of a llama block: RMSNorm, rotary embedding, SwiGLU and
//! causal attention. Reductions (norm sums, softmax sums) run in f64, which costs nothing
//! next to the GEMMs and keeps the engine within f32 rounding of the exact result.

use rayon::prelude::*;

use super::matrix::{gemm_nn, gemm_nt_serial, Matrix};

/// `y = x / sqrt(mean(x²) + eps) · w`, row by row, for rows of `w.len()` values (a whole hidden
/// state, or one head for Qwen3's q/k norms).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_in_place(&mut out, w, eps);
    out
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    let run = |row: &mut [f32]| {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / (ss / n as f64 + eps as f64).sqrt()) as f32;
        for (v, &g) in row.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    };
    if x.len() >= 1 << 15 {
        x.par_chunks_mut(n).for_each(run);
    } else {
        x.chunks_mut(n).for_each(run);
    }
}

/// Rotates each head of `x` (`[t, n_heads · head_dim]`) in place by position: for pair `i` of a
/// head (elements `i` and `i + head_dim/2`, the Hugging Face `rotate_half` convention),
/// `(a, b) ↦ (a·cos − b·sin, b·cos + a·sin)` with the angle of that row's position. `cos`/`sin`
/// are `[t, head_dim/2]` ([`super::config::Rope::tables`]).
pub fn apply_rope(x: &mut Matrix, n_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let cols = x.cols;
    x.data.par_chunks_mut(cols).enumerate().for_each(|(t, row)| {
        let c = &cos[t * half..(t + 1) * half];
        let s = &sin[t * half..(t + 1) * half];
        for h in 0..n_heads {
            let head = &mut row[h * head_dim..(h + 1) * head_dim];
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * c[i] - b * s[i];
                hi[i] = b * c[i] + a * s[i];
            }
        }
    });
}

/// `silu(gate) · up`, in place into `gate`.
pub fn swiglu(gate: &mut Matrix, up: &Matrix) {
    gate.data.par_chunks_mut(4096).zip(up.data.par_chunks(4096)).for_each(|(g, u)| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
}

/// Query rows per attention block (see [`causal_attention`]). A constant, so the work split
/// does not depend on the machine.
const ATTN_ROWS: usize = 64;

/// `softmax(scale · x)` in place; the sum in f64.
fn softmax_scaled(x: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for s in x.iter_mut() {
        *s *= scale;
        max = max.max(*s);
    }
    let mut sum = 0f64;
    for s in x.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    let inv = (1.0 / sum) as f32;
    for s in x.iter_mut() {
        *s *= inv;
    }
}

/// Causal grouped-query attention of one sequence.
///
/// `q` is `[t, n_heads · hd]`, `k` and `v` are `[t, n_kv · hd]`; query head `h` reads KV head
/// `h / (n_heads / n_kv)`. Each head is one task: scores `q_h k_hᵀ / sqrt(hd)` by GEMM on the
/// heads in place (strided), row `i` masked beyond column `i`, softmax, then `P v_h` by GEMM,
/// in blocks of `ATTN_ROWS` (64) query rows that only read the keys they can see.
/// Returns `[t, n_heads · hd]`.
pub fn causal_attention(
    q: &Matrix,
    k: &Matrix,
    v: &Matrix,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
) -> Matrix {
    let t = q.rows;
    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let heads: Vec<Vec<f32>> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let (qh, kh, vh) = (&q.data[h * hd..], &k.data[kvh * hd..], &v.data[kvh * hd..]);
            let mut out = vec![0f32; t * hd];
            // Query rows in blocks: block [r0, r1) only sees keys 0..r1, so the GEMMs skip
            // (most of) the masked upper triangle.
            let mut scores = vec![0f32; ATTN_ROWS.min(t) * t];
            for r0 in (0..t).step_by(ATTN_ROWS) {
                let r1 = (r0 + ATTN_ROWS).min(t);
                let (m, n) = (r1 - r0, r1);
                let sc = &mut scores[..m * n];
                gemm_nt_serial(m, hd, n, &qh[r0 * q.cols..], q.cols, kh, k.cols, sc, n);
                for (di, row) in sc.chunks_mut(n).enumerate() {
                    let (live, masked) = row.split_at_mut(r0 + di + 1);
                    softmax_scaled(live, scale);
                    masked.fill(0.0);
                }
                gemm_nn(m, n, hd, sc, n, vh, v.cols, &mut out[r0 * hd..], hd);
            }
            out
        })
        .collect();
    let mut out = Matrix::zeros(t, n_heads * hd);
    for (h, head) in heads.iter().enumerate() {
        for i in 0..t {
            out.data[i * out.cols + h * hd..i * out.cols + (h + 1) * hd]
                .copy_from_slice(&head[i * hd..(i + 1) * hd]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_hand_checked() {
        // x = [1, 2, 3, 4]: mean(x²) = 7.5; eps 0.5 → scale 1/sqrt(8) = 0.35355339.
        let y = rms_norm(&[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0, 2.0, 0.5], 0.5);
        let s = 1.0 / 8f32.sqrt();
        let want = [s, 2.0 * s, 6.0 * s, 2.0 * s];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Two rows normalise independently.
        let y = rms_norm(&[3.0, 4.0, 0.0, 2.0], &[1.0, 1.0], 0.0);
        let s1 = 1.0 / 12.5f32.sqrt();
        assert!((y[0] - 3.0 * s1).abs() < 1e-6 && (y[3] - 2.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_first_and_second_halves_together() {
        // One head of 4: pairs (x0, x2) and (x1, x3). Position angles 90° for pair 0, 0° for pair 1.
        let mut x = Matrix::from_vec(1, 4, vec![1.0, 2.0, 3.0, 4.0]);
        let cos = [0.0, 1.0];
        let sin = [1.0, 0.0];
        apply_rope(&mut x, 1, 4, &cos, &sin);
        // (1, 3) rotated by 90° → (−3, 1); (2, 4) unchanged.
        assert_eq!(x.data, vec![-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn rope_of_two_heads_uses_each_rows_position() {
        let mut x = Matrix::from_vec(2, 4, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        // Row 0 angle 0, row 1 angle 180° (one pair per head of 2).
        let cos = [1.0, -1.0];
        let sin = [0.0, 0.0];
        apply_rope(&mut x, 2, 2, &cos, &sin);
        assert_eq!(x.data, vec![1.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn swiglu_hand_checked() {
        let mut g = Matrix::from_vec(1, 3, vec![0.0, 1.0, -2.0]);
        let u = Matrix::from_vec(1, 3, vec![5.0, 2.0, 3.0]);
        swiglu(&mut g, &u);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(g.data[0], 0.0);
        assert!((g.data[1] - 2.0 * silu(1.0)).abs() < 1e-6);
        assert!((g.data[2] - 3.0 * silu(-2.0)).abs() < 1e-6);
    }

    /// Attention written out with loops, in f64: the reference for the GEMM version.
    fn reference_attention(
        q: &Matrix,
        k: &Matrix,
        v: &Matrix,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Vec<f64> {
        let t = q.rows;
        let mut out = vec![0f64; t * nh * hd];
        for h in 0..nh {
            let kh = h / (nh / nkv);
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                q.data[i * q.cols + h * hd + d] as f64
                                    * k.data[j * k.cols + kh * hd + d] as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[i * nh * hd + h * hd + d] =
                        (0..=i).map(|j| e[j] / z * v.data[j * v.cols + kh * hd + d] as f64).sum();
                }
            }
        }
        out
    }

    #[test]
    fn attention_hand_checked_two_tokens() {
        // One head of size 1 (scale 1): q = [0, ln 3], k = [1, 1], v = [2, 4].
        // Row 0 sees only token 0 → 2. Row 1: scores (ln3, ln3) → equal weights → 3.
        let q = Matrix::from_vec(2, 1, vec![0.0, 3f32.ln()]);
        let k = Matrix::from_vec(2, 1, vec![1.0, 1.0]);
        let v = Matrix::from_vec(2, 1, vec![2.0, 4.0]);
        let o = causal_attention(&q, &k, &v, 1, 1, 1);
        assert!((o.data[0] - 2.0).abs() < 1e-6 && (o.data[1] - 3.0).abs() < 1e-6, "{:?}", o.data);
        // Scores (0, ln 3) → weights (1/4, 3/4) → 3.5.
        let k = Matrix::from_vec(2, 1, vec![0.0, 1.0]);
        let o = causal_attention(&q, &k, &v, 1, 1, 1);
        assert!((o.data[1] - 3.5).abs() < 1e-6, "{:?}", o.data);
    }

    #[test]
    fn gqa_attention_matches_the_loop_reference() {
        let (t, nh, nkv, hd) = (150, 4, 2, 6); // three query blocks, the last partial
        let gen =
            |n: usize, s: f32| (0..n).map(|i| (i as f32 * 0.37 + s).sin()).collect::<Vec<_>>();
        let q = Matrix::from_vec(t, nh * hd, gen(t * nh * hd, 0.1));
        let k = Matrix::from_vec(t, nkv * hd, gen(t * nkv * hd, 0.7));
        let v = Matrix::from_vec(t, nkv * hd, gen(t * nkv * hd, 1.3));
        let got = causal_attention(&q, &k, &v, nh, nkv, hd);
        for (g, r) in got.data.iter().zip(reference_attention(&q, &k, &v, nh, nkv, hd)) {
            assert!((*g as f64 - r).abs() < 1e-5, "{g} vs {r}");
        }
    }
}
