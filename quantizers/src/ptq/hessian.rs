//! Second-order statistics of a linear layer's calibration inputs, accumulated batch by batch
//! so that no more than one batch of activations is ever held.
//!
//! `Σ xxᵀ` is summed per fixed chunk of [`CHUNK`] tokens in f32 by the GEMM, then added to an
//! f64 accumulator: the f32 partial sums stay short (a few hundred terms), and the long sum over
//! the whole calibration set is f64. Work is split over row panels of the `K×K` result, each
//! computed entirely by one thread in a fixed order, so the bytes do not depend on the thread
//! count.

use rayon::prelude::*;

use super::error::{check_finite, check_len, PtqError, PtqResult};
use super::gemm::{sgemm, View};

/// Tokens per f32 partial product.
const CHUNK: usize = 256;
/// Rows of `Σ xxᵀ` one task computes.
const PANEL: usize = 32;

/// Running `Σ xxᵀ` (upper triangle, f64), `Σ |x|` and the token count of one layer input.
#[derive(Debug, Clone)]
pub struct Hessian {
    k: usize,
    /// `K×K` row-major; only `j ≥ i` is accumulated, [`Hessian::sum_xxt`] mirrors it.
    upper: Vec<f64>,
    abs_sum: Vec<f64>,
    tokens: u64,
}

impl Hessian {
    pub fn new(k: usize) -> Self {
        Hessian { k, upper: vec![0.0; k * k], abs_sum: vec![0.0; k], tokens: 0 }
    }

    /// Statistics accumulated elsewhere (the GPU pipeline's device sums): `upper` is `Σ xxᵀ`
    /// row-major `K×K` of which only `j ≥ i` is read (the rest is zeroed, as [`Hessian::add`]
    /// leaves it), `abs_sum` is `Σ |x|` per channel, over `tokens` tokens. Refuses wrong lengths
    /// and non-finite sums (a NaN activation on the device shows up here).
    pub fn from_parts(
        k: usize,
        mut upper: Vec<f64>,
        abs_sum: Vec<f64>,
        tokens: u64,
    ) -> PtqResult<Self> {
        if k == 0 {
            return Err(PtqError::Config("statistics of zero input features".into()));
        }
        check_len("Σ xxᵀ", k * k, upper.len())?;
        check_len("Σ |x|", k, abs_sum.len())?;
        for i in 0..k {
            upper[i * k..i * k + i].fill(0.0);
        }
        check_finite("Σ xxᵀ", &upper)?;
        check_finite("Σ |x|", &abs_sum)?;
        Ok(Hessian { k, upper, abs_sum, tokens })
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Tokens accumulated so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds `x` (`[T, K]` row-major, T = `x.len() / K`). Non-finite activations are refused:
    /// one NaN would poison every entry of the statistics.
    pub fn add(&mut self, x: &[f32]) -> PtqResult<()> {
        let k = self.k;
        if k == 0 || x.len() % k != 0 {
            return Err(PtqError::Length {
                what: "activations",
                expected: k,
                got: x.len() % k.max(1),
            });
        }
        check_finite("activations", x)?;
        let t = x.len() / k;
        self.upper.par_chunks_mut(PANEL * k).enumerate().for_each(|(p, out)| {
            let r0 = p * PANEL;
            let rows = out.len() / k;
            let width = k - r0;
            let mut tmp = vec![0.0f32; rows * width];
            for c0 in (0..t).step_by(CHUNK) {
                let ct = CHUNK.min(t - c0);
                // tmp[rows, width] = X[c0.., r0..r0+rows]ᵀ · X[c0.., r0..]
                sgemm(
                    1.0,
                    x,
                    View::new(ct, rows, k, c0 * k + r0).t(),
                    x,
                    View::new(ct, width, k, c0 * k + r0),
                    0.0,
                    &mut tmp,
                    View::new(rows, width, width, 0),
                );
                for i in 0..rows {
                    // Only j ≥ i of the panel's row i (global row r0 + i) is kept.
                    let dst = &mut out[i * k + r0 + i..(i + 1) * k];
                    let src = &tmp[i * width + i..(i + 1) * width];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += f64::from(s);
                    }
                }
            }
        });
        for row in x.chunks_exact(k) {
            for (a, &v) in self.abs_sum.iter_mut().zip(row) {
                *a += f64::from(v.abs());
            }
        }
        self.tokens += t as u64;
        Ok(())
    }

    /// `Σ xxᵀ`, full symmetric `K×K`.
    pub fn sum_xxt(&self) -> Vec<f64> {
        let k = self.k;
        let mut h = self.upper.clone();
        for i in 0..k {
            for j in 0..i {
                h[i * k + j] = h[j * k + i];
            }
        }
        h
    }

    fn scaled(&self, factor: f64) -> PtqResult<Vec<f64>> {
        if self.tokens == 0 {
            return Err(PtqError::NoTokens);
        }
        let c = factor / self.tokens as f64;
        Ok(self.sum_xxt().into_iter().map(|v| v * c).collect())
    }

    /// GPTQ's Hessian of the layer-wise loss, `H = 2·XᵀX / T`.
    pub fn hessian(&self) -> PtqResult<Vec<f64>> {
        self.scaled(2.0)
    }

    /// `XᵀX / T`: the mean squared output error of a weight change `Δ` is `Δᵀ·gram·Δ` per row.
    pub fn gram(&self) -> PtqResult<Vec<f64>> {
        self.scaled(1.0)
    }

    /// AWQ's activation salience, `mean |x|` per input channel.
    pub fn abs_mean(&self) -> PtqResult<Vec<f32>> {
        abs_mean_of(&self.abs_sum, self.tokens)
    }
}

/// `mean |x|` per channel from the sums `Σ|x|` over `tokens` tokens (also for sums kept
/// elsewhere, e.g. on a GPU).
pub fn abs_mean_of(abs_sum: &[f64], tokens: u64) -> PtqResult<Vec<f32>> {
    if tokens == 0 {
        return Err(PtqError::NoTokens);
    }
    Ok(abs_sum.iter().map(|&a| (a / tokens as f64) as f32).collect())
}

/// `Σ_r d_r·G·d_rᵀ` over the rows of `d` (`[rows, K]`) for one fixed `G`: the quadratic form
/// AWQ's scale search evaluates 20 times per group. A trait so that the pipeline can keep `G`
/// on a GPU ([`GramQuadForm`] is the CPU's).
pub trait QuadForm {
    fn k(&self) -> usize;
    fn sum(&self, d: &[f32], rows: usize) -> PtqResult<f64>;
}

/// [`QuadForm`] on the CPU: `G` rounded to f32 once, products by the f32 GEMM, row sums in f64
/// (exactly what [`output_error`] computes).
#[derive(Debug, Clone)]
pub struct GramQuadForm {
    k: usize,
    g32: Vec<f32>,
}

impl GramQuadForm {
    pub fn new(gram: &[f64], k: usize) -> PtqResult<Self> {
        check_len("gram", k * k, gram.len())?;
        Ok(GramQuadForm { k, g32: gram.iter().map(|&v| v as f32).collect() })
    }
}

impl QuadForm for GramQuadForm {
    fn k(&self) -> usize {
        self.k
    }

    fn sum(&self, d: &[f32], rows: usize) -> PtqResult<f64> {
        check_len("quadratic form rows", rows * self.k, d.len())?;
        Ok(quad_form_sum_f32(d, d, self.k, &self.g32))
    }
}

/// `Σₙ aₙᵀ·G·bₙ` over the rows of `a`, `b` (`[N, K]`), with `G` (`K×K`) symmetric; the
/// row-wise products run in parallel and are summed in row order.
pub(crate) fn quad_form_sum(a: &[f32], b: &[f32], k: usize, g: &[f64]) -> f64 {
    let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
    quad_form_sum_f32(a, b, k, &g32)
}

fn quad_form_sum_f32(a: &[f32], b: &[f32], k: usize, g32: &[f32]) -> f64 {
    const ROWS: usize = 64;
    let parts: Vec<f64> = a
        .par_chunks(ROWS * k)
        .zip(b.par_chunks(ROWS * k))
        .map(|(ac, bc)| {
            let rows = ac.len() / k;
            let mut t = vec![0.0f32; rows * k];
            // t = a·G (G symmetric, so row-major G is also Gᵀ).
            sgemm(
                1.0,
                ac,
                View::new(rows, k, k, 0),
                g32,
                View::new(k, k, k, 0),
                0.0,
                &mut t,
                View::new(rows, k, k, 0),
            );
            t.iter().zip(bc).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

/// `‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖²` for the tokens summarised by `gram` (`XᵀX`, any positive
/// scale): the output-space relative error qtool's per-layer log reports.
pub fn output_error(w: &[f32], w_hat: &[f32], n: usize, k: usize, gram: &[f64]) -> PtqResult<f64> {
    check_len("weight", n * k, w.len())?;
    check_len("quantized weight", n * k, w_hat.len())?;
    check_len("gram", k * k, gram.len())?;
    let d: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    let err = quad_form_sum(&d, &d, k, gram);
    let sig = quad_form_sum(w, w, k, gram);
    Ok(if sig > 0.0 { err / sig } else { err })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn hessian_equals_dense_sum_over_batches() {
        let (k, t) = (37, 600);
        let mut s = 7;
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let mut h = Hessian::new(k);
        h.add(&x[..250 * k]).unwrap();
        h.add(&x[250 * k..]).unwrap();
        let got = h.hessian().unwrap();
        for i in 0..k {
            for j in 0..k {
                let want: f64 =
                    (0..t).map(|r| f64::from(x[r * k + i]) * f64::from(x[r * k + j])).sum::<f64>()
                        * 2.0
                        / t as f64;
                assert!(
                    (got[i * k + j] - want).abs() < 1e-5,
                    "({i},{j}) {} vs {want}",
                    got[i * k + j]
                );
            }
        }
        let am = h.abs_mean().unwrap();
        let want0 = (0..t).map(|r| x[r * k].abs() as f64).sum::<f64>() / t as f64;
        assert!((f64::from(am[0]) - want0).abs() < 1e-6);
    }

    #[test]
    fn hessian_is_thread_count_independent() {
        let (k, t) = (70, 300);
        let mut s = 3;
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut h = Hessian::new(k);
                h.add(&x).unwrap();
                h.hessian().unwrap()
            })
        };
        let a = run(1);
        let b = run(3);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn hessian_refuses_nan_activations_and_ragged_rows() {
        let mut h = Hessian::new(4);
        assert!(matches!(
            h.add(&[0.0, 1.0, f32::NAN, 2.0]),
            Err(PtqError::NonFinite { index: 2, .. })
        ));
        assert!(matches!(h.add(&[0.0; 5]), Err(PtqError::Length { .. })));
        assert_eq!(h.hessian(), Err(PtqError::NoTokens));
    }

    #[test]
    fn output_error_matches_direct_products() {
        let (n, k, t) = (5, 16, 40);
        let mut s = 11;
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
        let wq: Vec<f32> = w.iter().map(|v| (v * 8.0).round() / 8.0).collect();
        let mut h = Hessian::new(k);
        h.add(&x).unwrap();
        let got = output_error(&w, &wq, n, k, &h.gram().unwrap()).unwrap();
        let (mut e, mut sig) = (0.0f64, 0.0f64);
        for r in 0..t {
            for o in 0..n {
                let y: f64 =
                    (0..k).map(|c| f64::from(x[r * k + c]) * f64::from(w[o * k + c])).sum();
                let yq: f64 =
                    (0..k).map(|c| f64::from(x[r * k + c]) * f64::from(wq[o * k + c])).sum();
                e += (y - yq).powi(2);
                sig += y * y;
            }
        }
        assert!((got - e / sig).abs() < 1e-5 * (e / sig), "{got} vs {}", e / sig);
    }
    #[test]
    fn from_parts_rebuilds_an_accumulated_hessian() {
        let (k, t) = (9, 50);
        let mut s = 17;
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let mut h = Hessian::new(k);
        h.add(&x).unwrap();
        // The lower triangle of the parts is ignored (a device buffer may hold anything there).
        let mut upper = h.upper.clone();
        upper[k] = 123.0;
        let r = Hessian::from_parts(k, upper, h.abs_sum.clone(), h.tokens()).unwrap();
        assert_eq!(r.gram().unwrap(), h.gram().unwrap());
        assert_eq!(r.abs_mean().unwrap(), h.abs_mean().unwrap());
        assert!(matches!(
            Hessian::from_parts(k, vec![0.0; k * k - 1], vec![0.0; k], 1),
            Err(PtqError::Length { .. })
        ));
        let mut bad = h.upper.clone();
        bad[k + 2] = f64::NAN;
        assert!(matches!(
            Hessian::from_parts(k, bad, h.abs_sum.clone(), 1),
            Err(PtqError::NonFinite { .. })
        ));
        assert!(Hessian::from_parts(0, vec![], vec![], 1).is_err());
    }

    #[test]
    fn gram_quad_form_is_the_quad_form_sum() {
        let (n, k) = (70, 13);
        let mut s = 23;
        let g: Vec<f64> = (0..k * k).map(|_| f64::from(lcg(&mut s))).collect();
        let d: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
        let q = GramQuadForm::new(&g, k).unwrap();
        assert_eq!(q.sum(&d, n).unwrap().to_bits(), quad_form_sum(&d, &d, k, &g).to_bits());
        assert!(q.sum(&d[1..], n).is_err());
        assert!(GramQuadForm::new(&g[1..], k).is_err());
    }
}
