//! int4 GEMM over GPTQ (v1/v2, act-order), AWQ and compressed-tensors pack-quantized weights,
//! read as the checkpoint stores them (kernels/cuda/int4.cu). Activations are f16.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use crate::blas::ElemType;
use crate::dequant_gemm::{GEMV_ROWS_PER_BLOCK, GEMV_THREADS};
use crate::error::{check_len, KResult, KernelError};
use crate::gemm_bf16::{bits_f16, check_dims};
use crate::gpu::Gpu;
use crate::launch::{blocks, config, launch};
use crate::ops::{GemmRun, Int4Weights};
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("int4");

/// k-slices per block in the column GEMVs (`KSLICES` in int4.cu).
const KSLICES: usize = 8;

fn shape_err(msg: String) -> KernelError {
    KernelError::Shape(msg)
}

/// Number of groups from a scale tensor of `len` values with `per` values per group; checks
/// that every k has a group (no out-of-bounds group index on the GPU).
fn groups_of(
    what: &str,
    len: usize,
    per: usize,
    k: usize,
    group: usize,
    g_idx: Option<&[i32]>,
) -> KResult<usize> {
    if per == 0 || len % per != 0 || len == 0 {
        return Err(shape_err(format!("{what}: {len} scales is not a positive multiple of {per}")));
    }
    let groups = len / per;
    match g_idx {
        Some(gi) => {
            check_len("g_idx", gi.len(), k)?;
            if let Some((i, g)) =
                gi.iter().enumerate().find(|(_, &g)| g < 0 || g as usize >= groups)
            {
                return Err(shape_err(format!(
                    "g_idx[{i}] = {g} is outside the {groups} groups of the scales"
                )));
            }
        }
        None => {
            if group == 0 {
                return Err(shape_err("group size 0".into()));
            }
            if k.div_ceil(group) > groups {
                return Err(shape_err(format!("{what}: k = {k} with group size {group} needs {} groups, the scales have {groups}", k.div_ceil(group))));
            }
        }
    }
    Ok(groups)
}

impl Gpu {
    /// `out[m, n] = x[m, k] · W[n, k]ᵀ` with `W` dequantized from the stored int4 tensors.
    pub fn int4_gemm(
        &self,
        x: &[f16],
        m: usize,
        n: usize,
        k: usize,
        w: Int4Weights<'_>,
        reps: usize,
    ) -> KResult<GemmRun> {
        check_dims(m, n, k)?;
        check_len("x", x.len(), m * k)?;
        match w {
            Int4Weights::Gptq { qweight, qzeros, scales, g_idx, v2, group } => {
                if k % 8 != 0 || n % 8 != 0 {
                    return Err(shape_err(format!(
                        "GPTQ needs k and n multiples of 8 (k = {k}, n = {n})"
                    )));
                }
                check_len("GPTQ qweight", qweight.len(), k / 8 * n)?;
                let groups = groups_of("GPTQ scales", scales.len(), n, k, group, g_idx)?;
                check_len("GPTQ qzeros", qzeros.len(), groups * n / 8)?;
                self.int4_columns(
                    x,
                    (m, n, k),
                    true,
                    qweight,
                    qzeros,
                    scales,
                    g_idx,
                    group,
                    if v2 { 0 } else { 1 },
                    w.format_name(),
                    reps,
                )
            }
            Int4Weights::Awq { qweight, qzeros, scales, group } => {
                if n % 8 != 0 {
                    return Err(shape_err(format!("AWQ needs n a multiple of 8 (n = {n})")));
                }
                check_len("AWQ qweight", qweight.len(), k * n / 8)?;
                let groups = groups_of("AWQ scales", scales.len(), n, k, group, None)?;
                check_len("AWQ qzeros", qzeros.len(), groups * n / 8)?;
                self.int4_columns(
                    x,
                    (m, n, k),
                    false,
                    qweight,
                    qzeros,
                    scales,
                    None,
                    group,
                    0,
                    "awq",
                    reps,
                )
            }
            Int4Weights::Compressed { packed, scales, zero_points, g_idx, group } => {
                check_len("compressed-tensors weight_packed", packed.len(), n * k.div_ceil(8))?;
                let groups =
                    groups_of("compressed-tensors weight_scale", scales.len(), n, k, group, g_idx)?;
                if let Some(zp) = zero_points {
                    check_len(
                        "compressed-tensors weight_zero_point",
                        zp.len(),
                        n.div_ceil(8) * groups,
                    )?;
                }
                self.int4_ct(x, (m, n, k), packed, scales, zero_points, g_idx, group, groups, reps)
            }
        }
    }

    /// GPTQ (`gptq == true`) or AWQ: the column-parallel GEMV with a fixed-order split-k
    /// reduction, or dequant + cuBLAS f16.
    #[allow(clippy::too_many_arguments)]
    fn int4_columns(
        &self,
        x: &[f16],
        (m, n, k): (usize, usize, usize),
        gptq: bool,
        qweight: &[i32],
        qzeros: &[i32],
        scales: &[f32],
        g_idx: Option<&[i32]>,
        group: usize,
        zero_add: i32,
        name: &str,
        reps: usize,
    ) -> KResult<GemmRun> {
        let stream = self.stream().clone();
        let qw = self.upload(qweight)?;
        let qz = self.upload(qzeros)?;
        let sc = self.upload(scales)?;
        let gi = g_idx.map(|g| self.upload(g)).transpose()?;
        let xd = self.upload(bits_f16(x))?;
        let kind = if gptq { "gptq" } else { "awq" };
        let f_gemv = self.function(&SRC, &format!("gemv_{kind}"))?;
        let f_deq = self.function(&SRC, &format!("dequant_{kind}"))?;
        let f_red = self.function(&SRC, "reduce_partials")?;
        let (mi, ni, ki, gs) = (m as i32, n as i32, k as i32, group.min(i32::MAX as usize) as i32);
        let null = 0u64;
        // Column blocks and enough k-splits to fill the GPU about four blocks per SM.
        let cols_per_block = if gptq { 32 } else { 256 };
        let grid_x = blocks(n, cols_per_block)?;
        let k_rows = if gptq { k / 8 } else { k };
        let sms = self.sm_count()? as usize;
        let ksplit = (4 * sms).div_ceil(grid_x as usize).clamp(1, k_rows.div_ceil(KSLICES).max(1));
        let mut partial: Option<CudaSlice<f32>> =
            if ksplit > 1 { Some(self.zeros::<f32>(ksplit * m * n)?) } else { None };
        let splits = ksplit as i32;
        self.dequant_gemm(
            (m, n, k),
            reps,
            ElemType::F16,
            || self.upload(bits_f16(x)),
            |out| {
                let cfg = config((grid_x, ksplit as u32, 1), (32, KSLICES as u32, 1), 0);
                let mut b = stream.launch_builder(&f_gemv);
                b.arg(&qw).arg(&qz).arg(&sc);
                if gptq {
                    match &gi {
                        Some(g) => b.arg(g),
                        None => b.arg(&null),
                    };
                }
                b.arg(&gs);
                if gptq {
                    b.arg(&zero_add);
                }
                b.arg(&xd).arg(&mi).arg(&ni).arg(&ki);
                match partial.as_mut() {
                    Some(p) => {
                        b.arg(&mut *p);
                        launch(self, &f_gemv, "int4 column gemv", b, cfg)?;
                        let mut r = stream.launch_builder(&f_red);
                        r.arg(&*p).arg(&splits).arg(&mi).arg(&ni).arg(out);
                        launch(
                            self,
                            &f_red,
                            "reduce_partials",
                            r,
                            config((blocks(m * n, 256)?, 1, 1), (256, 1, 1), 0),
                        )
                    }
                    None => {
                        b.arg(out);
                        launch(self, &f_gemv, "int4 column gemv", b, cfg)
                    }
                }
            },
            |w16| {
                let words = if gptq { k / 8 * n } else { k.div_ceil(8) * n / 8 };
                let mut b = stream.launch_builder(&f_deq);
                b.arg(&qw).arg(&qz).arg(&sc);
                if gptq {
                    match &gi {
                        Some(g) => b.arg(g),
                        None => b.arg(&null),
                    };
                }
                b.arg(&gs);
                if gptq {
                    b.arg(&zero_add);
                }
                b.arg(&ni).arg(&ki).arg(w16);
                launch(
                    self,
                    &f_deq,
                    "int4 dequant",
                    b,
                    config((blocks(words, 256)?, 1, 1), (256, 1, 1), 0),
                )
            },
            &format!("{name}{}", if g_idx.is_some() { " act-order" } else { "" }),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn int4_ct(
        &self,
        x: &[f16],
        (m, n, k): (usize, usize, usize),
        packed: &[i32],
        scales: &[f32],
        zero_points: Option<&[i32]>,
        g_idx: Option<&[i32]>,
        group: usize,
        groups: usize,
        reps: usize,
    ) -> KResult<GemmRun> {
        let stream = self.stream().clone();
        let pk = self.upload(packed)?;
        let sc = self.upload(scales)?;
        let zp = zero_points.map(|z| self.upload(z)).transpose()?;
        let gi = g_idx.map(|g| self.upload(g)).transpose()?;
        let xd = self.upload(bits_f16(x))?;
        let f_gemv = self.function(&SRC, "gemv_ct")?;
        let f_deq = self.function(&SRC, "dequant_ct")?;
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let (gs, gn) = (group.min(i32::MAX as usize) as i32, groups as i32);
        let xvec = (k % 8 == 0) as i32;
        let null = 0u64;
        let name = format!(
            "compressed-tensors int4 {}{}",
            if zero_points.is_some() { "asymmetric" } else { "symmetric" },
            if g_idx.is_some() { " act-order" } else { "" }
        );
        self.dequant_gemm(
            (m, n, k),
            reps,
            ElemType::F16,
            || self.upload(bits_f16(x)),
            |out| {
                let mut b = stream.launch_builder(&f_gemv);
                b.arg(&pk).arg(&sc);
                match &zp {
                    Some(z) => b.arg(z),
                    None => b.arg(&null),
                };
                match &gi {
                    Some(g) => b.arg(g),
                    None => b.arg(&null),
                };
                b.arg(&gs).arg(&gn).arg(&xd).arg(&xvec).arg(&mi).arg(&ni).arg(&ki).arg(out);
                launch(
                    self,
                    &f_gemv,
                    "ct gemv",
                    b,
                    config((blocks(n, GEMV_ROWS_PER_BLOCK)?, 1, 1), (GEMV_THREADS, 1, 1), 0),
                )
            },
            |w16| {
                let mut b = stream.launch_builder(&f_deq);
                b.arg(&pk).arg(&sc);
                match &zp {
                    Some(z) => b.arg(z),
                    None => b.arg(&null),
                };
                match &gi {
                    Some(g) => b.arg(g),
                    None => b.arg(&null),
                };
                b.arg(&gs).arg(&gn).arg(&ni).arg(&ki).arg(w16);
                launch(
                    self,
                    &f_deq,
                    "ct dequant",
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
    fn group_checks() {
        assert_eq!(groups_of("s", 8 * 4, 8, 512, 128, None).unwrap(), 4);
        assert!(groups_of("s", 8 * 3, 8, 512, 128, None).is_err());
        assert!(groups_of("s", 7, 8, 512, 128, None).is_err());
        assert!(groups_of("s", 16, 8, 4, 1, Some(&[0, 1, 2, 1])).is_err());
        assert_eq!(groups_of("s", 16, 8, 4, 1, Some(&[0, 1, 1, 0])).unwrap(), 2);
        assert!(groups_of("s", 16, 8, 4, 1, Some(&[0, 1, -1, 0])).is_err());
        assert!(groups_of("s", 16, 8, 4, 0, None).is_err());
    }
}
