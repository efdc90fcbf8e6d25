//! The speed baseline: cuBLAS BF16 GEMM (FP32 accumulation, BF16 output as a runtime would
//! produce it, widened to f32 on the host).

use half::bf16;

use crate::blas::{self, ElemType};
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
    /// cuBLAS BF16: `out[m, n] = x[m, k] · w[n, k]ᵀ` (FP32 accumulation, BF16 result).
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
        let mut out = self.zeros::<u8>(m * n * 2)?;
        let micros = median_micros(self, reps, || {
            blas::gemm_16(self, &xd, &wd, ElemType::Bf16, &mut out, ElemType::Bf16, (m, n, k))
        })?;
        let bytes = self.download(&out)?;
        let out = bytes
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect();
        Ok(GemmRun { out, micros, backend: "cublas bf16 (bf16 out)".to_string() })
    }
}
