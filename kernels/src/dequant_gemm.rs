//! The shared shape of every "stored format → GEMM" operation that is not FP8 or Marlin:
//! batches up to [`GEMV_MAX_M`] run a fused dequant+GEMV kernel that reads each weight byte
//! once (the memory-bound regime where the format's size advantage shows); larger batches
//! dequantize the weight once per call into a 16-bit buffer and run cuBLAS on it (the
//! compute-bound regime, where a runtime would use a tensor-core kernel with the dequant fused
//! into its main loop; qtool's dequant pass costs one extra write+read of the weight).

use cudarc::driver::CudaSlice;

use crate::blas::{self, ElemType};
use crate::error::KResult;
use crate::gpu::Gpu;
use crate::ops::GemmRun;
use crate::timing::median_micros;

/// Must equal `QTOOL_GEMV_MAX_M` in `kernels/cuda/qtool_common.cuh`.
pub const GEMV_MAX_M: usize = 8;

/// Threads per block of the row GEMV kernels (`QTOOL_GEMV_WARPS` warps).
pub(crate) const GEMV_THREADS: u32 = 256;
/// Output rows per block of the row GEMV kernels (`QTOOL_GEMV_WARPS * QTOOL_GEMV_RPW`).
pub(crate) const GEMV_ROWS_PER_BLOCK: usize = 32;

impl Gpu {
    /// Runs `gemv` (m ≤ [`GEMV_MAX_M`]) or `dequant` + cuBLAS on `x16` (activations in the
    /// 16-bit type `half`), timed as a whole. `name` describes the format for the backend string.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dequant_gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        reps: usize,
        half: ElemType,
        x16: impl FnOnce() -> KResult<CudaSlice<u16>>,
        mut gemv: impl FnMut(&mut CudaSlice<f32>) -> KResult<()>,
        mut dequant: impl FnMut(&mut CudaSlice<u16>) -> KResult<()>,
        name: &str,
    ) -> KResult<GemmRun> {
        let mut out = self.zeros::<f32>(m * n)?;
        let (micros, backend) = if m <= GEMV_MAX_M {
            let t = median_micros(self, reps, || gemv(&mut out))?;
            (t, format!("qtool gemv {name} (fused dequant, CUDA cores)"))
        } else {
            let x = x16()?;
            let mut w16 = self.zeros::<u16>(n * k)?;
            let t = median_micros(self, reps, || {
                dequant(&mut w16)?;
                blas::gemm_16(self, &x, &w16, half, &mut out, ElemType::F32, (m, n, k))
            })?;
            let h = if half == ElemType::Bf16 { "bf16" } else { "f16" };
            (t, format!("qtool dequant {name} -> {h} + cublas {h} gemm"))
        };
        Ok(GemmRun { out: self.download(&out)?, micros, backend })
    }
}
