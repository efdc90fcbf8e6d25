//! GPTQ (Frantar et al. 2022): quantize a weight `W[N, K]` column by column, each column's
//! rounding error spread over the not-yet-quantized columns through the inverse Hessian of the
//! layer-wise loss `‖XWᵀ − XQᵀ‖²`, `H = 2XᵀX/T`.
//!
//! Steps, as in the authors' reference `fasterquant` (facts from the paper and its code; this is
//! an independent implementation):
//! 1. Dead inputs (`H_ii = 0`, a channel the calibration never excited) get `H_ii = 1` and a zero
//!    weight column.
//! 2. Act-order (`--act-order`): columns are visited in descending `diag(H)` (stable for ties).
//!    With static groups the (scale, zero) of each group are fixed up front from the original
//!    column order (AutoGPTQ/GPTQModel `static_groups`), so the checkpoint needs no `g_idx`
//!    reordering; without, groups form in visiting order and `g_idx` records them.
//! 3. Dampening: `H += damp · mean(diag H) · I`. If the Cholesky still fails, `damp` doubles up
//!    to [`GptqConfig::max_damp`]; past that the layer falls back to round-to-nearest and the
//!    result says so ([`GptqOutput::fallback`]) — never a silently wrong weight.
//! 4. `U` = upper Cholesky factor of `H⁻¹` ([`super::linalg`]).
//! 5. Lazy blocks of `block_size` columns: inside a block, column `i` is quantized, its scaled
//!    error `e = (w − q)/U_ii` updates the block's remaining columns with `U[i, i:]`; at the block
//!    end one GEMM applies the block's errors to every later column.
//!
//! One reference quirk is kept on purpose so that results match it: without static groups, a
//! group's parameters are computed from the weights as they stood at the start of the current
//! lazy block (the reference reads the outer `W`, which is only updated at block ends). With
//! `group_size = block_size` (the common 128) this is the same as the current weights.
//!
//! Rows are independent given `U`, so row chunks run in parallel; the result does not depend
//! on the thread count.

use rayon::prelude::*;

use crate::int::rtn::{encode, group_params, normalize_g_idx};
use crate::int::{quantize_for_storage, GroupSize, QuantizedInt, RtnConfig, ScaleDtype};

use super::error::{check_finite, check_len, PtqError, PtqResult};
use super::gemm::{sgemm, View};
use super::linalg::inverse_upper_cholesky;

/// Rows handled by one task.
const ROW_CHUNK: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    /// Bits, group size, symmetry and the target layout's scale/zero formula.
    pub rtn: RtnConfig,
    /// The dtype the checkpoint stores scales in: scales are rounded to it before any code is
    /// chosen, so the error GPTQ compensates is the error of the stored weights.
    pub scale_dtype: ScaleDtype,
    /// Fraction of `mean(diag H)` added to the diagonal (`--damp`, 0.01 by default).
    pub damp: f64,
    /// Largest dampening fraction tried before falling back to RTN.
    pub max_damp: f64,
    pub act_order: bool,
    pub static_groups: bool,
    /// Lazy-update block width (128 in the reference).
    pub block_size: usize,
}

impl GptqConfig {
    /// The reference defaults: damp 0.01 (doubling up to 1.0), block 128, static groups with
    /// act-order.
    pub fn new(rtn: RtnConfig, scale_dtype: ScaleDtype) -> Self {
        GptqConfig {
            rtn,
            scale_dtype,
            damp: 0.01,
            max_damp: 1.0,
            act_order: false,
            static_groups: true,
            block_size: 128,
        }
    }

    fn check(&self) -> PtqResult<()> {
        if !(self.damp >= 0.0 && self.damp.is_finite() && self.max_damp.is_finite()) {
            return Err(PtqError::Config(format!(
                "damp {} must be a finite number ≥ 0",
                self.damp
            )));
        }
        if self.block_size == 0 {
            return Err(PtqError::Config("block size 0".into()));
        }
        Ok(())
    }
}

/// The factorized Hessian of one layer input, shared by every linear that reads that input
/// (q/k/v, gate/up): act-order permutation, dead columns and `U`, or the reason there is none.
#[derive(Debug, Clone)]
pub struct Prepared {
    k: usize,
    /// Visiting order: `perm[j]` is the original column quantized j-th.
    perm: Vec<usize>,
    dead: Vec<bool>,
    /// `U` (`K×K`, upper, in visiting order) or the fallback reason.
    factor: Result<Vec<f32>, String>,
    /// The dampening fraction that made `H` factorizable.
    damp: Option<f64>,
}

impl Prepared {
    /// Dampening fraction used, `None` when the layer falls back to RTN.
    pub fn damp(&self) -> Option<f64> {
        self.damp
    }

    /// Why GPTQ cannot run on this Hessian (the layer is then quantized by RTN).
    pub fn fallback(&self) -> Option<&str> {
        self.factor.as_ref().err().map(String::as_str)
    }

    /// Factorizes `h` (`K×K`, symmetric, f64) for `cfg`.
    pub fn new(h: &[f64], k: usize, cfg: &GptqConfig) -> PtqResult<Prepared> {
        cfg.check()?;
        check_len("hessian", k * k, h.len())?;
        check_finite("hessian", h)?;
        let mut h = h.to_vec();
        let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] == 0.0).collect();
        for (i, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
            h[i * k + i] = 1.0;
        }
        let mut perm: Vec<usize> = (0..k).collect();
        if cfg.act_order {
            perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
        }
        let mut hp = vec![0.0f64; k * k];
        for (a, &pa) in perm.iter().enumerate() {
            for (b, &pb) in perm.iter().enumerate() {
                hp[a * k + b] = h[pa * k + pb];
            }
        }
        let mean_diag = (0..k).map(|i| hp[i * k + i]).sum::<f64>() / k.max(1) as f64;
        let mut damp = cfg.damp;
        let mut tried = Vec::new();
        loop {
            let mut hd = hp.clone();
            for i in 0..k {
                hd[i * k + i] += damp * mean_diag;
            }
            tried.push(damp);
            match inverse_upper_cholesky(&hd, k) {
                Ok(u) => {
                    let u = u.into_iter().map(|v| v as f32).collect();
                    return Ok(Prepared { k, perm, dead, factor: Ok(u), damp: Some(damp) });
                }
                Err(pivot) if damp >= cfg.max_damp || mean_diag <= 0.0 => {
                    let reason = format!(
                        "Hessian not positive definite (pivot {} in visiting order) after dampening {}; quantized by RTN",
                        pivot,
                        tried.iter().map(|d| format!("{d}")).collect::<Vec<_>>().join(", ")
                    );
                    return Ok(Prepared { k, perm, dead, factor: Err(reason), damp: None });
                }
                Err(_) => damp = (damp * 2.0).max(1e-4).min(cfg.max_damp),
            }
        }
    }
}

/// A GPTQ-quantized weight and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqOutput {
    pub q: QuantizedInt,
    /// Dampening fraction used (`None`: RTN fallback).
    pub damp: Option<f64>,
    /// Set when the layer was quantized by RTN instead, with the reason.
    pub fallback: Option<String>,
    /// The reference's loss, `Σ (w − q)² / U_ii² / 2` (0 for a fallback).
    pub loss: f64,
}

/// GPTQ of `w` (`[N, K]` row-major f32) with the Hessian `h` (`K×K`).
pub fn quantize(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    cfg: &GptqConfig,
) -> PtqResult<GptqOutput> {
    let prep = Prepared::new(h, k, cfg)?;
    quantize_prepared(w, n, k, &prep, cfg)
}

/// GPTQ of `w` with an already factorized Hessian.
pub fn quantize_prepared(
    w: &[f32],
    n: usize,
    k: usize,
    prep: &Prepared,
    cfg: &GptqConfig,
) -> PtqResult<GptqOutput> {
    cfg.check()?;
    if n == 0 || k == 0 {
        return Err(crate::int::IntError::EmptyShape { n, k }.into());
    }
    check_len("weight", n * k, w.len())?;
    if prep.k != k {
        return Err(PtqError::Length { what: "hessian", expected: k * k, got: prep.k * prep.k });
    }
    let groups = cfg.rtn.group_size.num_groups(k)?;
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(
            crate::int::IntError::NonFiniteWeight { row: i / k, col: i % k, value: w[i] }.into()
        );
    }
    let u = match &prep.factor {
        Ok(u) => u,
        Err(reason) => {
            let q = quantize_for_storage(w, n, k, &cfg.rtn, None, cfg.scale_dtype)?;
            return Ok(GptqOutput { q, damp: None, fallback: Some(reason.clone()), loss: 0.0 });
        }
    };
    let chunks: Vec<Chunk> = w
        .par_chunks(ROW_CHUNK * k)
        .map(|rows| quantize_rows(rows, k, groups, prep, u, cfg))
        .collect();

    let mut q = QuantizedInt {
        bits: cfg.rtn.bits,
        n,
        k,
        group_size: cfg.rtn.group_size,
        symmetric: cfg.rtn.symmetric,
        codes: Vec::with_capacity(n * k),
        scales: vec![0.0; groups * n],
        zeros: vec![0; groups * n],
        g_idx: None,
    };
    let mut loss = 0.0;
    let mut r0 = 0;
    for c in chunks {
        let rows = c.codes.len() / k;
        for g in 0..groups {
            for r in 0..rows {
                q.scales[g * n + r0 + r] = c.scales[g * rows + r];
                q.zeros[g * n + r0 + r] = c.zeros[g * rows + r];
            }
        }
        q.codes.extend_from_slice(&c.codes);
        loss += c.loss;
        r0 += rows;
    }
    if let (GroupSize::Size(gs), true, false) =
        (cfg.rtn.group_size, cfg.act_order, cfg.static_groups)
    {
        let mut g_idx = vec![0u32; k];
        for (j, &c) in prep.perm.iter().enumerate() {
            g_idx[c] = (j / gs) as u32;
        }
        q.g_idx = normalize_g_idx(g_idx, k, cfg.rtn.group_size);
    }
    q.validate()?;
    Ok(GptqOutput { q, damp: prep.damp, fallback: None, loss })
}

/// The result of one row chunk: codes `[R, K]` in original column order, params `[G, R]`.
struct Chunk {
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<u8>,
    loss: f64,
}

/// `(scale, zero)` of the values `v` with the stored scale precision.
fn params(cfg: &GptqConfig, v: impl Iterator<Item = f32>) -> (f32, u8) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for x in v {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let (s, z) = group_params(&cfg.rtn, lo, hi);
    (cfg.scale_dtype.round(s), z)
}

fn quantize_rows(
    rows_in: &[f32],
    k: usize,
    groups: usize,
    prep: &Prepared,
    u: &[f32],
    cfg: &GptqConfig,
) -> Chunk {
    let r = rows_in.len() / k;
    let perm = &prep.perm;
    let mut out = Chunk {
        codes: vec![0; r * k],
        scales: vec![0.0; groups * r],
        zeros: vec![0; groups * r],
        loss: 0.0,
    };
    let set = |out: &mut Chunk, g: usize, row: usize, (s, z): (f32, u8)| {
        out.scales[g * r + row] = s;
        out.zeros[g * r + row] = z;
    };
    let gs = match cfg.rtn.group_size {
        GroupSize::PerChannel => {
            // The reference fixes per-channel parameters before zeroing dead columns.
            for row in 0..r {
                set(&mut out, 0, row, params(cfg, rows_in[row * k..(row + 1) * k].iter().copied()));
            }
            None
        }
        GroupSize::Size(g) => Some(g),
    };
    let mut wo = rows_in.to_vec();
    for (c, _) in prep.dead.iter().enumerate().filter(|(_, d)| **d) {
        for row in 0..r {
            wo[row * k + c] = 0.0;
        }
    }
    let static_groups = gs.filter(|_| cfg.static_groups);
    if let Some(g) = static_groups {
        for grp in 0..groups {
            for row in 0..r {
                let v = wo[row * k + grp * g..row * k + (grp + 1) * g].iter().copied();
                set(&mut out, grp, row, params(cfg, v));
            }
        }
    }
    // Working copy in visiting order.
    let mut wp = vec![0.0f32; r * k];
    for row in 0..r {
        for (j, &c) in perm.iter().enumerate() {
            wp[row * k + j] = wo[row * k + c];
        }
    }
    let bs = cfg.block_size;
    let mut w1 = vec![0.0f32; r * bs];
    let mut err1 = vec![0.0f32; r * bs];
    for i1 in (0..k).step_by(bs) {
        let i2 = (i1 + bs).min(k);
        let cnt = i2 - i1;
        for row in 0..r {
            w1[row * cnt..(row + 1) * cnt].copy_from_slice(&wp[row * k + i1..row * k + i2]);
        }
        for i in 0..cnt {
            let col = i1 + i;
            let group = match gs {
                None => 0,
                Some(g) if static_groups.is_some() => perm[col] / g,
                Some(g) => {
                    if col % g == 0 {
                        // Parameters from the weights as of this block's start (see module doc).
                        let end = (col + g).min(k);
                        for row in 0..r {
                            let v = wp[row * k + col..row * k + end].iter().copied();
                            set(&mut out, col / g, row, params(cfg, v));
                        }
                    }
                    col / g
                }
            };
            let d = u[col * k + col];
            let urow = &u[col * k + i1..col * k + i2];
            for row in 0..r {
                let s = out.scales[group * r + row];
                let z = out.zeros[group * r + row];
                let x = w1[row * cnt + i];
                let code = encode(&cfg.rtn, x, s, z);
                let deq = s * (f32::from(code) - f32::from(z));
                out.codes[row * k + perm[col]] = code;
                let e = (x - deq) / d;
                out.loss += f64::from(e) * f64::from(e) / 2.0;
                err1[row * cnt + i] = e;
                let wrow = &mut w1[row * cnt..(row + 1) * cnt];
                for (wv, &uv) in wrow[i..].iter_mut().zip(&urow[i..]) {
                    *wv -= e * uv;
                }
            }
        }
        if i2 < k {
            // wp[:, i2:] -= err1 · U[i1:i2, i2:]
            sgemm(
                -1.0,
                &err1,
                View::new(r, cnt, cnt, 0),
                u,
                View::new(cnt, k - i2, k, i1 * k + i2),
                1.0,
                &mut wp,
                View::new(r, k - i2, k, i2),
            );
        }
    }
    out
}
