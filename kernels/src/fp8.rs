//! FP8 scaled GEMM on the stored FP8 weights.
//!
//! - Per-tensor: activations are quantized to E4M3 on the GPU (`x / input_scale`, or dynamic
//!   `absmax/448` computed on the GPU), then one cuBLASLt FP8 matmul applies both scales through
//!   its A/B scale pointers. The result is BF16 as runtimes emit it ([`Fp8Out`]; FP32 on
//!   request), widened to f32 on the host outside the timed region.
//! - Per-channel: cuBLASLt `OUTER_VEC_32F` scaling (one scale per output channel on A, the
//!   activation scale repeated per row on B: cuBLAS requires both sides in that mode; cuBLAS
//!   12.9+) when it offers an algorithm that runs, else cuBLASLt's per-row device alpha vector,
//!   else an unscaled-weight FP8 matmul (FP32) followed by qtool's post-scale, fused with the
//!   rounding to BF16 (`scale_cols_bf16`). [`GemmRun::backend`] says which ran.
//! - Timing: [`Fp8Run`] reports the call including activation quantization and the GEMM alone;
//!   cuBLASLt's top-32 heuristic algorithms are timed once per problem and the fastest cached.
//! - Accumulation: cuBLASLt "fast accumulation" by default, as FP8 runtimes use on Hopper
//!   (CUTLASS FP8FastAccum); [`Fp8Options::fast_accum`] = false for FP32-promoted sums.
//! - Block 128×128 (activations per 1×128 group): qtool's own kernel (`fp8_block_gemm`).
//! - E5M2 weights: cuBLASLt's E5M2 × E4M3 combination (A = weights E5M2, B = activations
//!   E4M3); the block kernel reads E5M2 directly.

use half::bf16;

use cudarc::driver::{DevicePtr, PushKernelArg};

use crate::blas::{ElemType, LtPlan, LtScale};
use crate::dequant_gemm::{GEMV_MAX_M, GEMV_ROWS_PER_BLOCK, GEMV_THREADS};
use crate::error::{check_len, KResult, KernelError};
use crate::gemm_bf16::{bits_bf16, check_dims};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::ops::{Fp8Kind, Fp8Scale, GemmRun};
use crate::timing::median_micros;
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("fp8");

/// Which per-channel implementation to use (the tests run each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Path {
    /// cuBLASLt outer-vector scales, else the alpha vector, else the post-scale kernel.
    Auto,
    /// cuBLASLt's per-row alpha vector (an error when cuBLASLt has no algorithm for it).
    AlphaVector,
    /// Always an unscaled-weight matmul plus the post-scale kernel.
    PostScale,
}

/// Knobs of [`Gpu::fp8_gemm_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Options {
    pub path: Fp8Path,
    /// cuBLASLt fast accumulation (default true, what runtimes use).
    pub fast_accum: bool,
}

/// Element type the cuBLASLt FP8 GEMM writes (the host result is widened to f32 either way,
/// outside the timed region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Out {
    /// BF16, what runtimes' scaled GEMMs emit (vLLM `cutlass_scaled_mm`, `torch._scaled_mm`).
    Bf16,
    /// FP32: the unrounded product, for accuracy checks.
    F32,
}

/// An FP8 GEMM result with both timings.
#[derive(Clone, Debug)]
pub struct Fp8Run {
    /// `run.micros` includes the activation quantization (x arrives as BF16).
    pub run: GemmRun,
    /// The GEMM (and any post-scale) alone on already-quantized FP8 activations, as runtimes
    /// run it when the previous op emits FP8 and as vLLM's GEMM benchmark times it; 0 when not
    /// timed. Block-128 quantizes inside every call, so there it equals `run.micros`.
    pub gemm_micros: f64,
}

impl Default for Fp8Options {
    fn default() -> Self {
        Fp8Options { path: Fp8Path::Auto, fast_accum: true }
    }
}

impl Gpu {
    /// FP8 GEMM `out = x · (scale ⊙ w)ᵀ` with `w` the stored `[n, k]` FP8 bytes; `input_scale`
    /// is the checkpoint's static activation scale (None: dynamic per-tensor absmax/448, or per
    /// 1×128 group for [`Fp8Scale::Block128`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm(
        &self,
        x: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        w: &[u8],
        kind: Fp8Kind,
        scale: &Fp8Scale,
        input_scale: Option<f32>,
        reps: usize,
    ) -> KResult<GemmRun> {
        let opts = Fp8Options::default();
        self.fp8_gemm_run(x, m, n, k, w, kind, scale, input_scale, opts, Fp8Out::Bf16, reps)
            .map(|r| r.run)
    }

    /// [`Gpu::fp8_gemm`] with explicit options and an FP32 result (the unrounded FP8 product,
    /// for accuracy checks); see [`Gpu::fp8_gemm_run`] for the output type.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_with(
        &self,
        x: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        w: &[u8],
        kind: Fp8Kind,
        scale: &Fp8Scale,
        input_scale: Option<f32>,
        opts: Fp8Options,
        reps: usize,
    ) -> KResult<GemmRun> {
        self.fp8_gemm_run(x, m, n, k, w, kind, scale, input_scale, opts, Fp8Out::F32, reps)
            .map(|r| r.run)
    }

    /// The general form: options, output type, and both timings ([`Fp8Run`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_run(
        &self,
        x: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        w: &[u8],
        kind: Fp8Kind,
        scale: &Fp8Scale,
        input_scale: Option<f32>,
        opts: Fp8Options,
        out: Fp8Out,
        reps: usize,
    ) -> KResult<Fp8Run> {
        check_dims(m, n, k)?;
        check_len("x", x.len(), m * k)?;
        check_len("w", w.len(), n * k)?;
        if let Some(s) = input_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::Shape(format!(
                    "input_scale {s} is not a positive finite number"
                )));
            }
        }
        match scale {
            Fp8Scale::PerTensor(s) => {
                self.fp8_lt(x, (m, n, k), w, kind, &[*s], false, input_scale, opts, out, reps)
            }
            Fp8Scale::PerChannel(s) => {
                check_len("per-channel scales", s.len(), n)?;
                self.fp8_lt(x, (m, n, k), w, kind, s, true, input_scale, opts, out, reps)
            }
            Fp8Scale::Block128(s) => {
                check_len("block scales", s.len(), n.div_ceil(128) * k.div_ceil(128))?;
                if input_scale.is_some() {
                    return Err(KernelError::Unsupported(
                        "block-scaled FP8 quantizes activations per 1x128 group; a static input_scale does not apply".into(),
                    ));
                }
                // The own block kernel writes FP32 and quantizes as part of every call.
                let run = self.fp8_block(x, (m, n, k), w, kind, s, reps)?;
                let gemm_micros = run.micros;
                Ok(Fp8Run { run, gemm_micros })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fp8_lt(
        &self,
        x: &[bf16],
        (m, n, k): (usize, usize, usize),
        w: &[u8],
        kind: Fp8Kind,
        wscale: &[f32],
        per_channel: bool,
        input_scale: Option<f32>,
        opts: Fp8Options,
        out_ty: Fp8Out,
        reps: usize,
    ) -> KResult<Fp8Run> {
        let fa = opts.fast_accum;
        let stream = self.stream().clone();
        let xd = self.upload(bits_bf16(x))?;
        let wd = self.upload(w)?;
        let ws = self.upload(wscale)?;
        let ones = self.upload(&[1.0f32])?;
        let mut xq = self.zeros::<u8>(m * k)?;
        // Activation scale: one value, or that value per row for cuBLASLt's outer-vector mode.
        let mut xs = self.zeros::<f32>(m)?;
        let mut amax = self.zeros::<u32>(1)?;
        let bf16_out = out_ty == Fp8Out::Bf16;
        let w_ty = match kind {
            Fp8Kind::E4M3 => ElemType::E4M3,
            Fp8Kind::E5M2 => ElemType::E5M2,
        };
        let d_ty = if bf16_out { ElemType::Bf16 } else { ElemType::F32 };
        let ptr = |s: &cudarc::driver::CudaSlice<f32>| s.device_ptr(&stream).0;
        let plan_for = |mode: LtScale, a: u64, d: ElemType| {
            LtPlan::fp8(self, w_ty, ElemType::E4M3, d, mode, a, ptr(&xs), fa, (m, n, k))
        };
        // Plan: vector scales in cuBLASLt, else an alpha vector, else scalar 1.0 on A and a
        // post-scale (into the BF16 output when that is asked for: the GEMM then writes FP32
        // and the scale and the one rounding to BF16 happen in one pass). `None` plan:
        // cuBLASLt has no algorithm at all (e.g. an E5M2 combination it lacks): qtool's own FP8
        // kernel with per-tensor activation and per-tensor/channel weight scales, FP32 output.
        let (mut plan, post_scale, how): (Option<LtPlan>, bool, &str) = if !per_channel {
            match plan_for(LtScale::Scalar, ptr(&ws), d_ty) {
                Ok(p) => (Some(p), false, "per-tensor"),
                Err(_) => (None, false, "per-tensor"),
            }
        } else {
            // cuBLASLt may hand out an algorithm for a scale mode and refuse it only in
            // `cublasLtMatmul` (INVALID_VALUE / NOT_SUPPORTED), so Auto runs each once first.
            let trial = |p: LtPlan| -> KResult<LtPlan> {
                let mut t = self.zeros::<u8>(m * n * 4)?;
                p.run(self, &wd, &xq, &mut t)?;
                self.synchronize()?;
                Ok(p)
            };
            let chosen = match opts.path {
                Fp8Path::Auto => plan_for(LtScale::OuterVec, ptr(&ws), d_ty)
                    .and_then(trial)
                    .map(|p| (p, "per-channel (cublaslt outer-vector scales)"))
                    .or_else(|_| {
                        plan_for(LtScale::AlphaVec, ptr(&ws), d_ty)
                            .and_then(trial)
                            .map(|p| (p, "per-channel (cublaslt alpha vector)"))
                    })
                    .ok(),
                Fp8Path::AlphaVector => Some((
                    plan_for(LtScale::AlphaVec, ptr(&ws), d_ty)?,
                    "per-channel (cublaslt alpha vector)",
                )),
                Fp8Path::PostScale => None,
            };
            match chosen {
                Some((p, how)) => (Some(p), false, how),
                None => match plan_for(LtScale::Scalar, ptr(&ones), ElemType::F32) {
                    Ok(p) => (Some(p), true, "per-channel (post-scale kernel)"),
                    Err(_) => (None, false, "per-channel"),
                },
            }
        };
        // Buffers: FP32 when the GEMM writes FP32 (asked for, post-scale, own kernel); BF16
        // when the result is BF16.
        let gemm_f32 = !bf16_out || post_scale || plan.is_none();
        let result_bf16 = bf16_out && plan.is_some();
        let mut out32 = self.zeros::<f32>(if gemm_f32 { m * n } else { 1 })?;
        let mut out16 = self.zeros::<u16>(if result_bf16 { m * n } else { 1 })?;
        let f_own = self.function(&SRC, "fp8_block_gemm")?;
        let (zero, one, ws_rs) = (0i32, 1i32, per_channel as i32);
        let e5m2 = (kind == Fp8Kind::E5M2) as i32;
        let ki = k as i32;
        let f_amax = self.function(&SRC, "absmax_bf16")?;
        let f_quant = self.function(&SRC, "quant_e4m3_tensor")?;
        let f_scale = self.function(&SRC, "scale_cols")?;
        let f_scale16 = self.function(&SRC, "scale_cols_bf16")?;
        let len = (m * k) as u64;
        let quant_threads = (m * k).div_ceil(8).max(m * k % 8).max(1);
        let (mi, ni) = (m as i32, n as i32);
        let n_scale = mi;
        let static_scale = input_scale.unwrap_or(1.0);
        let mut tuned = None;
        // When timing, pick the fastest of cuBLASLt's candidate algorithms first (the operands
        // are already the real ones; xq's contents do not matter for speed).
        if reps > 0 {
            if let Some(p) = plan.as_mut() {
                tuned = Some(if gemm_f32 {
                    p.autotune(self, &wd, &xq, &mut out32)?
                } else {
                    p.autotune(self, &wd, &xq, &mut out16)?
                });
            }
        }
        // One call: activation quantization (when `quant`), then the GEMM and any post-scale.
        let mut step = |quant: bool| -> KResult<()> {
            if quant {
                if input_scale.is_none() {
                    stream.memset_zeros(&mut amax)?;
                    let grid = blocks((m * k).div_ceil(8), 256)?.clamp(1, 2048);
                    let mut b = stream.launch_builder(&f_amax);
                    b.arg(&xd).arg(&len).arg(&mut amax);
                    launch(self, &f_amax, "absmax_bf16", b, config((grid, 1, 1), (256, 1, 1), 0))?;
                }
                let mut b = stream.launch_builder(&f_quant);
                let null = 0u64;
                b.arg(&xd).arg(&len);
                if input_scale.is_none() {
                    b.arg(&amax);
                } else {
                    b.arg(&null);
                }
                b.arg(&static_scale).arg(&mut xs).arg(&n_scale).arg(&mut xq);
                launch(
                    self,
                    &f_quant,
                    "quant_e4m3_tensor",
                    b,
                    config((blocks(quant_threads, 256)?, 1, 1), (256, 1, 1), 0),
                )?;
            }
            match &plan {
                Some(p) if gemm_f32 => p.run(self, &wd, &xq, &mut out32)?,
                Some(p) => p.run(self, &wd, &xq, &mut out16)?,
                None => {
                    let mut b = stream.launch_builder(&f_own);
                    b.arg(&xq)
                        .arg(&xs)
                        .arg(&zero)
                        .arg(&zero)
                        .arg(&wd)
                        .arg(&e5m2)
                        .arg(&ws)
                        .arg(&one)
                        .arg(&ws_rs)
                        .arg(&zero);
                    b.arg(&mi).arg(&ni).arg(&ki).arg(&mut out32);
                    launch(
                        self,
                        &f_own,
                        "fp8_block_gemm",
                        b,
                        config((blocks(n, 64)?, blocks(m, 64)?, 1), (256, 1, 1), 0),
                    )?;
                }
            }
            if post_scale && result_bf16 {
                let mut b = stream.launch_builder(&f_scale16);
                b.arg(&out32).arg(&mi).arg(&ni).arg(&ws).arg(&mut out16);
                launch(
                    self,
                    &f_scale16,
                    "scale_cols_bf16",
                    b,
                    config((blocks((m * n).div_ceil(4), 256)?, 1, 1), (256, 1, 1), 0),
                )?;
            } else if post_scale {
                let mut b = stream.launch_builder(&f_scale);
                b.arg(&mut out32).arg(&mi).arg(&ni).arg(&ws);
                launch(
                    self,
                    &f_scale,
                    "scale_cols",
                    b,
                    config((blocks(m * n, 256)?, 1, 1), (256, 1, 1), 0),
                )?;
            }
            Ok(())
        };
        let micros = median_micros(self, reps, || step(true))?;
        // The GEMM alone on the activations just quantized (what a runtime runs when the
        // previous op already emitted FP8, and what vLLM's GEMM benchmark times).
        let gemm_micros = if reps > 0 { median_micros(self, reps, || step(false))? } else { 0.0 };
        let act = if input_scale.is_some() { "static input scale" } else { "dynamic input scale" };
        let out = if result_bf16 {
            self.download(&out16)?.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect()
        } else {
            self.download(&out32)?
        };
        let tuning = match tuned {
            Some(0) => ", cached algo".to_string(),
            Some(t) => format!(", autotuned over {t}"),
            None => String::new(),
        };
        let run = GemmRun {
            out,
            micros,
            backend: match plan {
                Some(_) => format!(
                    "cublaslt fp8 {} {how}, {act}, {}, {} out{tuning}",
                    kind_name(kind),
                    if fa { "fast accum" } else { "fp32-promoted accum" },
                    if result_bf16 { "bf16" } else { "f32" }
                ),
                None => format!(
                    "qtool fp8 {} {how}, {act} (own kernel, CUDA cores: cuBLASLt had no algorithm)",
                    kind_name(kind)
                ),
            },
        };
        Ok(Fp8Run { run, gemm_micros })
    }

    fn fp8_block(
        &self,
        x: &[bf16],
        (m, n, k): (usize, usize, usize),
        w: &[u8],
        kind: Fp8Kind,
        wscale: &[f32],
        reps: usize,
    ) -> KResult<GemmRun> {
        let stream = self.stream().clone();
        let kb = k.div_ceil(128);
        let xd = self.upload(bits_bf16(x))?;
        let wd = self.upload(w)?;
        let ws = self.upload(wscale)?;
        let mut xq = self.zeros::<u8>(m * k)?;
        let mut xs = self.zeros::<f32>(m * kb)?;
        let mut out = self.zeros::<f32>(m * n)?;
        let f_q = self.function(&SRC, "quant_e4m3_group128")?;
        let f_g = self.function(&SRC, "fp8_block_gemm")?;
        let f_dx = self.function(&SRC, "dequant_act_group128")?;
        let f_v = self.function(&SRC, "gemv_fp8_block")?;
        let small = m <= GEMV_MAX_M;
        let mut xf = self.zeros::<f32>(if small { m * k } else { 1 })?;
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let e5m2 = (kind == Fp8Kind::E5M2) as i32;
        let micros = median_micros(self, reps, || {
            let mut b = stream.launch_builder(&f_q);
            b.arg(&xd).arg(&mi).arg(&ki).arg(&mut xq).arg(&mut xs);
            launch(
                self,
                &f_q,
                "quant_e4m3_group128",
                b,
                config((blocks(m * kb * 32, 256)?, 1, 1), (256, 1, 1), 0),
            )?;
            let (kbi, one, blk) = (kb as i32, 1i32, 128i32);
            if small {
                let mut b = stream.launch_builder(&f_dx);
                b.arg(&xq).arg(&xs).arg(&mi).arg(&ki).arg(&mut xf);
                launch(
                    self,
                    &f_dx,
                    "dequant_act_group128",
                    b,
                    config((blocks(m * k, 256)?, 1, 1), (256, 1, 1), 0),
                )?;
                let mut b = stream.launch_builder(&f_v);
                b.arg(&wd)
                    .arg(&ws)
                    .arg(&kbi)
                    .arg(&e5m2)
                    .arg(&xf)
                    .arg(&mi)
                    .arg(&ni)
                    .arg(&ki)
                    .arg(&mut out);
                return launch(
                    self,
                    &f_v,
                    "gemv_fp8_block",
                    b,
                    config((blocks(n, GEMV_ROWS_PER_BLOCK)?, 1, 1), (GEMV_THREADS, 1, 1), 0),
                );
            }
            let mut b = stream.launch_builder(&f_g);
            b.arg(&xq)
                .arg(&xs)
                .arg(&kbi)
                .arg(&one)
                .arg(&wd)
                .arg(&e5m2)
                .arg(&ws)
                .arg(&blk)
                .arg(&kbi)
                .arg(&one);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&mut out);
            launch(
                self,
                &f_g,
                "fp8_block_gemm",
                b,
                config((blocks(n, 64)?, blocks(m, 64)?, 1), (256, 1, 1), 0),
            )
        })?;
        Ok(GemmRun {
            out: self.download(&out)?,
            micros,
            backend: if small {
                format!("qtool fp8 block-128 {} gemv (own kernel, CUDA cores)", kind_name(kind))
            } else {
                format!("qtool fp8 block-128 {} tiled (own kernel, CUDA cores)", kind_name(kind))
            },
        })
    }
}

fn kind_name(k: Fp8Kind) -> &'static str {
    match k {
        Fp8Kind::E4M3 => "e4m3",
        Fp8Kind::E5M2 => "e5m2",
    }
}
