//! The pipeline's GPU path (GPTQ, AWQ): the residual streams of every window live on the device for
//! the whole run, each block is uploaded once, its inputs are captured straight into device
//! Hessians (cuBLAS SSYRK into f64), GPTQ factorizes and solves there, and the quantized pass
//! runs there too. The host only decodes weights from the checkpoint, rounds the RTN baseline,
//! packs the results and writes the resume state.
//!
//! Peak device memory for a 7B-shaped model with 128 × 512 calibration tokens: the two sets of
//! residual streams (≈ 1.1 GB) and their copy for the capture pass, one block of f32 weights
//! (≈ 0.8 GB), the forward pass's scratch, and the f64 `K×K` matrices of one input site at a time
//! (≈ 1 GB each for `down_proj`'s 11008 inputs).
//!
//! AWQ ([`GpuPipeline::run_block`] with `--method awq`): the capture pass also sums `|x|` per
//! channel (calibration windows only; only these `K` sums come down, for `mean|x|`). The
//! calibration grams stay on the device for the scale and clip searches ([`awq`], bit-equal to
//! the host code, which takes over for inputs it would reject and for groups wider than the
//! clip kernel's; only then does a gram come down), and the held-out Hessians stay there for
//! the error log ([`output_errors`]). The host folds the scales into the norms and producer
//! rows and rounds the final weights ([`super::awq_block`]); the block is then uploaded again,
//! since AWQ changes more than the quantized linears, for the quantized pass. Device memory
//! adds the calibration grams of all four sites (≈ 1.4 GB for a 7B shape).

use std::cell::RefCell;

use qtool_kernels::awq;
use qtool_kernels::gptq::{
    all_finite, gptq_quantize, output_errors, quad_form, GptqGpu, GpuAbsSum, GpuFactor, GpuHessian,
};
use qtool_kernels::llama::{CudaSlice, LlamaGpu};
use qtool_kernels::{Gpu, KernelError};
use qtool_quantizers::export::{IntSettings, QuantizePlan};
use qtool_quantizers::int::{dequantize, quantize_for_storage};
use qtool_quantizers::ptq::{
    abs_mean_of, search_scales_with, AwqConfig, Hessian, PtqError, PtqResult, QuadForm, ScaleSearch,
};

use super::awq_block::{self, layer_err, AwqStats, ClipJob};
use super::{site_index, Device, LayerLog, Method, Options, PipelineError, Store, Target};
use crate::engine::{Block, EngineError, GpuBlock, Matrix, Site};

/// The GPU for `device` and `method`: `Cuda` without a usable one is an error naming the reason;
/// `Auto` falls back to the CPU with one line on stderr.
pub(super) fn open(device: Device, method: Method) -> Result<Option<Gpu>, PipelineError> {
    let tried = match device {
        Device::Cpu => return Ok(None),
        Device::Auto | Device::Cuda => Gpu::open(0).and_then(|g| {
            GptqGpu::new(&g)?;
            Ok(g)
        }),
    };
    match (tried, device) {
        (Ok(g), _) => Ok(Some(g)),
        (Err(e), Device::Cuda) => Err(PipelineError::Gpu {
            layer: String::new(),
            source: KernelError::NoGpu(format!("--device cuda: {e}")),
        }),
        (Err(e), _) => {
            eprintln!("qtool: {} runs on the CPU ({e})", method.name().to_uppercase());
            Ok(None)
        }
    }
}

fn gpu_err(layer: &str) -> impl FnOnce(KernelError) -> PipelineError + '_ {
    move |source| PipelineError::Gpu { layer: layer.to_owned(), source }
}

/// The device state of one run: handles and the residual streams of the calibration and
/// held-out windows (`[windows·seqlen, hidden]` each, window order as on the host).
pub(super) struct GpuPipeline<'g> {
    ops: LlamaGpu<'g>,
    gg: GptqGpu<'g>,
    calib: CudaSlice<f32>,
    held: CudaSlice<f32>,
    n_calib: usize,
    n_held: usize,
    seqlen: usize,
}

/// `Σ xxᵀ` (and, for AWQ, `Σ |x|`) of the four input sites of one block, on the device.
#[derive(Default)]
struct DeviceStats {
    sites: [Option<GpuHessian>; 4],
    abs: [Option<GpuAbsSum>; 4],
    with_abs: bool,
}

impl DeviceStats {
    fn add(
        &mut self,
        gg: &GptqGpu<'_>,
        site: Site,
        x: &CudaSlice<f32>,
        rows: usize,
        k: usize,
    ) -> Result<(), KernelError> {
        if self.with_abs {
            let a = &mut self.abs[site_index(site)];
            if a.is_none() {
                *a = Some(GpuAbsSum::new(gg, k)?);
            }
            a.as_mut().expect("just set").add_device(gg, x, rows)?;
        }
        let slot = &mut self.sites[site_index(site)];
        if slot.is_none() {
            *slot = Some(GpuHessian::new(gg, k)?);
        }
        slot.as_mut().expect("just set").add_device(gg, x, rows)
    }

    fn get(&self, site: Site, block: usize) -> Result<&GpuHessian, PipelineError> {
        self.sites[site_index(site)].as_ref().ok_or_else(|| {
            PipelineError::Usage(format!("block {block}: no activations were captured at {site:?}"))
        })
    }
}

impl<'g> GpuPipeline<'g> {
    /// Uploads the residual streams (`hidden`: calibration windows first, then held-out ones).
    pub fn new(
        gpu: &'g Gpu,
        hidden: &[Matrix],
        n_calib: usize,
        seqlen: usize,
    ) -> Result<Self, PipelineError> {
        let ops = LlamaGpu::new(gpu).map_err(gpu_err(""))?;
        let gg = GptqGpu::new(gpu).map_err(gpu_err(""))?;
        let upload = |ms: &[Matrix]| -> Result<CudaSlice<f32>, PipelineError> {
            let mut flat = Vec::with_capacity(ms.iter().map(|m| m.data.len()).sum());
            for m in ms {
                flat.extend_from_slice(&m.data);
            }
            gpu.upload(&flat).map_err(gpu_err(""))
        };
        let (c, h) = hidden.split_at(n_calib);
        Ok(GpuPipeline {
            calib: upload(c)?,
            held: upload(h)?,
            ops,
            gg,
            n_calib,
            n_held: h.len(),
            seqlen,
        })
    }

    /// The residual streams back on the host (calibration windows, then held-out), for the
    /// resume state.
    pub fn download(&self) -> Result<(Vec<f32>, Vec<f32>), PipelineError> {
        let gpu = self.gg.gpu();
        Ok((
            gpu.download(&self.calib).map_err(gpu_err(""))?,
            gpu.download(&self.held).map_err(gpu_err(""))?,
        ))
    }

    /// One block of the pipeline: capture pass over a copy of the streams, GPTQ (or AWQ, see
    /// [`Self::run_block_awq`]) of every target, then the quantized pass that moves the streams
    /// on. Targets' host weights are replaced by their quantized-dequantized values, like the
    /// CPU path.
    #[allow(clippy::too_many_arguments)]
    pub fn run_block(
        &mut self,
        block: &mut Block,
        targets: &[Target],
        plan: &QuantizePlan,
        settings: &IntSettings,
        opts: &Options,
        store: &Store,
    ) -> Result<Vec<LayerLog>, PipelineError> {
        if opts.method == Method::Awq {
            return self.run_block_awq(block, targets, plan, settings, store);
        }
        let bi = block.index;
        let mut dev = GpuBlock::upload(&self.ops, block)?;
        let mut logs = Vec::new();
        if !targets.is_empty() {
            let site_k = site_k(block);
            let stats = self.capture(&dev, &site_k, false, false)?;
            let held = self.capture(&dev, &site_k, true, false)?;
            for site in Site::ALL {
                let at: Vec<&Target> = targets.iter().filter(|t| t.site == site).collect();
                let Some(first) = at.first() else { continue };
                let cfg_of = |t: &Target| super::gptq_block::config(t, plan, settings, opts);
                let k = super::linear_mut(block, first.slot).weight.cols;
                let factor = {
                    let h = stats.get(site, bi)?.hessian(&self.gg).map_err(gpu_err(&first.name))?;
                    GpuFactor::new(&self.gg, &h, k, &cfg_of(first)).map_err(gpu_err(&first.name))?
                };
                let held_gram =
                    held.get(site, bi)?.hessian(&self.gg).map_err(gpu_err(&first.name))?;
                for t in at {
                    let cfg = cfg_of(t);
                    let lin = super::linear_mut(block, t.slot);
                    let (n, k) = (lin.weight.rows, lin.weight.cols);
                    let w = &lin.weight.data;
                    let out = gptq_quantize(&self.gg, w, n, k, &factor, &cfg)
                        .map_err(gpu_err(&t.name))?
                        .0;
                    let int_err = |source| PipelineError::Int { layer: t.name.clone(), source };
                    let deq = dequantize(&out.q).map_err(int_err)?;
                    let rtn = quantize_for_storage(w, n, k, &cfg.rtn, None, cfg.scale_dtype)
                        .map_err(int_err)?;
                    let rtn_deq = dequantize(&rtn).map_err(int_err)?;
                    let errs = output_errors(&self.gg, w, &[&rtn_deq, &deq], n, k, &held_gram)
                        .map_err(gpu_err(&t.name))?;
                    store.put_quantized(&t.name, &out.q)?;
                    dev.set_weight(&self.ops, t.slot, &deq)?;
                    lin.weight.data = deq;
                    logs.push(LayerLog {
                        name: t.name.clone(),
                        block: bi,
                        shape: [n, k],
                        rtn_error: errs[0],
                        error: errs[1],
                        damp: out.damp,
                        alpha: None,
                        fallback: out.fallback,
                    });
                }
            }
        }
        let seqlen = self.seqlen;
        dev.forward(&self.ops, &mut self.calib, self.n_calib, seqlen, None)?;
        if self.n_held > 0 {
            dev.forward(&self.ops, &mut self.held, self.n_held, seqlen, None)?;
        }
        Ok(logs)
    }

    /// AWQ of block `block`: capture on the device, search and fold on the host with the
    /// device's statistics and quadratic forms, then the quantized pass with the block uploaded
    /// again (norms and producer rows changed too).
    fn run_block_awq(
        &mut self,
        block: &mut Block,
        targets: &[Target],
        plan: &QuantizePlan,
        settings: &IntSettings,
        store: &Store,
    ) -> Result<Vec<LayerLog>, PipelineError> {
        let mut logs = Vec::new();
        if !targets.is_empty() {
            let stats = {
                let dev = GpuBlock::upload(&self.ops, block)?;
                let site_k = site_k(block);
                let calib = self.capture(&dev, &site_k, false, true)?;
                let held = self.capture(&dev, &site_k, true, false)?;
                drop(dev);
                AwqDeviceStats::new(&self.gg, block.index, calib, held)?
            };
            logs = awq_block::quantize(block, targets, &stats, plan, settings, store)?;
        }
        let dev = GpuBlock::upload(&self.ops, block)?;
        let seqlen = self.seqlen;
        dev.forward(&self.ops, &mut self.calib, self.n_calib, seqlen, None)?;
        if self.n_held > 0 {
            dev.forward(&self.ops, &mut self.held, self.n_held, seqlen, None)?;
        }
        Ok(logs)
    }

    /// Runs a copy of the calibration (or held-out) streams through the unquantized block and
    /// accumulates every site's `Σ xxᵀ` (and `Σ |x|` with `abs`).
    fn capture(
        &self,
        dev: &GpuBlock,
        site_k: &[usize; 4],
        held: bool,
        abs: bool,
    ) -> Result<DeviceStats, PipelineError> {
        let mut stats = DeviceStats { with_abs: abs, ..DeviceStats::default() };
        let windows = if held { self.n_held } else { self.n_calib };
        if windows == 0 {
            return Ok(stats);
        }
        let src = if held { &self.held } else { &self.calib };
        let stream = self.gg.gpu().stream();
        let mut x = stream.clone_dtod(src).map_err(|e| gpu_err("")(KernelError::from(e)))?;
        let gg = &self.gg;
        dev.forward(
            &self.ops,
            &mut x,
            windows,
            self.seqlen,
            Some(&mut |site: Site, m: &CudaSlice<f32>, rows: usize| -> Result<(), EngineError> {
                stats.add(gg, site, m, rows, site_k[site_index(site)]).map_err(EngineError::from)
            }),
        )?;
        Ok(stats)
    }
}

/// Input features of the four sites of `block`.
fn site_k(block: &Block) -> [usize; 4] {
    [block.q.weight.cols, block.o.weight.cols, block.gate.weight.cols, block.down.weight.cols]
}

/// One input site's AWQ calibration statistics: `Σ|x|` and the token count on the host (for
/// `mean|x|`), the gram `XᵀX/T` on the device (both searches; downloaded only when a search
/// falls back to the host).
struct SiteCalib {
    abs_sum: Vec<f64>,
    tokens: u64,
    gram: CudaSlice<f64>,
}

/// One block's AWQ statistics from the device: per site, the calibration statistics
/// ([`SiteCalib`]), and the held-out `2·XᵀX/T` on the device (error log).
struct AwqDeviceStats<'a, 'g> {
    gg: &'a GptqGpu<'g>,
    block: usize,
    calib: [Option<SiteCalib>; 4],
    held: [Option<CudaSlice<f64>>; 4],
}

impl<'a, 'g> AwqDeviceStats<'a, 'g> {
    fn new(
        gg: &'a GptqGpu<'g>,
        block: usize,
        calib: DeviceStats,
        held: DeviceStats,
    ) -> Result<Self, PipelineError> {
        let name = format!("block {block}");
        let mut out =
            AwqDeviceStats { gg, block, calib: Default::default(), held: Default::default() };
        for (i, (h, a)) in calib.sites.into_iter().zip(calib.abs).enumerate() {
            let (Some(h), Some(a)) = (h, a) else { continue };
            let gram = h.gram(gg).map_err(gpu_err(&name))?;
            let abs_sum = a.download(gg).map_err(gpu_err(&name))?;
            let finite = all_finite(gg, &gram).map_err(gpu_err(&name))?;
            if !finite || abs_sum.iter().any(|v| !v.is_finite()) {
                // The host's statistics name the first sum that is not finite.
                let upper = h.download_upper(gg).map_err(gpu_err(&name))?;
                Hessian::from_parts(h.k(), upper, abs_sum.clone(), h.tokens())
                    .map_err(layer_err(&name))?;
            }
            out.calib[i] = Some(SiteCalib { abs_sum, tokens: h.tokens(), gram });
        }
        for (i, h) in held.sites.into_iter().enumerate() {
            if let Some(h) = h {
                out.held[i] = Some(h.hessian(gg).map_err(gpu_err(&name))?);
            }
        }
        Ok(out)
    }

    fn calib(&self, site: Site) -> Result<&SiteCalib, PipelineError> {
        self.calib[site_index(site)].as_ref().ok_or_else(|| {
            PipelineError::Usage(format!(
                "block {}: no activations were captured at {site:?}",
                self.block
            ))
        })
    }
}

/// [`QuadForm`] over a device gram; a device failure is kept aside so the pipeline reports the
/// [`KernelError`] itself rather than the search's generic error.
struct DeviceQuadForm<'a, 'g> {
    gg: &'a GptqGpu<'g>,
    gram: &'a CudaSlice<f64>,
    k: usize,
    failed: RefCell<Option<KernelError>>,
}

impl QuadForm for DeviceQuadForm<'_, '_> {
    fn k(&self) -> usize {
        self.k
    }

    fn sum(&self, d: &[f32], rows: usize) -> PtqResult<f64> {
        quad_form(self.gg, self.gram, self.k, d, rows).map_err(|e| {
            let msg = format!("GPU quadratic form: {e}");
            *self.failed.borrow_mut() = Some(e);
            PtqError::Config(msg)
        })
    }
}

impl AwqStats for AwqDeviceStats<'_, '_> {
    fn gram(&self, site: Site, layer: &str) -> Result<Vec<f64>, PipelineError> {
        // The device gram is the host `Hessian::gram` of the same sums, bit for bit.
        self.gg.gpu().download(&self.calib(site)?.gram).map_err(gpu_err(layer))
    }

    fn abs_mean(&self, site: Site, layer: &str) -> Result<Vec<f32>, PipelineError> {
        let c = self.calib(site)?;
        abs_mean_of(&c.abs_sum, c.tokens).map_err(layer_err(layer))
    }

    fn search(
        &self,
        site: Site,
        linears: &[(&[f32], usize)],
        k: usize,
        am: &[f32],
        cfg: &AwqConfig,
        layer: &str,
    ) -> Result<ScaleSearch, PipelineError> {
        let gram = &self.calib(site)?.gram;
        if let Some(found) =
            awq::search_scales(self.gg, gram, k, linears, am, cfg).map_err(gpu_err(layer))?
        {
            return Ok(found);
        }
        // Values the device search leaves to the host (it names the bad one): the host rounding
        // with the quadratic forms still on the device.
        let qf = DeviceQuadForm { gg: self.gg, gram, k, failed: None.into() };
        search_scales_with(linears, &qf, am, cfg).map_err(|e| match qf.failed.take() {
            Some(source) => PipelineError::Gpu { layer: layer.to_owned(), source },
            None => PipelineError::Layer { layer: layer.to_owned(), source: e },
        })
    }

    fn clip(&self, job: &ClipJob<'_>, cfg: &AwqConfig) -> Result<Vec<f32>, PipelineError> {
        let gram = &self.calib(job.site)?.gram;
        let ClipJob { w, n, k, col_scale, layer, .. } = *job;
        match awq::clip_search(self.gg, gram, w, n, k, col_scale, cfg).map_err(gpu_err(layer))? {
            Some(r) => Ok(r.w),
            None => awq_block::host_clip(self, job, cfg),
        }
    }

    fn errors(
        &self,
        site: Site,
        w: &[f32],
        hats: [&[f32]; 2],
        n: usize,
        k: usize,
        layer: &str,
    ) -> Result<[f64; 2], PipelineError> {
        let held = self.held[site_index(site)].as_ref().ok_or_else(|| {
            PipelineError::Usage(format!(
                "block {}: no held-out activations were captured at {site:?}",
                self.block
            ))
        })?;
        let e = output_errors(self.gg, w, &hats, n, k, held).map_err(gpu_err(layer))?;
        Ok([e[0], e[1]])
    }
}
