//! The GPU backend: each layout's stored parts handed to its `qtool_kernels` operation exactly
//! as the checkpoint holds them (packed words, swizzled scales, permuted Marlin tiles), so what
//! is verified is the file as a runtime would read it.
//!
//! Static activation scales stored next to FP8 layers (`input_scale`) are not passed on: they
//! were calibrated on the model's real activations, and the seeded ones here could clip against
//! them, which would measure the calibration, not the weights.

use half::{bf16, f16};
use qtool_formats::TensorRef;
use qtool_kernels::{
    Fp8Kind, Fp8Scale, GemmRun, Gpu, Int4Weights, KernelError, NibbleOrder, ScaleLayout,
};
use qtool_quantizers::decode;

use crate::discover::{Fp8Granularity, IntFamily, Layer, LayerFormat, Nvfp4Layout};
use crate::runner::{Backend, BackendError, KernelRun};

/// Timed repetitions per kernel (after the warm-up the timing module does).
pub const DEFAULT_REPS: usize = 20;

/// [`Backend`] over one GPU.
#[derive(Debug)]
pub struct GpuBackend {
    gpu: Gpu,
    reps: usize,
}

impl GpuBackend {
    /// Opens GPU `ordinal`; `Err` carries the probe's reason when there is none.
    pub fn open(ordinal: usize, reps: usize) -> Result<Self, KernelError> {
        Ok(GpuBackend { gpu: Gpu::open(ordinal)?, reps })
    }
}

fn failed(e: KernelError) -> BackendError {
    match e {
        KernelError::Unsupported(why) => BackendError::Unsupported(why),
        e => BackendError::Failed(e.to_string()),
    }
}

fn bad(msg: String) -> BackendError {
    BackendError::Failed(msg)
}

fn run(r: Result<GemmRun, KernelError>) -> Result<KernelRun, BackendError> {
    r.map(|g| KernelRun { out: g.out, micros: g.micros }).map_err(failed)
}

fn i32s(t: TensorRef<'_>) -> Vec<i32> {
    t.data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn f32s(t: TensorRef<'_>) -> Result<Vec<f32>, BackendError> {
    decode::decode_all(t).map_err(|e| bad(format!("{}: {e}", t.info.name)))
}

fn part<'a>(layer: &Layer<'a>, role: &str) -> Result<TensorRef<'a>, BackendError> {
    layer.require(role).map_err(|e| bad(e.to_string()))
}

/// Groups along K from a `[G, N]` (GPTQ/AWQ) scale tensor: the group size the kernel wants.
fn group_cols(k: usize, groups: u64) -> Result<usize, BackendError> {
    match groups {
        0 => Err(bad("scales have no groups".into())),
        g => Ok(k.div_ceil(g as usize)),
    }
}

impl Backend for GpuBackend {
    fn device(&self) -> String {
        let d = self.gpu.device();
        format!("{} ({}, driver {})", d.name, self.gpu.arch(), self.gpu.driver_version())
    }

    fn run_layer(&self, layer: &Layer<'_>, x: &[f32], m: usize) -> Result<KernelRun, BackendError> {
        let (n, k, reps) = (layer.n, layer.k, self.reps);
        let xb = || x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
        let xh = || x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        match layer.format {
            LayerFormat::Fp8 { e5m2, granularity } => {
                let w = part(layer, "weight")?;
                let scale = layer.part("weight_scale").or_else(|| layer.part("scale_weight"));
                let values = match scale {
                    Some(s) => f32s(s)?,
                    // A bare F8 weight: ComfyUI's unscaled cast, scale 1.
                    None => vec![1.0],
                };
                let scale = match granularity {
                    Fp8Granularity::Tensor => Fp8Scale::PerTensor(values[0]),
                    Fp8Granularity::Channel => Fp8Scale::PerChannel(values),
                    Fp8Granularity::Block128 => Fp8Scale::Block128(values),
                };
                let kind = if e5m2 { Fp8Kind::E5M2 } else { Fp8Kind::E4M3 };
                run(self.gpu.fp8_gemm(&xb(), m, n, k, w.data, kind, &scale, None, reps))
            }
            LayerFormat::Nvfp4 { layout } => {
                let (data, order, scales, global) = match layout {
                    Nvfp4Layout::Comfy => {
                        ("weight", NibbleOrder::EvenHigh, ScaleLayout::Swizzled, "weight_scale_2")
                    }
                    Nvfp4Layout::ModelOpt => {
                        ("weight", NibbleOrder::EvenLow, ScaleLayout::Linear, "weight_scale_2")
                    }
                    Nvfp4Layout::CompressedTensors => (
                        "weight_packed",
                        NibbleOrder::EvenLow,
                        ScaleLayout::Linear,
                        "weight_global_scale",
                    ),
                };
                let packed = part(layer, data)?;
                let block_scales = part(layer, "weight_scale")?;
                let g = f32s(part(layer, global)?)?[0];
                // compressed-tensors stores the divisor.
                let g = if layout == Nvfp4Layout::CompressedTensors { 1.0 / g } else { g };
                run(self.gpu.nvfp4_gemm(
                    &xb(),
                    m,
                    n,
                    k,
                    packed.data,
                    order,
                    block_scales.data,
                    scales,
                    g,
                    reps,
                ))
            }
            LayerFormat::Int { family, bits: 4, .. } => {
                let x = xh();
                match family {
                    IntFamily::Gptq { v2 } => {
                        let (qw, qz, s) = (
                            part(layer, "qweight")?,
                            part(layer, "qzeros")?,
                            part(layer, "scales")?,
                        );
                        let g_idx = layer.part("g_idx").map(i32s);
                        let group = group_cols(k, s.info.shape[0])?;
                        let (qw, qz, s) = (i32s(qw), i32s(qz), f32s(s)?);
                        let w = Int4Weights::Gptq {
                            qweight: &qw,
                            qzeros: &qz,
                            scales: &s,
                            g_idx: g_idx.as_deref(),
                            v2,
                            group,
                        };
                        run(self.gpu.int4_gemm(&x, m, n, k, w, reps))
                    }
                    IntFamily::Awq => {
                        let (qw, qz, s) = (
                            part(layer, "qweight")?,
                            part(layer, "qzeros")?,
                            part(layer, "scales")?,
                        );
                        let group = group_cols(k, s.info.shape[0])?;
                        let (qw, qz, s) = (i32s(qw), i32s(qz), f32s(s)?);
                        let w = Int4Weights::Awq { qweight: &qw, qzeros: &qz, scales: &s, group };
                        run(self.gpu.int4_gemm(&x, m, n, k, w, reps))
                    }
                    IntFamily::CompressedTensors => {
                        let (p, s) = (part(layer, "weight_packed")?, part(layer, "weight_scale")?);
                        let groups = s.info.shape.get(1).copied().unwrap_or(1);
                        let group = group_cols(k, groups)?;
                        let zp = layer.part("weight_zero_point").map(i32s);
                        let g_idx = layer.part("weight_g_idx").map(i32s);
                        let (p, s) = (i32s(p), f32s(s)?);
                        let w = Int4Weights::Compressed {
                            packed: &p,
                            scales: &s,
                            zero_points: zp.as_deref(),
                            g_idx: g_idx.as_deref(),
                            group,
                        };
                        run(self.gpu.int4_gemm(&x, m, n, k, w, reps))
                    }
                }
            }
            LayerFormat::Marlin { bits: 4, group } => {
                let b = i32s(part(layer, "B")?);
                let s = part(layer, "s")?;
                let s: Vec<f16> =
                    s.data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
                run(self.gpu.marlin_w4a16(&xh(), m, n, k, &b, &s, group, reps))
            }
            LayerFormat::Gguf { ty } => {
                let blocks = layer.parts.first().ok_or_else(|| bad("no data".into()))?.tensor.data;
                run(self.gpu.gguf_gemm(x, m, n, k, ty, blocks, reps))
            }
            LayerFormat::Int { bits, .. } | LayerFormat::Marlin { bits, .. } => {
                Err(BackendError::Unsupported(format!("no kernel for {bits}-bit integer weights")))
            }
        }
    }

    fn gemm_bf16(
        &self,
        x: &[f32],
        w: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<KernelRun, BackendError> {
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        run(self.gpu.gemm_bf16(&xb, &wb, m, n, k, self.reps))
    }
}
