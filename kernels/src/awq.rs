//! AWQ's two searches on the GPU, bit-equal to the host code in `qtool_quantizers::ptq::awq`
//! (that code stays the oracle and the fallback).
//!
//! - [`search_scales`]: the weights of a group of linears go up once; per grid step `α` only
//!   the `K` scales do. `awq_scaled_residual` rounds `W·diag(s)` with the layout's own RTN
//!   formulas and writes `W − Q(W·s)/s` in f64 straight into the quadratic form's DGEMM input,
//!   so nothing weight-sized crosses the bus per step. The residuals equal the host's
//!   `scaled_residual` exactly and the quadratic form is the same DGEMM the pipeline used
//!   before, so the chosen `α` and scales are the same as the host search over a device gram.
//! - [`clip_search`]: one warp per (row, group) runs every shrink step (clamp, fake-quantize,
//!   `δᵀ·G'_gg·δ` with the host's summation order) against the diagonal blocks of the scaled
//!   gram, built on the device from the gram the scale search already holds.
//!
//! Either returns `Ok(None)` where the host must decide instead: a value the host rejects with
//! a precise error (a non-finite weight or gram entry, a stored scale of 0), or a shape the
//! kernels do not take (a group wider than [`MAX_CLIP_GROUP`], a grid over the launch limits).

use std::ffi::c_int;

use cudarc::driver::{CudaSlice, PushKernelArg};

use qtool_quantizers::int::rtn::{Convention, ScaleDtype};
use qtool_quantizers::int::GroupSize;
use qtool_quantizers::ptq::awq::{clip_steps, scales_for};
use qtool_quantizers::ptq::{AwqConfig, ClipResult, ScaleSearch};

use crate::error::KResult;
use crate::gptq::{dim, gram_quad, GptqGpu, EW_THREADS, SRC};
use crate::launch::{blocks, config, launch};

/// Widest group the clip kernel takes (its per-warp buffers stay within 32 KiB of shared
/// memory); per-channel clipping of wider inputs runs on the host.
pub const MAX_CLIP_GROUP: usize = 1024;
/// Rows per CTA of `awq_scaled_residual` (one warp each).
const RESIDUAL_ROWS: usize = 8;
/// Largest `gridDim.y`.
const GRID_Y_MAX: usize = 65_535;

/// The RTN parameters as the kernels take them.
struct Rtn {
    conv: c_int,
    sym: c_int,
    maxq: f32,
    mid: f32,
    sdt: c_int,
}

impl Rtn {
    fn of(cfg: &AwqConfig) -> Rtn {
        let r = &cfg.rtn;
        Rtn {
            conv: match r.convention {
                Convention::Gptq => 0,
                Convention::Awq => 1,
                Convention::CompressedTensors => 2,
            },
            sym: r.symmetric as c_int,
            maxq: r.bits.max_code() as f32,
            mid: r.bits.mid() as f32,
            sdt: match cfg.scale_dtype {
                ScaleDtype::F32 => 0,
                ScaleDtype::F16 => 1,
                ScaleDtype::BF16 => 2,
            },
        }
    }
}

/// Columns per quantization group of `k` inputs, for configurations the host's RTN accepts
/// (AWQ's convention is asymmetric only) whose group size divides `k`.
fn group_cols(cfg: &AwqConfig, k: usize) -> Option<usize> {
    if cfg.rtn.convention == Convention::Awq && cfg.rtn.symmetric {
        return None;
    }
    match cfg.rtn.group_size {
        GroupSize::PerChannel => Some(k),
        GroupSize::Size(g) if g > 0 && k % g == 0 => Some(g),
        GroupSize::Size(_) => None,
    }
}

/// `W − Q(W·diag s)·diag(s)⁻¹` of the `[n, k]` device weight `w` into `d` (f64, at least
/// `n·k`); `false` where the host would reject a value.
#[allow(clippy::too_many_arguments)]
fn scaled_residual_into(
    g: &GptqGpu<'_>,
    w: &CudaSlice<f32>,
    s: &CudaSlice<f32>,
    n: usize,
    k: usize,
    cols: usize,
    rtn: &Rtn,
    d: &mut CudaSlice<f64>,
    bad: &mut CudaSlice<i32>,
) -> KResult<()> {
    let gpu = g.gpu();
    let groups = k / cols;
    let (ni, ki, ci) = (dim(n, "N")?, dim(k, "K")?, dim(cols, "group")?);
    let f = gpu.function(&SRC, "awq_scaled_residual")?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(w).arg(s).arg(&ni).arg(&ki).arg(&ci).arg(&rtn.conv).arg(&rtn.sym).arg(&rtn.maxq);
    b.arg(&rtn.mid).arg(&rtn.sdt).arg(d).arg(bad);
    let grid = (dim(groups, "groups")? as u32, blocks(n, RESIDUAL_ROWS)?, 1);
    launch(gpu, &f, "awq_scaled_residual", b, config(grid, ((RESIDUAL_ROWS * 32) as u32, 1, 1), 0))
}

/// [`scaled_residual_into`] of host inputs, downloaded: the residual the scale search's
/// quadratic form sees (for tests against the host's `scaled_residual`). `None` where the host
/// must decide.
pub fn scaled_residual(
    g: &GptqGpu<'_>,
    w: &[f32],
    n: usize,
    k: usize,
    s: &[f32],
    cfg: &AwqConfig,
) -> KResult<Option<Vec<f64>>> {
    let Some(cols) = group_cols(cfg, k) else { return Ok(None) };
    if w.len() != n * k || s.len() != k || n * k == 0 || n.div_ceil(RESIDUAL_ROWS) > GRID_Y_MAX {
        return Ok(None);
    }
    let gpu = g.gpu();
    let (w_d, s_d) = (gpu.upload(w)?, gpu.upload(s)?);
    let mut d = gpu.zeros::<f64>(n * k)?;
    let mut bad = gpu.zeros::<i32>(1)?;
    scaled_residual_into(g, &w_d, &s_d, n, k, cols, &Rtn::of(cfg), &mut d, &mut bad)?;
    if gpu.download(&bad)?[0] != 0 {
        return Ok(None);
    }
    Ok(Some(gpu.download(&d)?))
}

/// AWQ's scale search over the device `gram` (`XᵀX/T`, `K×K` f64) for `linears` (`[N_i, K]`)
/// sharing one input with `mean|x|` = `x_absmean`: the host's `search_scales_with` with every
/// step on the device. `None` where the host must run it.
pub fn search_scales(
    g: &GptqGpu<'_>,
    gram: &CudaSlice<f64>,
    k: usize,
    linears: &[(&[f32], usize)],
    x_absmean: &[f32],
    cfg: &AwqConfig,
) -> KResult<Option<ScaleSearch>> {
    let Some(cols) = group_cols(cfg, k) else { return Ok(None) };
    let sane = cfg.n_grid > 0
        && !linears.is_empty()
        && x_absmean.len() == k
        && x_absmean.iter().all(|v| v.is_finite())
        && gram.len() >= k * k
        && linears.iter().all(|&(w, n)| {
            w.len() == n * k && n * k > 0 && n.div_ceil(RESIDUAL_ROWS) <= GRID_Y_MAX
        });
    if !sane {
        return Ok(None);
    }
    let gpu = g.gpu();
    let rtn = Rtn::of(cfg);
    let weights =
        linears.iter().map(|&(w, _)| gpu.upload(w)).collect::<KResult<Vec<CudaSlice<f32>>>>()?;
    let most = linears.iter().map(|&(_, n)| n * k).max().unwrap_or(0);
    dim(most, "rows·K")?;
    let mut d = gpu.zeros::<f64>(most)?;
    let mut p = gpu.zeros::<f64>(most)?;
    let mut bad = gpu.zeros::<i32>(1)?;
    let mut best: Option<ScaleSearch> = None;
    let mut rtn_error = 0.0;
    for step in 0..cfg.n_grid {
        let alpha = step as f32 / cfg.n_grid as f32;
        let s = scales_for(x_absmean, alpha);
        let s_d = gpu.upload(&s)?;
        let mut err = 0.0;
        for (w_d, &(_, n)) in weights.iter().zip(linears) {
            scaled_residual_into(g, w_d, &s_d, n, k, cols, &rtn, &mut d, &mut bad)?;
            err += gram_quad(g, gram, &d, &mut p, k, n)?;
        }
        if gpu.download(&bad)?[0] != 0 {
            return Ok(None);
        }
        if step == 0 {
            rtn_error = err;
        }
        if best.as_ref().is_none_or(|b| err < b.error) {
            best = Some(ScaleSearch { scales: s, alpha, error: err, rtn_error: 0.0 });
        }
    }
    Ok(best.map(|mut b| {
        b.rtn_error = rtn_error;
        b
    }))
}

/// AWQ's clip search of `w` (`[n, k]` host, already multiplied by the column scales
/// `col_scale`) against the device `gram` of the unscaled input (`K×K` f64): the host's
/// `clip_search(w, n, k, scale_gram(gram, k, col_scale), cfg)`, bit for bit. `None` where the
/// host must run it.
pub fn clip_search(
    g: &GptqGpu<'_>,
    gram: &CudaSlice<f64>,
    w: &[f32],
    n: usize,
    k: usize,
    col_scale: Option<&[f32]>,
    cfg: &AwqConfig,
) -> KResult<Option<ClipResult>> {
    let Some(gs) = group_cols(cfg, k) else { return Ok(None) };
    let warps = (2048 / gs).clamp(1, 8);
    let sane = gs <= MAX_CLIP_GROUP
        && w.len() == n * k
        && n * k > 0
        && gram.len() >= k * k
        && col_scale.is_none_or(|s| s.len() == k)
        && n.div_ceil(warps) <= GRID_Y_MAX
        && cfg.clip_grid > 0
        && w.iter().all(|v| v.is_finite());
    if !sane {
        return Ok(None);
    }
    let gpu = g.gpu();
    let groups = k / gs;
    let (ki, gsi, gi, ni) = (dim(k, "K")?, dim(gs, "group")?, dim(groups, "groups")?, dim(n, "N")?);
    let mut bad = gpu.zeros::<i32>(1)?;

    // The diagonal blocks of diag(1/s)·G·diag(1/s), per group transposed.
    dim(groups * gs * gs, "groups·group²")?;
    let mut bd = gpu.zeros::<f64>(groups * gs * gs)?;
    let s_d = match col_scale {
        Some(s) => Some(gpu.upload(s)?),
        None => None,
    };
    let f = gpu.function(&SRC, "awq_clip_gram")?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(gram);
    let null = 0u64;
    match &s_d {
        Some(s) => b.arg(s),
        None => b.arg(&null),
    };
    b.arg(&ki).arg(&gsi).arg(&gi).arg(&mut bd).arg(&mut bad);
    launch(
        gpu,
        &f,
        "awq_clip_gram",
        b,
        config(GptqGpu::ew_grid(groups * gs * gs)?, (EW_THREADS, 1, 1), 0),
    )?;

    let rtn = Rtn::of(cfg);
    let steps = dim(clip_steps(cfg), "clip steps")?;
    let clip_grid = dim(cfg.clip_grid, "clip grid")?;
    let w_d = gpu.upload(w)?;
    let mut w_out = gpu.zeros::<f32>(n * k)?;
    let mut max_val = gpu.zeros::<f32>(n * groups)?;
    let mut err_best = gpu.zeros::<f64>(n * groups)?;
    let mut err_first = gpu.zeros::<f64>(n * groups)?;
    let f = gpu.function(&SRC, "awq_clip")?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(&w_d).arg(&bd).arg(&ni).arg(&ki).arg(&gsi).arg(&steps).arg(&clip_grid);
    b.arg(&rtn.conv).arg(&rtn.sym).arg(&rtn.maxq).arg(&rtn.mid).arg(&rtn.sdt);
    b.arg(&mut w_out).arg(&mut max_val).arg(&mut err_best).arg(&mut err_first).arg(&mut bad);
    let smem = (warps * 2 * gs * std::mem::size_of::<f64>()) as u32;
    let grid = (gi as u32, blocks(n, warps)?, 1);
    launch(gpu, &f, "awq_clip", b, config(grid, ((warps * 32) as u32, 1, 1), smem))?;
    if gpu.download(&bad)?[0] != 0 {
        return Ok(None);
    }
    // Totals in the host's order: per row over its groups, then over the rows.
    let best = gpu.download(&err_best)?;
    let first = gpu.download(&err_first)?;
    let (mut error, mut unclipped_error) = (0.0, 0.0);
    for (b, f) in best.chunks_exact(groups).zip(first.chunks_exact(groups)) {
        error += b.iter().fold(0.0, |a, v| a + v);
        unclipped_error += f.iter().fold(0.0, |a, v| a + v);
    }
    Ok(Some(ClipResult {
        w: gpu.download(&w_out)?,
        max_val: gpu.download(&max_val)?,
        error,
        unclipped_error,
    }))
}
