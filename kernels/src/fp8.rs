//! FP8 scaled GEMM on the stored FP8 weights.
//!
//! - Per-tensor: activations are quantized to E4M3 on the GPU (`x / input_scale`, or dynamic
//!   `absmax/448` computed on the GPU), then one cuBLASLt FP8 matmul applies both scales through
//!   its A/B scale pointers (FP32 accumulation, no fast accumulation, FP32 output).
//! - Per-channel: cuBLASLt `OUTER_VEC_32F` scaling of A (one scale per output channel, cuBLAS
//!   12.9+) when it offers an algorithm; otherwise an unscaled-weight FP8 matmul followed by
//!   qtool's `scale_cols` kernel on the FP32 output. [`GemmRun::backend`] says which ran.
//! - Block 128×128 (activations per 1×128 group): qtool's own kernel (`fp8_block_gemm`).
//! - E5M2 weights: cuBLASLt's E5M2 × E4M3 combination (A = weights E5M2, B = activations
//!   E4M3); the block kernel reads E5M2 directly.

use half::bf16;

use cudarc::driver::{DevicePtr, PushKernelArg};

use crate::blas::{ElemType, LtPlan, LtScale};
use crate::error::{check_len, KResult, KernelError};
use crate::gemm_bf16::{bits_bf16, check_dims};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::ops::{Fp8Kind, Fp8Scale, GemmRun};
use crate::timing::median_micros;
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("fp8");

/// Which per-channel implementation to use (the tests run both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Path {
    /// cuBLASLt vector scales when available, else the post-scale kernel.
    Auto,
    /// Always an unscaled-weight matmul plus the post-scale kernel.
    PostScale,
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
        self.fp8_gemm_with(x, m, n, k, w, kind, scale, input_scale, Fp8Path::Auto, reps)
    }

    /// [`Gpu::fp8_gemm`] with an explicit per-channel path.
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
        path: Fp8Path,
        reps: usize,
    ) -> KResult<GemmRun> {
        check_dims(m, n, k)?;
        check_len("x", x.len(), m * k)?;
        check_len("w", w.len(), n * k)?;
        if let Some(s) = input_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::Shape(format!("input_scale {s} is not a positive finite number")));
            }
        }
        match scale {
            Fp8Scale::PerTensor(s) => self.fp8_lt(x, (m, n, k), w, kind, &[*s], false, input_scale, path, reps),
            Fp8Scale::PerChannel(s) => {
                check_len("per-channel scales", s.len(), n)?;
                self.fp8_lt(x, (m, n, k), w, kind, s, true, input_scale, path, reps)
            }
            Fp8Scale::Block128(s) => {
                check_len("block scales", s.len(), n.div_ceil(128) * k.div_ceil(128))?;
                if input_scale.is_some() {
                    return Err(KernelError::Unsupported(
                        "block-scaled FP8 quantizes activations per 1x128 group; a static input_scale does not apply".into(),
                    ));
                }
                self.fp8_block(x, (m, n, k), w, kind, s, reps)
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
        path: Fp8Path,
        reps: usize,
    ) -> KResult<GemmRun> {
        let stream = self.stream().clone();
        let xd = self.upload(bits_bf16(x))?;
        let wd = self.upload(w)?;
        let ws = self.upload(wscale)?;
        let ones = self.upload(&[1.0f32])?;
        let mut xq = self.zeros::<u8>(m * k)?;
        let mut xs = self.zeros::<f32>(1)?;
        let mut amax = self.zeros::<u32>(1)?;
        let mut out = self.zeros::<f32>(m * n)?;
        let w_ty = match kind {
            Fp8Kind::E4M3 => ElemType::E4M3,
            Fp8Kind::E5M2 => ElemType::E5M2,
        };
        let ptr = |s: &cudarc::driver::CudaSlice<f32>| s.device_ptr(&stream).0;
        // Plan: vector scales in cuBLASLt, else scalar 1.0 on A and a post-scale.
        let (plan, post_scale, how) = if !per_channel {
            (LtPlan::fp8(self, w_ty, ElemType::E4M3, ElemType::F32, LtScale::Scalar, ptr(&ws), ptr(&xs), (m, n, k))?, false, "per-tensor")
        } else {
            let vec = if path == Fp8Path::Auto {
                LtPlan::fp8(self, w_ty, ElemType::E4M3, ElemType::F32, LtScale::OuterVec, ptr(&ws), ptr(&xs), (m, n, k)).ok()
            } else {
                None
            };
            match vec {
                Some(p) => (p, false, "per-channel (cublaslt outer-vector scales)"),
                None => (
                    LtPlan::fp8(self, w_ty, ElemType::E4M3, ElemType::F32, LtScale::Scalar, ptr(&ones), ptr(&xs), (m, n, k))?,
                    true,
                    "per-channel (post-scale kernel)",
                ),
            }
        };
        let f_amax = self.function(&SRC, "absmax_bf16")?;
        let f_quant = self.function(&SRC, "quant_e4m3_tensor")?;
        let f_scale = self.function(&SRC, "scale_cols")?;
        let len = (m * k) as u64;
        let quant_threads = (m * k).div_ceil(8).max(m * k % 8);
        let (mi, ni) = (m as i32, n as i32);
        let static_scale = input_scale.unwrap_or(1.0);
        let micros = median_micros(self, reps, || {
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
            b.arg(&static_scale).arg(&mut xs).arg(&mut xq);
            launch(self, &f_quant, "quant_e4m3_tensor", b, config((blocks(quant_threads.max(1), 256)?, 1, 1), (256, 1, 1), 0))?;
            plan.run(self, &wd, &xq, &mut out)?;
            if post_scale {
                let mut b = stream.launch_builder(&f_scale);
                b.arg(&mut out).arg(&mi).arg(&ni).arg(&ws);
                launch(self, &f_scale, "scale_cols", b, config((blocks(m * n, 256)?, 1, 1), (256, 1, 1), 0))?;
            }
            Ok(())
        })?;
        let act = if input_scale.is_some() { "static input scale" } else { "dynamic input scale" };
        Ok(GemmRun {
            out: self.download(&out)?,
            micros,
            backend: format!("cublaslt fp8 {} {how}, {act}", kind_name(kind)),
        })
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
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let e5m2 = (kind == Fp8Kind::E5M2) as i32;
        let micros = median_micros(self, reps, || {
            let mut b = stream.launch_builder(&f_q);
            b.arg(&xd).arg(&mi).arg(&ki).arg(&mut xq).arg(&mut xs);
            launch(self, &f_q, "quant_e4m3_group128", b, config((blocks(m * kb * 32, 256)?, 1, 1), (256, 1, 1), 0))?;
            let mut b = stream.launch_builder(&f_g);
            b.arg(&xq).arg(&xs).arg(&wd).arg(&e5m2).arg(&ws).arg(&mi).arg(&ni).arg(&ki).arg(&mut out);
            launch(self, &f_g, "fp8_block_gemm", b, config((blocks(n, 64)?, blocks(m, 64)?, 1), (256, 1, 1), 0))
        })?;
        Ok(GemmRun {
            out: self.download(&out)?,
            micros,
            backend: format!("qtool fp8 block-128 {} (own kernel, CUDA cores)", kind_name(kind)),
        })
    }
}

fn kind_name(k: Fp8Kind) -> &'static str {
    match k {
        Fp8Kind::E4M3 => "e4m3",
        Fp8Kind::E5M2 => "e5m2",
    }
}
