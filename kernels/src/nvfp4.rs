//! NVFP4 GEMM. On Hopper and older this is an EMULATION: the kernel decodes the stored E2M1
//! codes and E4M3 block scales and multiplies on CUDA cores (GEMV) or via a bf16 dequant pass +
//! cuBLAS; no FP4 tensor cores are used (those exist only on sm_100+).

use cudarc::driver::PushKernelArg;
use half::bf16;

use crate::blas::ElemType;
use crate::dequant_gemm::{GEMV_ROWS_PER_BLOCK, GEMV_THREADS};
use crate::error::{check_len, KResult, KernelError};
use crate::gemm_bf16::{bits_bf16, check_dims};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::ops::{GemmRun, NibbleOrder, ScaleLayout};
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("nvfp4");

fn roundup(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// (row bytes of the packed weight, stored rows, scale column count, scale byte count).
fn geometry(n: usize, k: usize, layout: ScaleLayout) -> KResult<(usize, usize, usize, usize)> {
    match layout {
        ScaleLayout::Linear => {
            if k % 16 != 0 {
                return Err(KernelError::Shape(format!(
                    "NVFP4 linear layout needs k % 16 == 0, k = {k}"
                )));
            }
            Ok((k / 2, n, k / 16, n * (k / 16)))
        }
        ScaleLayout::Swizzled => {
            let (n16, k16) = (roundup(n, 16), roundup(k, 16));
            let cols = roundup(k16 / 16, 4);
            Ok((k16 / 2, n16, cols, roundup(n16, 128) * cols))
        }
    }
}

impl Gpu {
    /// `out = x · Wᵀ` with `W[i][j] = e2m1 · (block_scale · global)` read from the stored
    /// `packed` codes (`[n, k/2]`, or zero-padded `[n16, k16/2]` for the swizzled layout) and
    /// E4M3 `block_scales`. An emulation on GPUs without FP4 tensor cores.
    #[allow(clippy::too_many_arguments)]
    pub fn nvfp4_gemm(
        &self,
        x: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        packed: &[u8],
        order: NibbleOrder,
        block_scales: &[u8],
        layout: ScaleLayout,
        global: f32,
        reps: usize,
    ) -> KResult<GemmRun> {
        check_dims(m, n, k)?;
        let (row_bytes, rows, scale_cols, scale_len) = geometry(n, k, layout)?;
        check_len("x", x.len(), m * k)?;
        check_len("packed NVFP4 weight", packed.len(), rows * row_bytes)?;
        check_len("NVFP4 block scales", block_scales.len(), scale_len)?;
        let stream = self.stream().clone();
        let wd = self.upload(packed)?;
        let sd = self.upload(block_scales)?;
        let xd = self.upload(bits_bf16(x))?;
        let f_gemv = self.function(&SRC, "gemv_nvfp4")?;
        let f_deq = self.function(&SRC, "dequant_nvfp4")?;
        let row_bytes_u = row_bytes as u64;
        let scale_cols_i = scale_cols as i32;
        let swz = (layout == ScaleLayout::Swizzled) as i32;
        let even_high = (order == NibbleOrder::EvenHigh) as i32;
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let xvec = (k % 8 == 0) as i32;
        let name = format!(
            "nvfp4 EMULATION ({}, {} scales)",
            if even_high == 1 { "even-high nibbles" } else { "even-low nibbles" },
            if swz == 1 { "swizzled" } else { "linear" }
        );
        self.dequant_gemm(
            (m, n, k),
            reps,
            ElemType::Bf16,
            || self.upload(bits_bf16(x)),
            |out| {
                let mut b = stream.launch_builder(&f_gemv);
                b.arg(&wd)
                    .arg(&row_bytes_u)
                    .arg(&sd)
                    .arg(&scale_cols_i)
                    .arg(&swz)
                    .arg(&even_high)
                    .arg(&global);
                b.arg(&xd).arg(&xvec).arg(&mi).arg(&ni).arg(&ki).arg(out);
                launch(
                    self,
                    &f_gemv,
                    "nvfp4 gemv",
                    b,
                    config((blocks(n, GEMV_ROWS_PER_BLOCK)?, 1, 1), (GEMV_THREADS, 1, 1), 0),
                )
            },
            |w16| {
                let mut b = stream.launch_builder(&f_deq);
                b.arg(&wd)
                    .arg(&row_bytes_u)
                    .arg(&sd)
                    .arg(&scale_cols_i)
                    .arg(&swz)
                    .arg(&even_high)
                    .arg(&global);
                b.arg(&ni).arg(&ki).arg(w16);
                launch(
                    self,
                    &f_deq,
                    "nvfp4 dequant",
                    b,
                    config((blocks(n * k.div_ceil(32), 256)?, 1, 1), (256, 1, 1), 0),
                )
            },
            &name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_quantizers_layouts() {
        assert_eq!(geometry(32, 64, ScaleLayout::Linear).unwrap(), (32, 32, 4, 128));
        assert!(geometry(32, 40, ScaleLayout::Linear).is_err());
        // ComfyUI: n=20 -> 32 rows, k=40 -> 48 (24 bytes), 3 scale cols -> 4, 128 padded rows.
        let (rb, rows, cols, len) = geometry(20, 40, ScaleLayout::Swizzled).unwrap();
        assert_eq!((rb, rows, cols, len), (24, 32, 4, 512));
        let [r, c] = qtool_quantizers::float::swizzle::blocked_shape(32, 3);
        assert_eq!((r * c, c), (len, cols));
    }
}
