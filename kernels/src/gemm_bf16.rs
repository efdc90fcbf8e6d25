//! The speed baseline: cuBLAS BF16 GEMM (FP32 accumulation, BF16 output as a runtime would
//! produce it, widened to f32 on the host).

use half::bf16;

use crate::blas::{self, ElemType, LtPlan};
use crate::error::{check_len, KResult, KernelError};
use crate::gpu::Gpu;
use crate::ops::GemmRun;
use crate::timing::median_micros;

/// Rejects empty GEMMs (cuBLAS and the kernels need m, n, k ≥ 1) and sizes whose products
/// overflow.
pub(crate) fn check_dims(m: usize, n: usize, k: usize) -> KResult<()> {
    if m == 0 || n == 0 || k == 0 {
        return Err(KernelError::Shape(format!("empty GEMM m={m} n={n} k={k}")));
    }
    m.checked_mul(k)
        .and(n.checked_mul(k))
        .and(m.checked_mul(n))
        .and(m.checked_mul(n).and_then(|v| v.checked_mul(4)))
        .ok_or_else(|| KernelError::Shape(format!("GEMM m={m} n={n} k={k} overflows")))?;
    if m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize {
        return Err(KernelError::Shape(format!(
            "GEMM m={m} n={n} k={k} exceeds 32-bit dimensions"
        )));
    }
    Ok(())
}

/// bf16 slice as its raw bits (what the kernels and cuBLAS read).
pub(crate) fn bits_bf16(v: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(v)
}

/// f16 slice as its raw bits.
pub(crate) fn bits_f16(v: &[half::f16]) -> &[u16] {
    bytemuck::cast_slice(v)
}

impl Gpu {
    /// BF16 baseline: `out[m, n] = x[m, k] · w[n, k]ᵀ` (FP32 accumulation, BF16 result). When
    /// timing (`reps > 0`) both cuBLAS `GemmEx` and cuBLASLt with its autotuned best of the top
    /// heuristic candidates (the same tuning the FP8 path gets) are timed, and the faster one is
    /// reported and produces the result, so the baseline is never weaker than either.
    pub fn gemm_bf16(
        &self,
        x: &[bf16],
        w: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        reps: usize,
    ) -> KResult<GemmRun> {
        check_dims(m, n, k)?;
        check_len("x", x.len(), m * k)?;
        check_len("w", w.len(), n * k)?;
        let xd = self.upload(bits_bf16(x))?;
        let wd = self.upload(bits_bf16(w))?;
        let mut out = self.zeros::<u16>(m * n)?;
        let gemm_ex = |out: &mut cudarc::driver::CudaSlice<u16>| {
            blas::gemm_16(self, &xd, &wd, ElemType::Bf16, out, ElemType::Bf16, (m, n, k))
        };
        let ex_micros = median_micros(self, reps, || gemm_ex(&mut out))?;
        let mut micros = ex_micros;
        let mut backend = "cublas gemmex bf16 (bf16 out)".to_string();
        if reps > 0 {
            // cuBLASLt: a missing algorithm only means GemmEx stays the baseline.
            if let Ok(mut plan) = LtPlan::bf16(self, ElemType::Bf16, (m, n, k)) {
                let tried = plan.autotune(self, &wd, &xd, &mut out)?;
                let lt_micros = median_micros(self, reps, || plan.run(self, &wd, &xd, &mut out))?;
                if lt_micros < ex_micros {
                    micros = lt_micros;
                    backend = format!(
                        "cublaslt bf16 (bf16 out, autotuned{}; gemmex {ex_micros:.1} µs)",
                        if tried > 0 { format!(" over {tried} candidates") } else { String::new() }
                    );
                } else {
                    backend = format!("cublas gemmex bf16 (bf16 out; cublaslt {lt_micros:.1} µs)");
                    gemm_ex(&mut out)?;
                }
            }
        }
        let out = self.download(&out)?.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect();
        Ok(GemmRun { out, micros, backend })
    }
}
