//! GGUF block formats on the GPU: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
//! (kernels/cuda/gguf.cu).
//! Activations stay f32 in the fused GEMV (as the contract gives them); the large-batch path
//! rounds them to bf16 for cuBLAS.

use cudarc::driver::PushKernelArg;
use half::bf16;

use crate::blas::ElemType;
use crate::dequant_gemm::{GEMV_ROWS_PER_BLOCK, GEMV_THREADS};
use crate::error::{check_len, KResult, KernelError};
use crate::gemm_bf16::{bits_bf16, check_dims};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::ops::{GemmRun, GgmlType};
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("gguf");

/// The GGUF types with GPU kernels.
pub const GGUF_GPU_TYPES: [GgmlType; 8] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn kernel_suffix(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        _ => return None,
    })
}

impl Gpu {
    /// `out[m, n] = x[m, k] · W[n, k]ᵀ` with `W` the GGUF tensor's raw blocks (`n` rows of
    /// `k / block_size` blocks each, as the file stores a `[k, n]` GGUF tensor, ne0 = k).
    #[allow(clippy::too_many_arguments)]
    pub fn gguf_gemm(
        &self,
        x: &[f32],
        m: usize,
        n: usize,
        k: usize,
        ty: GgmlType,
        blocks_bytes: &[u8],
        reps: usize,
    ) -> KResult<GemmRun> {
        check_dims(m, n, k)?;
        let suffix = kernel_suffix(ty).ok_or_else(|| {
            KernelError::Unsupported(format!(
                "GGUF type {} has no GPU kernel (have: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                ty.name()
            ))
        })?;
        let row_bytes = ty.row_size(k as u64).ok_or_else(|| {
            KernelError::Shape(format!(
                "k = {k} is not a multiple of {}'s block size {}",
                ty.name(),
                ty.block_size()
            ))
        })?;
        check_len("x", x.len(), m * k)?;
        check_len(
            &format!("{} weight bytes", ty.name()),
            blocks_bytes.len(),
            n * row_bytes as usize,
        )?;
        let stream = self.stream().clone();
        let wd = self.upload(blocks_bytes)?;
        let xd = self.upload(x)?;
        let f_gemv = self.function(&SRC, &format!("gemv_{suffix}"))?;
        let f_deq = self.function(&SRC, &format!("dequant_{suffix}"))?;
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let xvec = (k % 4 == 0) as i32;
        self.dequant_gemm(
            (m, n, k),
            reps,
            ElemType::Bf16,
            || {
                let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                self.upload(bits_bf16(&xb))
            },
            |out| {
                let mut b = stream.launch_builder(&f_gemv);
                b.arg(&wd).arg(&row_bytes).arg(&xd).arg(&xvec).arg(&mi).arg(&ni).arg(&ki).arg(out);
                launch(
                    self,
                    &f_gemv,
                    "gguf gemv",
                    b,
                    config((blocks(n, GEMV_ROWS_PER_BLOCK)?, 1, 1), (GEMV_THREADS, 1, 1), 0),
                )
            },
            |w16| {
                let mut b = stream.launch_builder(&f_deq);
                b.arg(&wd).arg(&row_bytes).arg(&ni).arg(&ki).arg(w16);
                launch(
                    self,
                    &f_deq,
                    "gguf dequant",
                    b,
                    config((blocks(n * k.div_ceil(32), 256)?, 1, 1), (256, 1, 1), 0),
                )
            },
            ty.name(),
        )
    }
}
