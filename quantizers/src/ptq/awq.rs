//! AWQ (Lin et al. 2023): per-input-channel scales `s` that protect the channels with large
//! activations, searched per group of linears sharing one input, then a per-group clipping
//! range search. Facts from the paper and AutoAWQ (`_search_best_scale`, `_compute_best_clip`);
//! this is an independent implementation.
//!
//! Scale search: for `α = 0, 1/n_grid, …, (n_grid−1)/n_grid`, `s = max(mean|x|^α, 1e-4)`
//! normalised to `s / √(max s · min s)` (non-finite entries → 1); every linear of the group is
//! quantized as `Ŵ = Q(W·diag(s))·diag(s)⁻¹` — the quantizer is the target layout's own RTN with
//! scales rounded to the stored dtype — and the `α` with the smallest summed output error
//! `Σ ‖X·Wᵀ − X·Ŵᵀ‖²` wins. `α = 0` is plain RTN, so the choice is never worse than RTN on the
//! calibration set. Where AutoAWQ measures the error after the whole attention / MLP module and
//! optionally mixes in weight magnitudes (`duo_scaling`), qtool measures it at the outputs of
//! the linears themselves, with the activation-only formula of the paper; the error is exact
//! over every calibration token through `XᵀX` (see [`super`]).
//!
//! Clip search (not for q/k, as AutoAWQ): for every output row and group, `max = max|w|`,
//! shrunk by `1 − i/clip_grid` for `i < max_shrink · clip_grid`; the clamp `[−m, m]` with the
//! smallest `Δᵀ·(XᵀX)_gg·Δ` (`Δ` = quantized clamped group − original group) is kept.

use rayon::prelude::*;

use crate::int::rtn::{encode, group_params};
use crate::int::{dequantize, quantize_for_storage, GroupSize, RtnConfig, ScaleDtype};

use super::error::{check_finite, check_len, PtqError, PtqResult};
use super::hessian::{GramQuadForm, QuadForm};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqConfig {
    pub rtn: RtnConfig,
    pub scale_dtype: ScaleDtype,
    /// α steps of the scale search (20 in AutoAWQ).
    pub n_grid: usize,
    /// Clip search: largest fraction of `max|w|` removed (0.5 in AutoAWQ).
    pub max_shrink: f32,
    /// Clip search: shrink steps per unit (20 in AutoAWQ).
    pub clip_grid: usize,
}

impl AwqConfig {
    pub fn new(rtn: RtnConfig, scale_dtype: ScaleDtype) -> Self {
        AwqConfig { rtn, scale_dtype, n_grid: 20, max_shrink: 0.5, clip_grid: 20 }
    }
}

/// The winning scales of one group of linears.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSearch {
    /// Per input channel; the linears' weights are multiplied by it (columns) and the producer
    /// of their input divided by it.
    pub scales: Vec<f32>,
    pub alpha: f32,
    /// Summed `Σ Δᵀ·gram·Δ` of the winner and of plain RTN (`α = 0`).
    pub error: f64,
    pub rtn_error: f64,
}

/// Rows per task of [`group_error`]'s rounding: RTN's parameters are per row (and group), so
/// rounding a block of rows alone gives the rows' values of rounding the whole matrix.
const ERROR_ROWS: usize = 32;

/// `W − Q(W·diag s)·diag(s)⁻¹` of one `[N, K]` linear: the weight change the scale-search
/// error measures. The rounding runs per block of rows in parallel (every value is the same as
/// rounding the whole matrix at once).
pub fn scaled_residual(
    w: &[f32],
    n: usize,
    k: usize,
    s: &[f32],
    cfg: &AwqConfig,
) -> PtqResult<Vec<f32>> {
    check_len("weight", n * k, w.len())?;
    check_len("scales", k, s.len())?;
    let mut d = vec![0.0f32; n * k];
    let rows_k = (ERROR_ROWS * k).max(1);
    let done = d.par_chunks_mut(rows_k).zip(w.par_chunks(rows_k)).try_for_each(
        |(dc, wc)| -> PtqResult<()> {
            let rows = wc.len() / k;
            let ws: Vec<f32> =
                wc.chunks_exact(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect();
            let q = quantize_for_storage(&ws, rows, k, &cfg.rtn, None, cfg.scale_dtype)?;
            let deq = dequantize(&q)?;
            for ((dr, wr), qr) in
                dc.chunks_exact_mut(k).zip(wc.chunks_exact(k)).zip(deq.chunks_exact(k))
            {
                for (((o, a), b), c) in dr.iter_mut().zip(wr).zip(qr).zip(s) {
                    *o = a - b / c;
                }
            }
            Ok(())
        },
    );
    if done.is_err() {
        // Rounding the whole matrix names the first bad value by its row in the matrix.
        let ws: Vec<f32> =
            w.chunks_exact(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect();
        quantize_for_storage(&ws, n, k, &cfg.rtn, None, cfg.scale_dtype)?;
        done?;
    }
    Ok(d)
}

/// `Σ ‖X(W − Ŵ)ᵀ‖²/T` of `linears` quantized with input scales `s`: [`scaled_residual`] per
/// linear, then `gram` takes the quadratic form.
fn group_error(
    linears: &[(&[f32], usize)],
    k: usize,
    s: &[f32],
    gram: &dyn QuadForm,
    cfg: &AwqConfig,
) -> PtqResult<f64> {
    let mut total = 0.0;
    for &(w, n) in linears {
        let d = scaled_residual(w, n, k, s, cfg)?;
        total += gram.sum(&d, n)?;
    }
    Ok(total)
}

/// Searches the input scales of a group of linears (`[N_i, K]` weights) sharing one input with
/// statistics `gram` (`XᵀX/T`, `K×K`) and `x_absmean` (`mean|x|`, `K`).
pub fn search_scales(
    linears: &[(&[f32], usize)],
    k: usize,
    gram: &[f64],
    x_absmean: &[f32],
    cfg: &AwqConfig,
) -> PtqResult<ScaleSearch> {
    check_len("gram", k * k, gram.len())?;
    check_len("activation mean", k, x_absmean.len())?;
    check_finite("gram", gram)?;
    search_scales_with(linears, &GramQuadForm::new(gram, k)?, x_absmean, cfg)
}

/// [`search_scales`] with the quadratic forms evaluated by `gram` (e.g. on a GPU): the
/// expensive part of the search, `2·N·K²` per linear and α.
pub fn search_scales_with(
    linears: &[(&[f32], usize)],
    gram: &dyn QuadForm,
    x_absmean: &[f32],
    cfg: &AwqConfig,
) -> PtqResult<ScaleSearch> {
    let k = gram.k();
    check_len("activation mean", k, x_absmean.len())?;
    check_finite("activation mean", x_absmean)?;
    if cfg.n_grid == 0 || linears.is_empty() {
        return Err(PtqError::Config("AWQ needs at least one linear and one grid step".into()));
    }
    for &(w, n) in linears {
        check_len("weight", n * k, w.len())?;
    }
    let mut best: Option<ScaleSearch> = None;
    let mut rtn_error = 0.0;
    for step in 0..cfg.n_grid {
        let alpha = step as f32 / cfg.n_grid as f32;
        let s = scales_for(x_absmean, alpha);
        let err = group_error(linears, k, &s, gram, cfg)?;
        if step == 0 {
            rtn_error = err;
        }
        if best.as_ref().is_none_or(|b| err < b.error) {
            best = Some(ScaleSearch { scales: s, alpha, error: err, rtn_error: 0.0 });
        }
    }
    let mut best = best.expect("n_grid > 0");
    best.rtn_error = rtn_error;
    Ok(best)
}

/// The input scales of grid step `α`: `s = max(x^α, 1e-4) / √(max·min)`, non-finite → 1.
pub fn scales_for(x_absmean: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = x_absmean.iter().map(|&x| x.powf(alpha).max(1e-4)).collect();
    let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mn = s.iter().copied().fold(f32::INFINITY, f32::min);
    let norm = (mx * mn).sqrt();
    s.into_iter()
        .map(|v| {
            let r = v / norm;
            if r.is_finite() {
                r
            } else {
                1.0
            }
        })
        .collect()
}

/// The clipped weight and the chosen clip per (row, group).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipResult {
    /// `[N, K]`: `w` clamped to `[−max_val, max_val]` per group.
    pub w: Vec<f32>,
    /// `[N, G]`.
    pub max_val: Vec<f32>,
    /// `Σ Δᵀ·gram_gg·Δ` with and without clipping (block-diagonal part of the error).
    pub error: f64,
    pub unclipped_error: f64,
}

/// Clip search on `w` (`[N, K]`, already multiplied by the AWQ scales) whose input statistics
/// are `gram` (`K×K`, of the scaled input `x / s`).
pub fn clip_search(
    w: &[f32],
    n: usize,
    k: usize,
    gram: &[f64],
    cfg: &AwqConfig,
) -> PtqResult<ClipResult> {
    check_len("weight", n * k, w.len())?;
    check_len("gram", k * k, gram.len())?;
    check_finite("gram", gram)?;
    check_finite("weight", w)?;
    let groups = cfg.rtn.group_size.num_groups(k)?;
    let gs = match cfg.rtn.group_size {
        GroupSize::PerChannel => k,
        GroupSize::Size(g) => g,
    };
    let steps = clip_steps(cfg);
    let rows: Vec<(Vec<f32>, Vec<f32>, f64, f64)> = w
        .par_chunks(k)
        .map(|row| {
            let mut out = row.to_vec();
            let mut maxes = Vec::with_capacity(groups);
            let (mut err_total, mut unclipped_total) = (0.0, 0.0);
            let mut cur = vec![0.0f32; gs];
            let mut delta = vec![0.0f64; gs];
            for g in 0..groups {
                let orig = &row[g * gs..(g + 1) * gs];
                let org_max = orig.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
                let mut best = (f64::INFINITY, org_max);
                let mut unclipped = 0.0;
                for i in 0..steps {
                    let mv = org_max * (1.0 - i as f32 / cfg.clip_grid as f32);
                    for (c, &x) in cur.iter_mut().zip(orig) {
                        *c = x.clamp(-mv, mv);
                    }
                    fake_quant(cfg, &mut cur);
                    for ((d, &q), &x) in delta.iter_mut().zip(&cur).zip(orig) {
                        *d = f64::from(q) - f64::from(x);
                    }
                    let err = block_quad(&delta, gram, k, g * gs);
                    if i == 0 {
                        unclipped = err;
                    }
                    if err < best.0 {
                        best = (err, mv);
                    }
                }
                let mv = best.1;
                for (o, &x) in out[g * gs..(g + 1) * gs].iter_mut().zip(orig) {
                    *o = x.clamp(-mv, mv);
                }
                maxes.push(mv);
                err_total += best.0;
                unclipped_total += unclipped;
            }
            (out, maxes, err_total, unclipped_total)
        })
        .collect();
    let mut res = ClipResult {
        w: Vec::with_capacity(n * k),
        max_val: Vec::with_capacity(n * groups),
        error: 0.0,
        unclipped_error: 0.0,
    };
    for (o, m, e, u) in rows {
        res.w.extend(o);
        res.max_val.extend(m);
        res.error += e;
        res.unclipped_error += u;
    }
    Ok(res)
}

/// The clip search's shrink steps per group: `max_shrink · clip_grid`, at least one.
pub fn clip_steps(cfg: &AwqConfig) -> usize {
    ((cfg.max_shrink * cfg.clip_grid as f32) as usize).max(1)
}

/// Quantize-dequantize one group in place with the layout's formula and stored scale precision.
fn fake_quant(cfg: &AwqConfig, v: &mut [f32]) {
    let (lo, hi) =
        v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    let (s, z) = group_params(&cfg.rtn, lo, hi);
    let s = cfg.scale_dtype.round(s);
    for x in v.iter_mut() {
        let code = encode(&cfg.rtn, *x, s, z);
        *x = s * (f32::from(code) - f32::from(z));
    }
}

/// `δᵀ·G[o..o+m, o..o+m]·δ`.
fn block_quad(delta: &[f64], g: &[f64], k: usize, o: usize) -> f64 {
    let m = delta.len();
    let mut s = 0.0;
    for i in 0..m {
        let row = &g[(o + i) * k + o..(o + i) * k + o + m];
        let t: f64 = row.iter().zip(delta).map(|(a, b)| a * b).sum();
        s += delta[i] * t;
    }
    s
}

/// `diag(1/s)·G·diag(1/s)`: the statistics of the input `x / s` a scaled linear sees.
pub fn scale_gram(gram: &[f64], k: usize, s: &[f32]) -> Vec<f64> {
    let mut out = gram.to_vec();
    for i in 0..k {
        for j in 0..k {
            out[i * k + j] /= f64::from(s[i]) * f64::from(s[j]);
        }
    }
    out
}
