//! GPTQ on the GPU, equal to the CPU reference (`qtool_quantizers::ptq::gptq`) up to rounding
//! ties. That CPU code stays the oracle: this module reproduces its steps, not the GPTQ
//! authors' PyTorch code.
//!
//! - [`GpuHessian`]: `Σ xxᵀ` per batch with cuBLAS SSYRK in f32 (as the reference's f32 matmul),
//!   added into an f64 accumulator on the device, so the long sum over the calibration set keeps
//!   the CPU path's precision; [`GpuHessian::hessian`] gives `2·XᵀX/T`.
//! - [`GpuFactor`]: dead columns, act-order permutation and dampening exactly as the CPU's
//!   `Prepared` (same f64 values), then `U` = upper Cholesky factor of `H⁻¹` in f64 on the GPU
//!   by the index-reversal identity of `ptq::linalg` (`U = P·chol(P·H·P)⁻¹·P`): a blocked
//!   Cholesky (64-wide diagonal blocks in one CTA, cuBLAS DTRSM/DSYRK for the panels and the
//!   trailing matrix) and one DTRSM against the identity for the inverse. f64 because `U` must
//!   round to the same f32 values the CPU computes; the H200's f64 rate makes that cheap.
//!   Cholesky failure doubles the dampening like the CPU, then falls back to RTN.
//! - [`gptq_quantize`]: the lazy-block column loop. One kernel per 128-column block quantizes
//!   each row's columns in order (group parameters precomputed on the host by the same RTN code
//!   the CPU uses: static groups or per-channel), then one cuBLAS SGEMM applies the block's
//!   errors to every later column.
//!
//! Not supported here (the CPU path handles them): dynamic groups (`static_groups = false` with
//! a group size), lazy blocks wider than 128.

use std::ffi::c_int;
use std::time::Instant;

use cudarc::cublas::sys as cb;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use qtool_quantizers::int::rtn::Convention;
use qtool_quantizers::int::rtn::ScaleDtype;
use qtool_quantizers::int::{quantize_for_storage, GroupSize, QuantizedInt};
use qtool_quantizers::ptq::{GptqConfig, GptqOutput};

use crate::error::{KResult, KernelError};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::KernelSource;

pub(crate) const SRC: KernelSource = crate::kernel_source!("gptq");

/// Diagonal block width of the blocked Cholesky (`CHOL_NB` in gptq.cu).
const CHOL_NB: usize = 64;
/// Widest lazy block the column kernel holds (`GPTQ_BS`).
const MAX_BLOCK: usize = 128;
/// Rows per CTA of the column kernel (`GPTQ_WARPS`).
const ROWS_PER_CTA: usize = 8;
/// Threads of the element-wise kernels; grids are capped, the kernels stride.
pub(crate) const EW_THREADS: u32 = 256;

pub(crate) fn dim(v: usize, what: &str) -> KResult<c_int> {
    c_int::try_from(v)
        .map_err(|_| KernelError::Shape(format!("{what} = {v} exceeds 32-bit cuBLAS dimensions")))
}

fn blas_check(status: cb::cublasStatus_t, what: &str) -> KResult<()> {
    if status == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(KernelError::Blas(format!("{what}: {status:?}")))
    }
}

/// The GPU and the cuBLAS handle the GPTQ steps share; create one per run.
pub struct GptqGpu<'g> {
    gpu: &'g Gpu,
    blas: CudaBlas,
}

impl<'g> GptqGpu<'g> {
    pub fn new(gpu: &'g Gpu) -> KResult<Self> {
        crate::libs::cublas_libraries().map_err(KernelError::NoGpu)?;
        let blas = CudaBlas::new(gpu.stream().clone())
            .map_err(|e| KernelError::Blas(format!("cublasCreate: {e:?}")))?;
        Ok(GptqGpu { gpu, blas })
    }

    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    pub(crate) fn ew_grid(total: usize) -> KResult<(u32, u32, u32)> {
        Ok((blocks(total, EW_THREADS as usize)?.clamp(1, 1 << 16), 1, 1))
    }
}

/// `Σ xxᵀ` of one layer input accumulated on the GPU (see the module doc).
pub struct GpuHessian {
    k: usize,
    acc: CudaSlice<f64>,
    tmp: CudaSlice<f32>,
    tokens: u64,
}

impl GpuHessian {
    pub fn new(g: &GptqGpu<'_>, k: usize) -> KResult<Self> {
        dim(k * k, "K·K")?;
        Ok(GpuHessian { k, acc: g.gpu.zeros(k * k)?, tmp: g.gpu.zeros(k * k)?, tokens: 0 })
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds the host activations `x` (`[T, K]` row-major); non-finite values are refused.
    pub fn add(&mut self, g: &GptqGpu<'_>, x: &[f32]) -> KResult<()> {
        let k = self.k;
        if x.len() % k != 0 {
            return Err(KernelError::Shape(format!(
                "activations: {} values are not whole rows of {k}",
                x.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::Shape(format!(
                "activations: non-finite value {} at token {}, channel {}",
                x[i],
                i / k,
                i % k
            )));
        }
        let xd = g.gpu.upload(x)?;
        self.add_device(g, &xd, x.len() / k)
    }

    /// Adds `t` tokens already on the device (`[t, K]` row-major).
    pub fn add_device(&mut self, g: &GptqGpu<'_>, x: &CudaSlice<f32>, t: usize) -> KResult<()> {
        let k = self.k;
        if t == 0 {
            return Ok(());
        }
        if x.len() < t * k {
            return Err(KernelError::Shape(format!("activations: {} < {t}·{k}", x.len())));
        }
        let (ki, ti) = (dim(k, "K")?, dim(t, "tokens")?);
        let stream = g.gpu.stream();
        {
            let (xp, _gx) = x.device_ptr(stream);
            let (tp, _gt) = self.tmp.device_ptr_mut(stream);
            let (one, zero) = (1.0f32, 0.0f32);
            // Column-major, x is the K×T matrix A; SYRK's C = A·Aᵀ = XᵀX (lower triangle).
            // SAFETY: x holds ≥ t·k floats, tmp k·k; the handle is bound to this stream.
            let st = unsafe {
                cb::cublasSsyrk_v2(
                    *g.blas.handle(),
                    cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    ki,
                    ti,
                    &one,
                    xp as *const f32,
                    ki,
                    &zero,
                    tp as *mut f32,
                    ki,
                )
            };
            blas_check(st, "cublasSsyrk (Hessian)")?;
        }
        let f = g.gpu.function(&SRC, "hess_accum")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&self.tmp).arg(&mut self.acc).arg(&ki);
        launch(
            g.gpu,
            &f,
            "hess_accum",
            b,
            config(GptqGpu::ew_grid(k * k)?, (EW_THREADS, 1, 1), 0),
        )?;
        self.tokens += t as u64;
        Ok(())
    }

    /// `H = 2·XᵀX/T`, full symmetric `K×K` f64 on the device.
    pub fn hessian(&self, g: &GptqGpu<'_>) -> KResult<CudaSlice<f64>> {
        self.scaled(g, 2.0, "Hessian")
    }

    /// `factor/T · Σxxᵀ` mirrored into a full symmetric `K×K` f64 matrix on the device (each
    /// sum times `factor/T`, as the CPU's `Hessian` scales).
    fn scaled(&self, g: &GptqGpu<'_>, factor: f64, what: &str) -> KResult<CudaSlice<f64>> {
        if self.tokens == 0 {
            return Err(KernelError::Shape(format!("{what} of zero tokens")));
        }
        let k = self.k;
        let mut out = g.gpu.zeros::<f64>(k * k)?;
        let scale = factor / self.tokens as f64;
        let ki = dim(k, "K")?;
        let f = g.gpu.function(&SRC, "hess_finish")?;
        let mut b = g.gpu.stream().launch_builder(&f);
        b.arg(&self.acc).arg(&scale).arg(&mut out).arg(&ki);
        launch(
            g.gpu,
            &f,
            "hess_finish",
            b,
            config(GptqGpu::ew_grid(k * k)?, (EW_THREADS, 1, 1), 0),
        )?;
        Ok(out)
    }
}

/// `‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖²` for each `Ŵ` of `w_hats` (all `[N, K]` row-major f32), with
/// `gram` = `XᵀX` at any positive scale (`K×K` f64 on the device, e.g. [`GpuHessian::hessian`]
/// of held-out tokens): the GPU twin of `ptq::output_error`. Each quadratic form
/// `Σ_r d_r·G·d_rᵀ` is one DGEMM and one dot product in f64, so the large layers of a 7B model
/// cost milliseconds instead of the CPU's seconds.
pub fn output_errors(
    g: &GptqGpu<'_>,
    w: &[f32],
    w_hats: &[&[f32]],
    n: usize,
    k: usize,
    gram: &CudaSlice<f64>,
) -> KResult<Vec<f64>> {
    let nk = n * k;
    if w.len() != nk || w_hats.iter().any(|h| h.len() != nk) {
        return Err(KernelError::Shape(format!("output error: weights are not [{n}, {k}]")));
    }
    if gram.len() < k * k {
        return Err(KernelError::Shape(format!(
            "output error: gram of {} for K = {k}",
            gram.len()
        )));
    }
    dim(nk, "N·K")?;
    let gpu = g.gpu;
    let w_d = gpu.upload(w)?;
    let mut hat_d = gpu.zeros::<f32>(nk)?;
    let mut d = gpu.zeros::<f64>(nk)?;
    let mut p = gpu.zeros::<f64>(nk)?;
    let f_diff = gpu.function(&SRC, "diff_f64")?;
    let len = nk as u64;
    let null = 0u64;
    // Σ_r d_r G d_rᵀ: d is row-major [N, K] = column-major K×N (ld K); P = G·D, then ⟨D, P⟩.
    let mut quad = |hat: Option<&[f32]>| -> KResult<f64> {
        let mut b = gpu.stream().launch_builder(&f_diff);
        b.arg(&w_d);
        if let Some(h) = hat {
            gpu.stream().memcpy_htod(h, &mut hat_d)?;
            b.arg(&hat_d);
        } else {
            b.arg(&null);
        }
        b.arg(&mut d).arg(&len);
        launch(gpu, &f_diff, "diff_f64", b, config(GptqGpu::ew_grid(nk)?, (EW_THREADS, 1, 1), 0))?;
        gram_quad(g, gram, &d, &mut p, k, n)
    };
    let sig = quad(None)?;
    w_hats
        .iter()
        .map(|h| quad(Some(h)).map(|err| if sig > 0.0 { err / sig } else { err }))
        .collect()
}

/// The factorized Hessian of one layer input (the GPU twin of `ptq::gptq::Prepared`).
pub struct GpuFactor {
    k: usize,
    perm: Vec<usize>,
    dead: Vec<bool>,
    /// `U` row-major f32 in visiting order, or the reason GPTQ cannot run.
    u: Result<CudaSlice<f32>, String>,
    damp: Option<f64>,
}

impl GpuFactor {
    pub fn damp(&self) -> Option<f64> {
        self.damp
    }

    pub fn fallback(&self) -> Option<&str> {
        self.u.as_ref().err().map(String::as_str)
    }

    /// Factorizes a host Hessian (`K×K` symmetric f64).
    pub fn from_host(g: &GptqGpu<'_>, h: &[f64], k: usize, cfg: &GptqConfig) -> KResult<Self> {
        if h.len() != k * k {
            return Err(KernelError::Shape(format!("hessian: {} values for K = {k}", h.len())));
        }
        if let Some(i) = h.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::Shape(format!("hessian: non-finite value at {i}")));
        }
        let hd = g.gpu.upload(h)?;
        Self::new(g, &hd, k, cfg)
    }

    /// Factorizes the device Hessian `h` (`K×K` symmetric f64) for `cfg`.
    pub fn new(g: &GptqGpu<'_>, h: &CudaSlice<f64>, k: usize, cfg: &GptqConfig) -> KResult<Self> {
        check_config(cfg)?;
        if k == 0 || h.len() < k * k {
            return Err(KernelError::Shape(format!("hessian: {} values for K = {k}", h.len())));
        }
        let ki = dim(k, "K")?;
        let gpu = g.gpu;
        // The diagonal decides dead columns, the visiting order and the dampening.
        let diag = {
            let mut d = gpu.zeros::<f64>(k)?;
            let f = gpu.function(&SRC, "diag_of")?;
            let mut b = gpu.stream().launch_builder(&f);
            b.arg(h).arg(&mut d).arg(&ki);
            launch(gpu, &f, "diag_of", b, config(GptqGpu::ew_grid(k)?, (EW_THREADS, 1, 1), 0))?;
            gpu.download(&d)?
        };
        let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
        let diag: Vec<f64> =
            diag.iter().zip(&dead).map(|(&d, &x)| if x { 1.0 } else { d }).collect();
        let mut perm: Vec<usize> = (0..k).collect();
        if cfg.act_order {
            perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        }
        let mean_diag = perm.iter().map(|&p| diag[p]).sum::<f64>() / k as f64;
        let perm_i: Vec<i32> = perm.iter().map(|&p| p as i32).collect();
        let perm_d = gpu.upload(&perm_i)?;
        let dead_d = gpu.upload(&dead.iter().map(|&d| d as u8).collect::<Vec<u8>>())?;
        let mut m = gpu.zeros::<f64>(k * k)?;
        let mut info = gpu.zeros::<i32>(1)?;
        let f_build = gpu.function(&SRC, "build_reversed")?;
        let f_chol = gpu.function(&SRC, "chol_diag")?;
        let grid = GptqGpu::ew_grid(k * k)?;
        let mut damp = cfg.damp;
        let mut tried = Vec::new();
        loop {
            tried.push(damp);
            let damp_add = damp * mean_diag;
            let mut b = gpu.stream().launch_builder(&f_build);
            b.arg(h).arg(&perm_d).arg(&dead_d).arg(&damp_add).arg(&mut m).arg(&ki);
            launch(gpu, &f_build, "build_reversed", b, config(grid, (EW_THREADS, 1, 1), 0))?;
            gpu.stream().memset_zeros(&mut info)?;
            blocked_cholesky(g, &f_chol, &mut m, &mut info, k)?;
            let failed = gpu.download(&info)?[0];
            if failed == 0 {
                let u = upper_of_inverse(g, &m, k)?;
                return Ok(GpuFactor { k, perm, dead, u: Ok(u), damp: Some(damp) });
            }
            if damp >= cfg.max_damp || mean_diag <= 0.0 {
                let pivot = k - failed as usize; // reversed index back to visiting order
                let reason = format!(
                    "Hessian not positive definite (pivot {} in visiting order) after dampening {}; quantized by RTN",
                    pivot,
                    tried.iter().map(|d| format!("{d}")).collect::<Vec<_>>().join(", ")
                );
                return Ok(GpuFactor { k, perm, dead, u: Err(reason), damp: None });
            }
            damp = (damp * 2.0).max(1e-4).min(cfg.max_damp);
        }
    }
}

fn check_config(cfg: &GptqConfig) -> KResult<()> {
    if !(cfg.damp >= 0.0 && cfg.damp.is_finite() && cfg.max_damp.is_finite()) {
        return Err(KernelError::Unsupported(format!(
            "damp {} must be a finite number ≥ 0",
            cfg.damp
        )));
    }
    if cfg.block_size == 0 || cfg.block_size > MAX_BLOCK {
        return Err(KernelError::Unsupported(format!(
            "GPU GPTQ lazy block {} (1..={MAX_BLOCK})",
            cfg.block_size
        )));
    }
    if matches!(cfg.rtn.group_size, GroupSize::Size(_)) && !cfg.static_groups {
        return Err(KernelError::Unsupported(
            "GPU GPTQ with dynamic groups (static_groups = false); use the CPU path".into(),
        ));
    }
    Ok(())
}

/// In-place lower Cholesky of the column-major `m`; the first failing pivot + 1 lands in `info`.
fn blocked_cholesky(
    g: &GptqGpu<'_>,
    f_chol: &cudarc::driver::CudaFunction,
    m: &mut CudaSlice<f64>,
    info: &mut CudaSlice<i32>,
    k: usize,
) -> KResult<()> {
    let gpu = g.gpu;
    let ki = dim(k, "K")?;
    for j0 in (0..k).step_by(CHOL_NB) {
        let jb = CHOL_NB.min(k - j0);
        let (j0i, jbi) = (j0 as c_int, jb as c_int);
        let mut b = gpu.stream().launch_builder(f_chol);
        b.arg(&mut *m).arg(&ki).arg(&j0i).arg(&jbi).arg(&mut *info);
        launch(gpu, f_chol, "chol_diag", b, config((1, 1, 1), (256, 1, 1), 0))?;
        let rest = k - j0 - jb;
        if rest == 0 {
            continue;
        }
        let ri = rest as c_int;
        let stream = gpu.stream();
        let (mp, _gm) = m.device_ptr_mut(stream);
        let at = |off: usize| mp + (off * 8) as u64;
        let diag = at(j0 * k + j0);
        let panel = at(j0 * k + j0 + jb);
        let trail = at((j0 + jb) * k + j0 + jb);
        let (one, minus) = (1.0f64, -1.0f64);
        // SAFETY: every pointer is inside the k·k matrix (offsets above, ld = k); the handle is
        // bound to the stream the kernels run on.
        unsafe {
            blas_check(
                cb::cublasDtrsm_v2(
                    *g.blas.handle(),
                    cb::cublasSideMode_t::CUBLAS_SIDE_RIGHT,
                    cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                    cb::cublasOperation_t::CUBLAS_OP_T,
                    cb::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                    ri,
                    jbi,
                    &one,
                    diag as *const f64,
                    ki,
                    panel as *mut f64,
                    ki,
                ),
                "cublasDtrsm (Cholesky panel)",
            )?;
            blas_check(
                cb::cublasDsyrk_v2(
                    *g.blas.handle(),
                    cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    ri,
                    jbi,
                    &minus,
                    panel as *const f64,
                    ki,
                    &one,
                    trail as *mut f64,
                    ki,
                ),
                "cublasDsyrk (Cholesky update)",
            )?;
        }
    }
    Ok(())
}

/// `U` (row-major f32) from the lower factor `L` in `m`: `L⁻¹` by DTRSM against `I`, then
/// reversed and rounded to f32.
fn upper_of_inverse(g: &GptqGpu<'_>, m: &CudaSlice<f64>, k: usize) -> KResult<CudaSlice<f32>> {
    let gpu = g.gpu;
    let ki = dim(k, "K")?;
    let grid = GptqGpu::ew_grid(k * k)?;
    let mut x = gpu.zeros::<f64>(k * k)?;
    let f_id = gpu.function(&SRC, "set_identity")?;
    let mut b = gpu.stream().launch_builder(&f_id);
    b.arg(&mut x).arg(&ki);
    launch(gpu, &f_id, "set_identity", b, config(grid, (EW_THREADS, 1, 1), 0))?;
    {
        let stream = gpu.stream();
        let (mp, _gm) = m.device_ptr(stream);
        let (xp, _gx) = x.device_ptr_mut(stream);
        let one = 1.0f64;
        // SAFETY: both are k·k f64 matrices with ld = k; the handle is bound to this stream.
        let st = unsafe {
            cb::cublasDtrsm_v2(
                *g.blas.handle(),
                cb::cublasSideMode_t::CUBLAS_SIDE_LEFT,
                cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                cb::cublasOperation_t::CUBLAS_OP_N,
                cb::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                ki,
                ki,
                &one,
                mp as *const f64,
                ki,
                xp as *mut f64,
                ki,
            )
        };
        blas_check(st, "cublasDtrsm (L⁻¹)")?;
    }
    let mut u = gpu.zeros::<f32>(k * k)?;
    let f_up = gpu.function(&SRC, "upper_from_inverse")?;
    let mut b = gpu.stream().launch_builder(&f_up);
    b.arg(&x).arg(&mut u).arg(&ki);
    launch(gpu, &f_up, "upper_from_inverse", b, config(grid, (EW_THREADS, 1, 1), 0))?;
    Ok(u)
}

/// Group parameters `[G, N]` on the host (for the result) and on the device (for the loop).
struct Params {
    scales: Vec<f32>,
    zeros: Vec<u8>,
    scales_d: CudaSlice<f32>,
    zeros_d: CudaSlice<u8>,
}

/// The (scale, zero) of every group as the CPU reference fixes them up front: per-channel from
/// the weight as given, static groups from the weight with dead columns zeroed; computed on the
/// device by the same formulas as `quantize_for_storage` for the GPTQ and AWQ conventions.
/// Compressed-tensors, and anything unusual (a non-finite weight, a stored scale of 0 or ∞),
/// go to that CPU function itself, which returns the parameters or the precise error.
fn group_params(
    g: &GptqGpu<'_>,
    w_d: &CudaSlice<f32>,
    dead_d: &CudaSlice<u8>,
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &GptqConfig,
) -> KResult<Params> {
    let gpu = g.gpu;
    let int_err = |e: qtool_quantizers::int::IntError| KernelError::Shape(e.to_string());
    let groups = cfg.rtn.group_size.num_groups(k).map_err(int_err)?;
    let cols = cfg.rtn.group_size.columns(k);
    let zero_dead = matches!(cfg.rtn.group_size, GroupSize::Size(_)) as c_int;
    let conv: c_int = match cfg.rtn.convention {
        Convention::Gptq => 0,
        Convention::Awq => 1,
        // Its parameters come from the host RTN code (one device formula fewer to keep equal).
        Convention::CompressedTensors => -1,
    };
    let sdt: c_int = match cfg.scale_dtype {
        ScaleDtype::F32 => 0,
        ScaleDtype::F16 => 1,
        ScaleDtype::BF16 => 2,
    };
    let sym = cfg.rtn.symmetric as c_int;
    let maxq = cfg.rtn.bits.max_code() as f32;
    let mid = cfg.rtn.bits.mid() as f32;
    let (ni, ki, ci) = (dim(n, "N")?, dim(k, "K")?, dim(cols, "group")?);
    let mut scales_d = gpu.zeros::<f32>(groups * n)?;
    let mut zeros_d = gpu.zeros::<u8>(groups * n)?;
    let mut bad = gpu.zeros::<i32>(1)?;
    if conv >= 0 {
        let f = gpu.function(&SRC, "group_params_rows")?;
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(w_d).arg(dead_d).arg(&zero_dead).arg(&ni).arg(&ki).arg(&ci).arg(&conv).arg(&sym);
        b.arg(&maxq).arg(&mid).arg(&sdt).arg(&mut scales_d).arg(&mut zeros_d).arg(&mut bad);
        let grid = (dim(groups, "groups")? as u32, blocks(n, ROWS_PER_CTA)?, 1);
        launch(
            gpu,
            &f,
            "group_params_rows",
            b,
            config(grid, ((ROWS_PER_CTA * 32) as u32, 1, 1), 0),
        )?;
    }
    if conv >= 0 && gpu.download(&bad)?[0] == 0 {
        let scales = gpu.download(&scales_d)?;
        let zeros = gpu.download(&zeros_d)?;
        return Ok(Params { scales, zeros, scales_d, zeros_d });
    }
    let dead = gpu.download(dead_d)?;
    let mut src = w.to_vec();
    if zero_dead == 1 {
        for row in src.chunks_exact_mut(k) {
            for (v, _) in row.iter_mut().zip(&dead).filter(|(_, d)| **d != 0) {
                *v = 0.0;
            }
        }
    }
    let q = quantize_for_storage(&src, n, k, &cfg.rtn, None, cfg.scale_dtype).map_err(int_err)?;
    let (scales_d, zeros_d) = (gpu.upload(&q.scales)?, gpu.upload(&q.zeros)?);
    Ok(Params { scales: q.scales, zeros: q.zeros, scales_d, zeros_d })
}

/// Wall times of one [`gptq_quantize`] call, for the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct GptqTimes {
    /// Preparation: upload, permutation and group parameters (device).
    pub prepare_s: f64,
    /// The column loop on the GPU (kernels + lazy-update GEMMs), synchronized.
    pub loop_s: f64,
    /// Download and assembly of the result.
    pub finish_s: f64,
}

/// GPTQ of `w` (`[N, K]` row-major f32) with the factor `f`; the same [`GptqOutput`] as the
/// CPU's `quantize_prepared` up to rounding ties.
pub fn gptq_quantize(
    g: &GptqGpu<'_>,
    w: &[f32],
    n: usize,
    k: usize,
    f: &GpuFactor,
    cfg: &GptqConfig,
) -> KResult<(GptqOutput, GptqTimes)> {
    check_config(cfg)?;
    let t0 = Instant::now();
    let mut times = GptqTimes::default();
    if n == 0 || k == 0 || w.len() != n * k {
        return Err(KernelError::Shape(format!("weight: {} values for [{n}, {k}]", w.len())));
    }
    if f.k != k {
        return Err(KernelError::Shape(format!("factor for K = {}, weight K = {k}", f.k)));
    }
    let int_err = |e: qtool_quantizers::int::IntError| KernelError::Shape(e.to_string());
    let u = match &f.u {
        Ok(u) => u,
        Err(reason) => {
            let q =
                quantize_for_storage(w, n, k, &cfg.rtn, None, cfg.scale_dtype).map_err(int_err)?;
            return Ok((
                GptqOutput { q, damp: None, fallback: Some(reason.clone()), loss: 0.0 },
                times,
            ));
        }
    };
    let (ni, ki) = (dim(n, "N")?, dim(k, "K")?);
    dim(n * k, "N·K")?;
    let gpu = g.gpu;
    let gcol: Vec<i32> = match cfg.rtn.group_size {
        GroupSize::PerChannel => vec![0; k],
        GroupSize::Size(gs) => f.perm.iter().map(|&c| (c / gs) as i32).collect(),
    };
    let perm_i: Vec<i32> = f.perm.iter().map(|&p| p as i32).collect();
    let perm_d = gpu.upload(&perm_i)?;
    let dead_d = gpu.upload(&f.dead.iter().map(|&d| d as u8).collect::<Vec<u8>>())?;
    let w_orig = gpu.upload(w)?;
    // The weight in visiting order, dead columns zeroed.
    let mut wd = gpu.zeros::<f32>(n * k)?;
    let f_perm = gpu.function(&SRC, "permute_cols")?;
    let mut b = gpu.stream().launch_builder(&f_perm);
    b.arg(&w_orig).arg(&perm_d).arg(&dead_d).arg(&mut wd).arg(&ni).arg(&ki);
    let cfg_l = config(GptqGpu::ew_grid(n * k)?, (EW_THREADS, 1, 1), 0);
    launch(gpu, &f_perm, "permute_cols", b, cfg_l)?;
    let params = group_params(g, &w_orig, &dead_d, w, n, k, cfg)?;
    drop(w_orig);
    let gcol_d = gpu.upload(&gcol)?;
    let (scales_d, zeros_d) = (params.scales_d, params.zeros_d);
    let mut codes_d = gpu.zeros::<u8>(n * k)?;
    let bs = cfg.block_size;
    let mut err_d = gpu.zeros::<f32>(n * bs)?;
    let mut loss_d = gpu.zeros::<f64>(n)?;
    let conv: c_int = match cfg.rtn.convention {
        Convention::Gptq | Convention::Awq => 0,
        Convention::CompressedTensors => 1,
    };
    let maxq = cfg.rtn.bits.max_code() as f32;
    let mid = cfg.rtn.bits.mid() as f32;
    let f_blk = gpu.function(&SRC, "gptq_block")?;
    gpu.synchronize()?;
    times.prepare_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let grid = (blocks(n, ROWS_PER_CTA)?, 1, 1);
    for i1 in (0..k).step_by(bs) {
        let i2 = (i1 + bs).min(k);
        let cnt = i2 - i1;
        let (i1i, cnti) = (i1 as c_int, cnt as c_int);
        let smem = (cnt * MAX_BLOCK * 4) as u32;
        let mut b = gpu.stream().launch_builder(&f_blk);
        b.arg(&wd).arg(&ni).arg(&ki).arg(&i1i).arg(&cnti).arg(u).arg(&perm_d).arg(&gcol_d);
        b.arg(&scales_d).arg(&zeros_d).arg(&conv).arg(&maxq).arg(&mid);
        b.arg(&mut codes_d).arg(&mut err_d).arg(&mut loss_d);
        launch(
            gpu,
            &f_blk,
            "gptq_block",
            b,
            config(grid, ((ROWS_PER_CTA * 32) as u32, 1, 1), smem),
        )?;
        if i2 < k {
            let stream = gpu.stream();
            let (up, _gu) = u.device_ptr(stream);
            let (ep, _ge) = err_d.device_ptr(stream);
            let (wdp, _gw) = wd.device_ptr_mut(stream);
            let (minus, one) = (-1.0f32, 1.0f32);
            // Column-major: W[:, i2:]ᵀ (K−i2 × N, ld K) −= U[i1:i2, i2:]ᵀ (K−i2 × cnt, ld K) ·
            // errᵀ (cnt × N, ld cnt).
            // SAFETY: offsets stay inside u (k·k), err (n·bs ≥ n·cnt) and w (n·k).
            let st = unsafe {
                cb::cublasSgemm_v2(
                    *g.blas.handle(),
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    (k - i2) as c_int,
                    ni,
                    cnti,
                    &minus,
                    (up + ((i1 * k + i2) * 4) as u64) as *const f32,
                    ki,
                    ep as *const f32,
                    cnti,
                    &one,
                    (wdp + (i2 * 4) as u64) as *mut f32,
                    ki,
                )
            };
            blas_check(st, "cublasSgemm (GPTQ lazy update)")?;
        }
    }
    gpu.synchronize()?;
    times.loop_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let codes = gpu.download(&codes_d)?;
    let loss: f64 = gpu.download(&loss_d)?.iter().sum();
    let q = QuantizedInt {
        bits: cfg.rtn.bits,
        n,
        k,
        group_size: cfg.rtn.group_size,
        symmetric: cfg.rtn.symmetric,
        codes,
        scales: params.scales,
        zeros: params.zeros,
        g_idx: None,
    };
    q.validate().map_err(int_err)?;
    times.finish_s = t2.elapsed().as_secs_f64();
    Ok((GptqOutput { q, damp: f.damp, fallback: None, loss }, times))
}

impl std::fmt::Debug for GptqGpu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptqGpu").field("gpu", self.gpu).finish()
    }
}

impl std::fmt::Debug for GpuHessian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHessian").field("k", &self.k).field("tokens", &self.tokens).finish()
    }
}

impl std::fmt::Debug for GpuFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFactor")
            .field("k", &self.k)
            .field("damp", &self.damp)
            .field("fallback", &self.fallback())
            .finish()
    }
}

/// Threads per CTA of `abs_accum` (one channel each): small, so that a 4096-channel input
/// still spreads over 32 SMs.
const ABS_THREADS: u32 = 128;

/// `Σ |x|` per input channel accumulated on the GPU (AWQ's activation salience), in f64 and in
/// token order per channel like the CPU's `ptq::Hessian`, so equal activations give equal sums.
pub struct GpuAbsSum {
    k: usize,
    acc: CudaSlice<f64>,
    tokens: u64,
}

impl GpuAbsSum {
    pub fn new(g: &GptqGpu<'_>, k: usize) -> KResult<Self> {
        dim(k, "K")?;
        Ok(GpuAbsSum { k, acc: g.gpu.zeros(k.max(1))?, tokens: 0 })
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds `t` tokens already on the device (`[t, K]` row-major).
    pub fn add_device(&mut self, g: &GptqGpu<'_>, x: &CudaSlice<f32>, t: usize) -> KResult<()> {
        let k = self.k;
        if t == 0 || k == 0 {
            return Ok(());
        }
        if x.len() < t * k {
            return Err(KernelError::Shape(format!("activations: {} < {t}·{k}", x.len())));
        }
        let (ki, tu) = (dim(k, "K")?, t as u64);
        let f = g.gpu.function(&SRC, "abs_accum")?;
        let mut b = g.gpu.stream().launch_builder(&f);
        b.arg(x).arg(&mut self.acc).arg(&ki).arg(&tu);
        let grid = (blocks(k, ABS_THREADS as usize)?.max(1), 1, 1);
        launch(g.gpu, &f, "abs_accum", b, config(grid, (ABS_THREADS, 1, 1), 0))?;
        self.tokens += tu;
        Ok(())
    }

    /// `Σ |x|` per channel (`K` values).
    pub fn download(&self, g: &GptqGpu<'_>) -> KResult<Vec<f64>> {
        let mut v = g.gpu.download(&self.acc)?;
        v.truncate(self.k);
        Ok(v)
    }
}

impl std::fmt::Debug for GpuAbsSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuAbsSum").field("k", &self.k).field("tokens", &self.tokens).finish()
    }
}

impl GpuHessian {
    pub fn k(&self) -> usize {
        self.k
    }

    /// `Σ xxᵀ` as the CPU's `ptq::Hessian` stores it: row-major `K×K` whose upper triangle
    /// (`j ≥ i`) holds the sums, the rest zero. The device accumulator's column-major lower
    /// triangle is exactly those bytes, so this is one download.
    pub fn download_upper(&self, g: &GptqGpu<'_>) -> KResult<Vec<f64>> {
        g.gpu.download(&self.acc)
    }

    /// `XᵀX/T`, full symmetric `K×K` f64 on the device (the scale the CPU's `Hessian::gram`
    /// uses, computed the same way: each sum times `1/T`).
    pub fn gram(&self, g: &GptqGpu<'_>) -> KResult<CudaSlice<f64>> {
        self.scaled(g, 1.0, "gram")
    }
}

/// Whether every value of the device `x` is finite (one pass, one flag downloaded).
pub fn all_finite(g: &GptqGpu<'_>, x: &CudaSlice<f64>) -> KResult<bool> {
    if x.is_empty() {
        return Ok(true);
    }
    let gpu = g.gpu;
    let mut bad = gpu.zeros::<i32>(1)?;
    let len = x.len() as u64;
    let f = gpu.function(&SRC, "flag_nonfinite")?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(x).arg(&len).arg(&mut bad);
    launch(
        gpu,
        &f,
        "flag_nonfinite",
        b,
        config(GptqGpu::ew_grid(x.len())?, (EW_THREADS, 1, 1), 0),
    )?;
    Ok(gpu.download(&bad)?[0] == 0)
}

/// `Σ_r d_r·G·d_rᵀ` over the rows of the host `d` (`[rows, K]` row-major f32) with the device
/// `gram` (`K×K` symmetric f64): AWQ's scale-search error on the GPU. `d` is widened to f64 and
/// the product is one DGEMM and one dot product, in f64 where the CPU's `GramQuadForm` rounds
/// `G` to f32 and multiplies in f32: on Hopper f64 GEMMs run at the f32 SIMT rate, so the more
/// exact form costs nothing, and the search's choices then differ from the CPU's only where
/// two α are closer than the CPU's own f32 rounding.
pub fn quad_form(
    g: &GptqGpu<'_>,
    gram: &CudaSlice<f64>,
    k: usize,
    d: &[f32],
    rows: usize,
) -> KResult<f64> {
    let nk = rows * k;
    if d.len() != nk || gram.len() < k * k {
        return Err(KernelError::Shape(format!(
            "quadratic form: {} values for [{rows}, {k}], gram of {}",
            d.len(),
            gram.len()
        )));
    }
    if nk == 0 {
        return Ok(0.0);
    }
    dim(nk, "rows·K")?;
    let gpu = g.gpu;
    let d32 = gpu.upload(d)?;
    let mut d64 = gpu.zeros::<f64>(nk)?;
    let mut p = gpu.zeros::<f64>(nk)?;
    let f_diff = gpu.function(&SRC, "diff_f64")?;
    let (len, null) = (nk as u64, 0u64);
    let mut b = gpu.stream().launch_builder(&f_diff);
    b.arg(&d32).arg(&null).arg(&mut d64).arg(&len);
    launch(gpu, &f_diff, "diff_f64", b, config(GptqGpu::ew_grid(nk)?, (EW_THREADS, 1, 1), 0))?;
    gram_quad(g, gram, &d64, &mut p, k, rows)
}

/// `⟨D, G·D⟩ = Σ_r d_r·G·d_rᵀ` for `d` = row-major `[rows, K]` f64 (column-major `K×rows`, ld
/// `K`), with `p` (same size) as the product's scratch: one DGEMM and one dot product.
pub(crate) fn gram_quad(
    g: &GptqGpu<'_>,
    gram: &CudaSlice<f64>,
    d: &CudaSlice<f64>,
    p: &mut CudaSlice<f64>,
    k: usize,
    rows: usize,
) -> KResult<f64> {
    let (ki, ni, nki) = (dim(k, "K")?, dim(rows, "rows")?, dim(k * rows, "rows·K")?);
    let stream = g.gpu.stream();
    let (gp, _gg) = gram.device_ptr(stream);
    let (dp, _gd) = d.device_ptr(stream);
    let (pp, _gp) = p.device_ptr_mut(stream);
    let (one, zero) = (1.0f64, 0.0f64);
    let mut out = 0f64;
    // SAFETY: gram is K×K, d and p hold K·rows f64 (ld K) on this stream; the result pointer is
    // a host f64 (the handle's default host pointer mode), read after the call returns.
    unsafe {
        let st = cb::cublasDgemm_v2(
            *g.blas.handle(),
            cb::cublasOperation_t::CUBLAS_OP_N,
            cb::cublasOperation_t::CUBLAS_OP_N,
            ki,
            ni,
            ki,
            &one,
            gp as *const f64,
            ki,
            dp as *const f64,
            ki,
            &zero,
            pp as *mut f64,
            ki,
        );
        blas_check(st, "cublasDgemm (quadratic form)")?;
        let st = cb::cublasDdot_v2(
            *g.blas.handle(),
            nki,
            dp as *const f64,
            1,
            pp as *const f64,
            1,
            &mut out,
        );
        blas_check(st, "cublasDdot (quadratic form)")?;
    }
    Ok(out)
}
