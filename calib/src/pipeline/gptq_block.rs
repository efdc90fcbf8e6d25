//! GPTQ of one block on the CPU: one factorized Hessian per input site, shared by the linears
//! reading it. With a GPU the whole block runs there instead ([`super::gpu`]; its GPTQ equals
//! this code up to rounding ties).

use qtool_quantizers::export::{int_layer, IntSettings, QuantizePlan};
use qtool_quantizers::int::{dequantize, quantize_for_storage};
use qtool_quantizers::ptq::gptq::{quantize_prepared, Prepared};
use qtool_quantizers::ptq::{output_error, GptqConfig};

use super::{LayerLog, Options, PipelineError, SiteStats, Store, Target};
use crate::engine::{Block, Site};

/// GPTQ's settings for target `t` (the CPU and GPU paths share them): the layout's RTN
/// convention and scale dtype, `--damp`, `--act-order`, and static groups (so every layout and
/// kernel can run the result with the plain `g_idx = k / G`).
pub(super) fn config(
    t: &Target,
    plan: &QuantizePlan,
    settings: &IntSettings,
    opts: &Options,
) -> GptqConfig {
    let (rtn, sd) = int_layer::rtn_config(plan.layout, settings, t.layer.dtype);
    let mut c = GptqConfig::new(rtn, sd);
    c.damp = opts.damp;
    c.act_order = opts.act_order;
    c.static_groups = true;
    c
}

#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(
    block: &mut Block,
    targets: &[Target],
    stats: &SiteStats,
    held: &SiteStats,
    plan: &QuantizePlan,
    settings: &IntSettings,
    opts: &Options,
    store: &Store,
) -> Result<Vec<LayerLog>, PipelineError> {
    let mut logs = Vec::new();
    let bi = block.index;
    for site in Site::ALL {
        let at: Vec<&Target> = targets.iter().filter(|t| t.site == site).collect();
        let Some(first) = at.first() else { continue };
        let layer_err = |layer: &str| {
            let layer = layer.to_owned();
            move |source| PipelineError::Layer { layer, source }
        };
        let st = stats.get(site, bi)?;
        let h = st.hessian().map_err(layer_err(&first.name))?;
        let held_gram = held.get(site, bi)?.gram().map_err(layer_err(&first.name))?;
        let cfg_of = |t: &Target| config(t, plan, settings, opts);
        let prep = Prepared::new(&h, st.k(), &cfg_of(first)).map_err(layer_err(&first.name))?;
        drop(h);
        for t in at {
            let cfg = cfg_of(t);
            let lin = super::linear_mut(block, t.slot);
            let (n, k) = (lin.weight.rows, lin.weight.cols);
            let w = &lin.weight.data;
            let out = quantize_prepared(w, n, k, &prep, &cfg).map_err(layer_err(&t.name))?;
            let int_err = |source| PipelineError::Int { layer: t.name.clone(), source };
            let deq = dequantize(&out.q).map_err(int_err)?;
            let rtn =
                quantize_for_storage(w, n, k, &cfg.rtn, None, cfg.scale_dtype).map_err(int_err)?;
            let rtn_deq = dequantize(&rtn).map_err(int_err)?;
            let rtn_error =
                output_error(w, &rtn_deq, n, k, &held_gram).map_err(layer_err(&t.name))?;
            let error = output_error(w, &deq, n, k, &held_gram).map_err(layer_err(&t.name))?;
            store.put_quantized(&t.name, &out.q)?;
            lin.weight.data = deq;
            logs.push(LayerLog {
                name: t.name.clone(),
                block: bi,
                shape: [n, k],
                rtn_error,
                error,
                damp: out.damp,
                alpha: None,
                fallback: out.fallback,
            });
        }
    }
    Ok(logs)
}
