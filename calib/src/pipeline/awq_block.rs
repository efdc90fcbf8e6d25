//! AWQ of one block: the scale search per group of linears sharing an input, the folding of
//! the scales into the producer of that input, the clip search, then round-to-nearest.
//!
//! | group | input site | scales folded into |
//! |---|---|---|
//! | q, k, v | after the input RMSNorm | `input_layernorm.weight` |
//! | o | attention output | `v_proj` rows (only when v and o have matching shapes, i.e. no GQA, as AutoAWQ) |
//! | gate, up | after the post-attention RMSNorm | `post_attention_layernorm.weight` |
//! | down | `silu(gate)·up` | `up_proj` rows |
//!
//! All searches see the original weights and inputs; the scales are then applied together and
//! the clip search runs on the scaled weights with the statistics of the scaled inputs (as
//! AutoAWQ: `apply_scale` before `auto_clip`, no clipping for q/k). A group with a linear left
//! unquantized (`--ignore`) is not scaled.
//!
//! The statistics come through [`AwqStats`]: the CPU capture's host Hessians ([`CpuStats`]),
//! or the GPU pipeline's device sums ([`super::gpu`]), which also runs the scale and clip
//! searches (`qtool_kernels::awq`, bit-equal to the host code) and the held-out errors on the
//! device. The folding and the final rounding run here on the host either way.

use rayon::prelude::*;

use qtool_quantizers::export::{int_layer, IntSettings, QuantizePlan};
use qtool_quantizers::int::{dequantize, quantize_for_storage};
use qtool_quantizers::ptq::awq::scale_gram;
use qtool_quantizers::ptq::{
    clip_search, output_error, search_scales, AwqConfig, PtqError, ScaleSearch,
};

use super::{linear_mut, LayerLog, PipelineError, SiteStats, Store, Target};
use crate::engine::{Block, Site};

pub(super) fn layer_err(layer: &str) -> impl FnOnce(PtqError) -> PipelineError + '_ {
    move |source| PipelineError::Layer { layer: layer.to_owned(), source }
}

/// The statistics of one block's input sites and the products AWQ takes of them; `layer` names
/// the linear an error is reported for.
pub(super) trait AwqStats {
    /// `XᵀX/T` of the calibration inputs at `site`, `K×K` on the host (the clip search's).
    fn gram(&self, site: Site, layer: &str) -> Result<Vec<f64>, PipelineError>;
    /// `mean |x|` of the calibration inputs at `site`.
    fn abs_mean(&self, site: Site, layer: &str) -> Result<Vec<f32>, PipelineError>;
    /// The scale search of the group `linears` reading `site`.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        site: Site,
        linears: &[(&[f32], usize)],
        k: usize,
        am: &[f32],
        cfg: &AwqConfig,
        layer: &str,
    ) -> Result<ScaleSearch, PipelineError>;
    /// The clip search of one linear: its clamped weight.
    fn clip(&self, job: &ClipJob<'_>, cfg: &AwqConfig) -> Result<Vec<f32>, PipelineError> {
        host_clip(self, job, cfg)
    }
    /// `output_error(w, ŵ)` on the held-out inputs at `site` for each `ŵ` of `hats`.
    #[allow(clippy::too_many_arguments)]
    fn errors(
        &self,
        site: Site,
        w: &[f32],
        hats: [&[f32]; 2],
        n: usize,
        k: usize,
        layer: &str,
    ) -> Result<[f64; 2], PipelineError>;
}

/// One linear's clip search: `w` (`[n, k]`) already multiplied by the column scales
/// `col_scale`, its input read at `site`; `layer` names it in errors.
pub(super) struct ClipJob<'a> {
    pub site: Site,
    pub w: &'a [f32],
    pub n: usize,
    pub k: usize,
    pub col_scale: Option<&'a [f32]>,
    pub layer: &'a str,
}

/// The clip search on the host, against the statistics of the scaled input.
pub(super) fn host_clip<S: AwqStats + ?Sized>(
    stats: &S,
    job: &ClipJob<'_>,
    cfg: &AwqConfig,
) -> Result<Vec<f32>, PipelineError> {
    let gram = stats.gram(job.site, job.layer)?;
    let g = match job.col_scale {
        Some(s) => scale_gram(&gram, job.k, s),
        None => gram,
    };
    Ok(clip_search(job.w, job.n, job.k, &g, cfg).map_err(layer_err(job.layer))?.w)
}

/// The CPU capture's statistics: calibration and held-out host Hessians.
pub(super) struct CpuStats<'a> {
    pub stats: &'a SiteStats,
    pub held: &'a SiteStats,
    pub block: usize,
}

impl AwqStats for CpuStats<'_> {
    fn gram(&self, site: Site, layer: &str) -> Result<Vec<f64>, PipelineError> {
        self.stats.get(site, self.block)?.gram().map_err(layer_err(layer))
    }

    fn abs_mean(&self, site: Site, layer: &str) -> Result<Vec<f32>, PipelineError> {
        self.stats.get(site, self.block)?.abs_mean().map_err(layer_err(layer))
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
        let gram = self.gram(site, layer)?;
        search_scales(linears, k, &gram, am, cfg).map_err(layer_err(layer))
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
        let held_gram = self.held.get(site, self.block)?.gram().map_err(layer_err(layer))?;
        let a = output_error(w, hats[0], n, k, &held_gram).map_err(layer_err(layer))?;
        let b = output_error(w, hats[1], n, k, &held_gram).map_err(layer_err(layer))?;
        Ok([a, b])
    }
}

/// Where a group's scales are folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Producer {
    InputNorm,
    PostNorm,
    /// The rows of the linear at this slot.
    Linear(usize),
}

const GROUPS: [(Site, &[usize], Producer); 4] = [
    (Site::AttnIn, &[0, 1, 2], Producer::InputNorm),
    (Site::OIn, &[3], Producer::Linear(2)),
    (Site::MlpIn, &[4, 5], Producer::PostNorm),
    (Site::DownIn, &[6], Producer::Linear(5)),
];

const NAMES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

pub(super) fn quantize(
    block: &mut Block,
    targets: &[Target],
    stats: &dyn AwqStats,
    plan: &QuantizePlan,
    settings: &IntSettings,
    store: &Store,
) -> Result<Vec<LayerLog>, PipelineError> {
    let bi = block.index;
    let cfg_of = |t: &Target| {
        let (rtn, sd) = int_layer::rtn_config(plan.layout, settings, t.layer.dtype);
        AwqConfig::new(rtn, sd)
    };
    let target_at = |slot: usize| targets.iter().find(|t| t.slot == slot);
    let orig: Vec<Vec<f32>> =
        block.linears().iter().map(|(_, _, l)| l.weight.data.clone()).collect();
    let dims: Vec<(usize, usize)> =
        block.linears().iter().map(|(_, _, l)| (l.weight.rows, l.weight.cols)).collect();

    // Where the host time goes (`QTOOL_AWQ_TIMES=1`: one stderr line per block).
    let t_start = std::time::Instant::now();
    let (mut t_clip, mut t_round, mut t_store, mut t_log) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    // 1. Scale searches on the original weights.
    let mut col_scale: [Option<Vec<f32>>; 7] = Default::default();
    let mut row_scale: [Option<Vec<f32>>; 7] = Default::default();
    let mut alpha: [Option<f32>; 7] = [None; 7];
    let mut folds = Vec::new();
    for (site, slots, producer) in GROUPS {
        let Some(ts) = slots.iter().map(|&s| target_at(s)).collect::<Option<Vec<&Target>>>() else {
            continue;
        };
        let k = dims[slots[0]].1;
        if let Producer::Linear(p) = producer {
            // Folding into a producer's rows needs one producer row per input channel.
            if dims[p].0 != k {
                continue;
            }
        }
        let am = stats.abs_mean(site, &ts[0].name)?;
        let linears: Vec<(&[f32], usize)> =
            slots.iter().map(|&s| (orig[s].as_slice(), dims[s].0)).collect();
        let found = stats.search(site, &linears, k, &am, &cfg_of(ts[0]), &ts[0].name)?;
        for &s in slots {
            col_scale[s] = Some(found.scales.clone());
            alpha[s] = Some(found.alpha);
        }
        if let Producer::Linear(p) = producer {
            row_scale[p] = Some(found.scales.clone());
        }
        folds.push((producer, found.scales));
    }

    let t_search = t_start.elapsed().as_secs_f64();
    // 2. Fold: weights ×s by column, producers ÷s.
    for (slot, s) in col_scale.iter().enumerate() {
        if let Some(s) = s {
            let lin = linear_mut(block, slot);
            for row in lin.weight.data.chunks_exact_mut(s.len()) {
                for (w, &f) in row.iter_mut().zip(s) {
                    *w *= f;
                }
            }
        }
    }
    let mut changed_floats: Vec<(String, Vec<f32>)> = Vec::new();
    for (producer, s) in &folds {
        match *producer {
            Producer::InputNorm => {
                block.input_norm.iter_mut().zip(s).for_each(|(w, f)| *w /= f);
                changed_floats.push((
                    format!("model.layers.{bi}.input_layernorm.weight"),
                    block.input_norm.clone(),
                ));
            }
            Producer::PostNorm => {
                block.post_attn_norm.iter_mut().zip(s).for_each(|(w, f)| *w /= f);
                changed_floats.push((
                    format!("model.layers.{bi}.post_attention_layernorm.weight"),
                    block.post_attn_norm.clone(),
                ));
            }
            Producer::Linear(p) => {
                let lin = linear_mut(block, p);
                let k = lin.weight.cols;
                for (row, f) in lin.weight.data.chunks_exact_mut(k).zip(s) {
                    row.iter_mut().for_each(|w| *w /= f);
                }
                if let Some(b) = &mut lin.bias {
                    b.iter_mut().zip(s).for_each(|(w, f)| *w /= f);
                    changed_floats
                        .push((format!("model.layers.{bi}.{}.bias", NAMES[p]), b.clone()));
                }
                if target_at(p).is_none() {
                    // An unquantized producer is written as rescaled floats.
                    changed_floats.push((
                        format!("model.layers.{bi}.{}.weight", NAMES[p]),
                        lin.weight.data.clone(),
                    ));
                }
            }
        }
    }

    // 3. Clip (not q/k) and round to nearest, on the scaled weights.
    let mut logs = Vec::new();
    for t in targets {
        let (n, k) = dims[t.slot];
        let cfg = cfg_of(t);
        let lin = linear_mut(block, t.slot);
        let t_c = std::time::Instant::now();
        let w = if t.slot >= 2 {
            let job = ClipJob {
                site: t.site,
                w: &lin.weight.data,
                n,
                k,
                col_scale: col_scale[t.slot].as_deref(),
                layer: &t.name,
            };
            stats.clip(&job, &cfg)?
        } else {
            lin.weight.data.clone()
        };
        t_clip += t_c.elapsed().as_secs_f64();
        let t_r = std::time::Instant::now();
        let int_err = |source| PipelineError::Int { layer: t.name.clone(), source };
        let q = quantize_for_storage(&w, n, k, &cfg.rtn, None, cfg.scale_dtype).map_err(int_err)?;
        let deq = dequantize(&q).map_err(int_err)?;
        t_round += t_r.elapsed().as_secs_f64();
        let t_s = std::time::Instant::now();
        store.put_quantized(&t.name, &q)?;
        t_store += t_s.elapsed().as_secs_f64();
        let t_l = std::time::Instant::now();

        // The log compares in the original space: diag(row)·Ŵ·diag(1/col) against W.
        let mut eff = deq.clone();
        let (rs, cs) = (row_scale[t.slot].as_deref(), col_scale[t.slot].as_deref());
        eff.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
            let rf = rs.map_or(1.0, |s| s[r]);
            for (c, v) in row.iter_mut().enumerate() {
                let cf = cs.map_or(1.0, |s| s[c]);
                *v = *v * rf / cf;
            }
        });
        let w0 = &orig[t.slot];
        let rtn =
            quantize_for_storage(w0, n, k, &cfg.rtn, None, cfg.scale_dtype).map_err(int_err)?;
        let rtn_deq = dequantize(&rtn).map_err(int_err)?;
        let [rtn_error, error] = stats.errors(t.site, w0, [&rtn_deq, &eff], n, k, &t.name)?;
        t_log += t_l.elapsed().as_secs_f64();
        lin.weight.data = deq;
        logs.push(LayerLog {
            name: t.name.clone(),
            block: bi,
            shape: [n, k],
            rtn_error,
            error,
            damp: None,
            alpha: alpha[t.slot],
            fallback: None,
        });
    }
    if std::env::var_os("QTOOL_AWQ_TIMES").is_some() {
        let total = t_start.elapsed().as_secs_f64();
        eprintln!(
            "awq block {bi}: search {t_search:.2} s, clip {t_clip:.2} s, round {t_round:.2} s, \
             store {t_store:.2} s, log {t_log:.2} s, rest {:.2} s",
            total - t_search - t_clip - t_round - t_store - t_log
        );
    }
    for (name, v) in changed_floats {
        store.put_float(&name, &v)?;
    }
    Ok(logs)
}
