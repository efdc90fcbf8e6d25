//! The device operations of a llama-family decoder block, for the calibration engine's GPU twin
//! (`qtool_calib::engine::gpu`). They reproduce the CPU engine (`qtool_calib::engine::ops`)
//! within f32 rounding, so calibration and evaluation give the same numbers on either device:
//!
//! - linears and both attention products are cuBLAS SGEMMs in plain FP32 (the handle's math mode
//!   is set to `CUBLAS_DEFAULT_MATH`: no TF32, no reduced-precision reductions);
//! - RMSNorm and the softmax sum in f64 like the CPU; every other element-wise step uses the same
//!   operations in the same order, with FMA contraction ruled out where the CPU has none
//!   (kernels/cuda/llama.cu).
//!
//! Matrices are row-major f32 in `CudaSlice`s at least as long as the shapes passed; rows past
//! the stated count are neither read nor written.

use std::ffi::c_int;

use cudarc::cublas::sys as cb;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

pub use cudarc::driver::CudaSlice;

use crate::error::{KResult, KernelError};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("llama");

/// Threads per block of every kernel but `llama_nll_rows`; grids of the striding kernels are
/// capped, the kernels loop.
const THREADS: u32 = 256;
/// Rows per block of the one-warp-per-row kernels.
const WARP_ROWS: usize = THREADS as usize / 32;

fn dim(v: usize, what: &str) -> KResult<c_int> {
    c_int::try_from(v)
        .map_err(|_| KernelError::Shape(format!("{what} = {v} exceeds 32-bit cuBLAS dimensions")))
}

fn i64_of(v: usize) -> i64 {
    v as i64
}

fn blas_check(status: cb::cublasStatus_t, what: &str) -> KResult<()> {
    if status == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(KernelError::Blas(format!("{what}: {status:?}")))
    }
}

fn need(what: &str, got: usize, want: usize) -> KResult<()> {
    if got < want {
        return Err(KernelError::Shape(format!(
            "{what}: {got} elements, the shape needs at least {want}"
        )));
    }
    Ok(())
}

/// Rotary tables on the device for positions `0..t`: `cos`/`sin` `[t, head_dim / 2]`, as the
/// CPU engine's `Rope::tables` computes them.
pub struct RopeTables {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    t: usize,
    half: usize,
}

impl std::fmt::Debug for RopeTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RopeTables").field("t", &self.t).field("half", &self.half).finish()
    }
}

impl RopeTables {
    /// Uploads host tables of `t` positions (`cos.len() == sin.len() == t · half`).
    pub fn upload(gpu: &Gpu, cos: &[f32], sin: &[f32], t: usize) -> KResult<RopeTables> {
        if t == 0 || cos.len() != sin.len() || cos.len() % t != 0 {
            return Err(KernelError::Shape(format!(
                "rope tables: {} cos / {} sin values for {t} positions",
                cos.len(),
                sin.len()
            )));
        }
        Ok(RopeTables { cos: gpu.upload(cos)?, sin: gpu.upload(sin)?, t, half: cos.len() / t })
    }

    /// Positions covered (`0..t`).
    pub fn positions(&self) -> usize {
        self.t
    }
}

/// The GPU and the cuBLAS handle a block's forward pass uses; create one per run.
pub struct LlamaGpu<'g> {
    gpu: &'g Gpu,
    blas: CudaBlas,
}

impl std::fmt::Debug for LlamaGpu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaGpu").field("gpu", self.gpu).finish()
    }
}

impl<'g> LlamaGpu<'g> {
    pub fn new(gpu: &'g Gpu) -> KResult<Self> {
        crate::libs::cublas_libraries().map_err(KernelError::NoGpu)?;
        let blas = CudaBlas::new(gpu.stream().clone())
            .map_err(|e| KernelError::Blas(format!("cublasCreate: {e:?}")))?;
        // SAFETY: a live handle; the mode is a valid enum value.
        let st =
            unsafe { cb::cublasSetMathMode(*blas.handle(), cb::cublasMath_t::CUBLAS_DEFAULT_MATH) };
        blas_check(st, "cublasSetMathMode(DEFAULT)")?;
        // Compile (or load) the module now, so a broken toolchain fails here and not mid-pass.
        gpu.module(&SRC)?;
        Ok(LlamaGpu { gpu, blas })
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    fn stride_grid(total: usize) -> KResult<(u32, u32, u32)> {
        Ok((blocks(total, THREADS as usize)?.clamp(1, 1 << 16), 1, 1))
    }

    fn warp_grid(rows: usize) -> KResult<(u32, u32, u32)> {
        Ok((blocks(rows, WARP_ROWS)?.max(1), 1, 1))
    }

    /// `out[rows, n] = x[rows, k] · w[n, k]ᵀ (+ bias[n])`: one FP32 SGEMM, then the bias added
    /// as the CPU does (after the product is rounded).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        k: usize,
        w: &CudaSlice<f32>,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        out: &mut CudaSlice<f32>,
    ) -> KResult<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        need("linear input", x.len(), rows * k)?;
        need("linear weight", w.len(), n * k)?;
        need("linear output", out.len(), rows * n)?;
        let (mi, ni, ki) = (dim(n, "out_features")?, dim(rows, "rows")?, dim(k, "in_features")?);
        {
            let stream = self.gpu.stream();
            let (xp, _gx) = x.device_ptr(stream);
            let (wp, _gw) = w.device_ptr(stream);
            let (op, _go) = out.device_ptr_mut(stream);
            let (one, zero) = (1.0f32, 0.0f32);
            // Column-major view: outᵀ (n × rows) = (w viewed k × n)ᵀ · (x viewed k × rows).
            // SAFETY: the lengths were checked above against the shapes; the handle is bound
            // to the stream every buffer is used on.
            let st = unsafe {
                cb::cublasSgemm_v2(
                    *self.blas.handle(),
                    cb::cublasOperation_t::CUBLAS_OP_T,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    mi,
                    ni,
                    ki,
                    &one,
                    wp as *const f32,
                    ki,
                    xp as *const f32,
                    ki,
                    &zero,
                    op as *mut f32,
                    mi,
                )
            };
            blas_check(st, "cublasSgemm (linear)")?;
        }
        if let Some(b) = bias {
            need("bias", b.len(), n)?;
            let f = self.gpu.function(&SRC, "llama_bias_add")?;
            let (r, nn) = (i64_of(rows), ni_of(n)?);
            let mut a = self.gpu.stream().launch_builder(&f);
            a.arg(&mut *out).arg(b).arg(&r).arg(&nn);
            launch(
                self.gpu,
                &f,
                "llama_bias_add",
                a,
                config(Self::stride_grid(rows * n)?, (THREADS, 1, 1), 0),
            )?;
        }
        Ok(())
    }

    /// `out = rms_norm(x)` row by row (`rows` rows of `cols = w.len()` values).
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> KResult<()> {
        if rows == 0 {
            return Ok(());
        }
        need("rms_norm input", x.len(), rows * cols)?;
        need("rms_norm output", out.len(), rows * cols)?;
        need("rms_norm weight", w.len(), cols)?;
        let f = self.gpu.function(&SRC, "llama_rms_norm")?;
        let (r, c) = (i64_of(rows), ni_of(cols)?);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(x).arg(w).arg(&mut *out).arg(&r).arg(&c).arg(&eps);
        launch(
            self.gpu,
            &f,
            "llama_rms_norm",
            a,
            config(Self::warp_grid(rows)?, (THREADS, 1, 1), 0),
        )
    }

    /// [`LlamaGpu::rms_norm`] in place; with `cols = head_dim` and `rows = tokens · heads` it is
    /// Qwen3's per-head q/k norm.
    pub fn rms_norm_in_place(
        &self,
        x: &mut CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> KResult<()> {
        if rows == 0 {
            return Ok(());
        }
        need("rms_norm input", x.len(), rows * cols)?;
        need("rms_norm weight", w.len(), cols)?;
        let f = self.gpu.function(&SRC, "llama_rms_norm_inplace")?;
        let (r, c) = (i64_of(rows), ni_of(cols)?);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(&mut *x).arg(w).arg(&r).arg(&c).arg(&eps);
        launch(
            self.gpu,
            &f,
            "llama_rms_norm_inplace",
            a,
            config(Self::warp_grid(rows)?, (THREADS, 1, 1), 0),
        )
    }

    /// Rotates `x` (`[rows, heads · head_dim]`) in place; row `r` has position `r % t`, where
    /// `t = tables.positions()` (windows of `t` tokens stacked, each from position 0).
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        tables: &RopeTables,
    ) -> KResult<()> {
        if rows == 0 {
            return Ok(());
        }
        if head_dim % 2 != 0 || tables.half != head_dim / 2 {
            return Err(KernelError::Shape(format!(
                "rope: head_dim {head_dim} with tables of {} pairs",
                tables.half
            )));
        }
        need("rope input", x.len(), rows * heads * head_dim)?;
        let f = self.gpu.function(&SRC, "llama_rope")?;
        let (r, h, d, t) =
            (i64_of(rows), ni_of(heads)?, ni_of(head_dim)?, ni_of(tables.positions())?);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(&mut *x).arg(&tables.cos).arg(&tables.sin).arg(&r).arg(&h).arg(&d).arg(&t);
        let total = rows * heads * (head_dim / 2);
        launch(self.gpu, &f, "llama_rope", a, config(Self::stride_grid(total)?, (THREADS, 1, 1), 0))
    }

    /// Elements of the score buffer [`LlamaGpu::attention`] needs.
    pub fn attention_scores_len(windows: usize, t: usize, heads: usize) -> usize {
        windows * heads * t * t
    }

    /// Causal grouped-query attention of `windows` windows of `t` tokens, each attending within
    /// itself: `q` `[windows·t, heads·hd]`, `k`/`v` `[windows·t, kv_heads·hd]`, query head `h`
    /// reading KV head `h / (heads / kv_heads)`; result `[windows·t, heads·hd]` in `out`.
    ///
    /// Scores `q_h k_hᵀ` by one batched SGEMM over every (window, head) into `scores`
    /// ([`LlamaGpu::attention_scores_len`]), scaled by `1/sqrt(hd)` and soft-maxed under the
    /// causal mask by `llama_causal_softmax`, then `P v_h` by a second batched SGEMM written
    /// straight into the heads' columns of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        windows: usize,
        t: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
        scores: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> KResult<()> {
        if windows == 0 || t == 0 {
            return Ok(());
        }
        if kv_heads == 0 || heads % kv_heads != 0 || hd == 0 {
            return Err(KernelError::Shape(format!(
                "attention: {heads} heads over {kv_heads} KV heads of {hd}"
            )));
        }
        let rows = windows * t;
        let (ldq, ldkv) = (heads * hd, kv_heads * hd);
        need("attention q", q.len(), rows * ldq)?;
        need("attention k", k.len(), rows * ldkv)?;
        need("attention v", v.len(), rows * ldkv)?;
        need("attention output", out.len(), rows * ldq)?;
        let mats = windows * heads;
        need("attention scores", scores.len(), mats * t * t)?;
        let group = heads / kv_heads;
        let (ti, hdi, ldqi, ldkvi, mi) = (
            dim(t, "t")?,
            dim(hd, "head_dim")?,
            dim(ldq, "q width")?,
            dim(ldkv, "kv width")?,
            dim(mats, "windows·heads")?,
        );
        let stream = self.gpu.stream();
        let f32b = std::mem::size_of::<f32>() as u64;
        // Pointer arrays of the batched GEMMs, one entry per (window, head).
        let (qp, kp, vp, sp, op) = {
            let (qp, _a) = q.device_ptr(stream);
            let (kp, _b) = k.device_ptr(stream);
            let (vp, _c) = v.device_ptr(stream);
            let (sp, _d) = scores.device_ptr(stream);
            let (op, _e) = out.device_ptr(stream);
            (qp, kp, vp, sp, op)
        };
        let mut a_qk = Vec::with_capacity(mats);
        let mut b_qk = Vec::with_capacity(mats);
        let mut c_s = Vec::with_capacity(mats);
        let mut a_pv = Vec::with_capacity(mats);
        let mut c_o = Vec::with_capacity(mats);
        for w in 0..windows {
            for h in 0..heads {
                let kvh = h / group;
                let row0 = (w * t) as u64;
                a_qk.push(kp + (row0 * ldkv as u64 + (kvh * hd) as u64) * f32b);
                b_qk.push(qp + (row0 * ldq as u64 + (h * hd) as u64) * f32b);
                c_s.push(sp + ((w * heads + h) * t * t) as u64 * f32b);
                a_pv.push(vp + (row0 * ldkv as u64 + (kvh * hd) as u64) * f32b);
                c_o.push(op + (row0 * ldq as u64 + (h * hd) as u64) * f32b);
            }
        }
        let (a_qk, b_qk, c_s) =
            (self.gpu.upload(&a_qk)?, self.gpu.upload(&b_qk)?, self.gpu.upload(&c_s)?);
        let (a_pv, c_o) = (self.gpu.upload(&a_pv)?, self.gpu.upload(&c_o)?);
        let (one, zero) = (1.0f32, 0.0f32);
        {
            // Keep every operand's stream bookkeeping alive across the two GEMMs.
            let (_qp, _gq) = q.device_ptr(stream);
            let (_kp, _gk) = k.device_ptr(stream);
            let (_sp, _gs) = scores.device_ptr_mut(stream);
            let (pa, _ga) = a_qk.device_ptr(stream);
            let (pb, _gb) = b_qk.device_ptr(stream);
            let (pc, _gc) = c_s.device_ptr(stream);
            // Row-major S (t_q × t_k) is column-major Sᵀ (t_k × t_q) = K_h · Q_hᵀ: A is the
            // column-major hd × t_k view of K_h (op T), B the hd × t_q view of Q_h.
            // SAFETY: every pointer in the arrays lies inside q/k/scores at offsets within the
            // checked lengths; the handle is bound to this stream.
            let st = unsafe {
                cb::cublasSgemmBatched(
                    *self.blas.handle(),
                    cb::cublasOperation_t::CUBLAS_OP_T,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    ti,
                    ti,
                    hdi,
                    &one,
                    pa as *const *const f32,
                    ldkvi,
                    pb as *const *const f32,
                    ldqi,
                    &zero,
                    pc as *const *mut f32,
                    ti,
                    mi,
                )
            };
            blas_check(st, "cublasSgemmBatched (attention scores)")?;
        }
        let f = self.gpu.function(&SRC, "llama_causal_softmax")?;
        let scale = 1.0 / (hd as f32).sqrt();
        let (mats_l, t_i) = (i64_of(mats), ni_of(t)?);
        let mut a = stream.launch_builder(&f);
        a.arg(&mut *scores).arg(&mats_l).arg(&t_i).arg(&scale);
        launch(
            self.gpu,
            &f,
            "llama_causal_softmax",
            a,
            config(Self::warp_grid(mats * t)?, (THREADS, 1, 1), 0),
        )?;
        {
            let (_vp, _gv) = v.device_ptr(stream);
            let (_sp, _gs) = scores.device_ptr(stream);
            let (_op, _go) = out.device_ptr_mut(stream);
            let (pa, _ga) = a_pv.device_ptr(stream);
            let (pc, _gc) = c_o.device_ptr(stream);
            let (pb, _gb) = c_s.device_ptr(stream);
            // Column-major O_hᵀ (hd × t_q, ld heads·hd) = V_hᵀ (hd × t_k, ld kv·hd) · Pᵀ, where
            // row-major P (t_q × t_k) is the column-major t_k × t_q matrix Pᵀ.
            // SAFETY: as above, for v/scores/out.
            let st = unsafe {
                cb::cublasSgemmBatched(
                    *self.blas.handle(),
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    hdi,
                    ti,
                    ti,
                    &one,
                    pa as *const *const f32,
                    ldkvi,
                    pb as *const *const f32,
                    ti,
                    &zero,
                    pc as *const *mut f32,
                    ldqi,
                    mi,
                )
            };
            blas_check(st, "cublasSgemmBatched (attention values)")?;
        }
        Ok(())
    }

    /// Copies `n` values from `src[src_at..]` to `dst[dst_at..]` on the stream.
    pub fn copy(
        &self,
        src: &CudaSlice<f32>,
        src_at: usize,
        dst: &mut CudaSlice<f32>,
        dst_at: usize,
        n: usize,
    ) -> KResult<()> {
        if n == 0 {
            return Ok(());
        }
        need("copy source", src.len(), src_at + n)?;
        need("copy destination", dst.len(), dst_at + n)?;
        let s = src.slice(src_at..src_at + n);
        let mut d = dst.slice_mut(dst_at..dst_at + n);
        self.gpu.stream().memcpy_dtod(&s, &mut d)?;
        Ok(())
    }

    /// `g = silu(g) · u` over the first `n` values.
    pub fn swiglu(&self, g: &mut CudaSlice<f32>, u: &CudaSlice<f32>, n: usize) -> KResult<()> {
        if n == 0 {
            return Ok(());
        }
        need("swiglu gate", g.len(), n)?;
        need("swiglu up", u.len(), n)?;
        let f = self.gpu.function(&SRC, "llama_swiglu")?;
        let nl = i64_of(n);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(&mut *g).arg(u).arg(&nl);
        launch(self.gpu, &f, "llama_swiglu", a, config(Self::stride_grid(n)?, (THREADS, 1, 1), 0))
    }

    /// `acc += x` over the first `n` values.
    pub fn add(&self, acc: &mut CudaSlice<f32>, x: &CudaSlice<f32>, n: usize) -> KResult<()> {
        if n == 0 {
            return Ok(());
        }
        need("add accumulator", acc.len(), n)?;
        need("add operand", x.len(), n)?;
        let f = self.gpu.function(&SRC, "llama_add")?;
        let nl = i64_of(n);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(&mut *acc).arg(x).arg(&nl);
        launch(self.gpu, &f, "llama_add", a, config(Self::stride_grid(n)?, (THREADS, 1, 1), 0))
    }

    /// Per-row `logsumexp(logits[r]) − logits[r][targets[r]]` in f64 into `out[r]` (0 where
    /// `targets[r] < 0`), for `rows` rows of `vocab` logits.
    pub fn nll_rows(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        targets: &CudaSlice<i32>,
        out: &mut CudaSlice<f64>,
    ) -> KResult<()> {
        if rows == 0 {
            return Ok(());
        }
        need("logits", logits.len(), rows * vocab)?;
        need("targets", targets.len(), rows)?;
        need("nll output", out.len(), rows)?;
        let f = self.gpu.function(&SRC, "llama_nll_rows")?;
        let (r, vi) = (ni_of(rows)?, ni_of(vocab)?);
        let mut a = self.gpu.stream().launch_builder(&f);
        a.arg(logits).arg(targets).arg(&mut *out).arg(&r).arg(&vi);
        launch(self.gpu, &f, "llama_nll_rows", a, config((r as u32, 1, 1), (THREADS, 1, 1), 0))
    }
}

fn ni_of(v: usize) -> KResult<c_int> {
    dim(v, "dimension")
}
