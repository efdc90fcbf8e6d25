//! The layer-wise calibrated quantization pipeline (GPTQ, AWQ) for llama-family decoders.
//!
//! ```text
//!  calibration windows ──embed──► hidden[w]  (every window's residual stream, f32)
//!  for block i:
//!     load block i (the only weights in memory)
//!     capture pass: hidden[w] through block i, statistics of each linear input (Σxxᵀ, Σ|x|),
//!                   once per input site — q/k/v share one, gate/up share one
//!     quantize the block's linears (GPTQ: Hessian per site; AWQ: scales per group + clip)
//!     quantized pass: hidden[w] ← block i with the quantized (dequantized) weights
//!     save the quantized layers + hidden + log (state beside the output; --resume)
//! ```
//!
//! Each block's inputs therefore come from the already quantized blocks before it, as in
//! GPTQ's sequential protocol. Peak memory: one block of f32 weights, the hidden states of all
//! windows, and the `K×K` statistics of one block. The held-out windows travel with the
//! calibration windows but only feed the per-layer log.

mod awq_block;
mod gptq_block;
mod gpu;
pub mod log;
pub mod store;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use qtool_quantizers::export::plan::LayerPlan;
use qtool_quantizers::export::{Action, ExportError, QuantizePlan};
use qtool_quantizers::int::IntError;
use qtool_quantizers::ptq::{Hessian, PtqError};
use serde::{Deserialize, Serialize};

use crate::calibration::{self, CalibSet, CalibSpec, CalibrationError};
use crate::engine::{Block, EngineError, Matrix, Model, Site};
use crate::tokenizer::Tokenizer;

pub use log::{CalibInfo, CalibLog, LayerLog, Summary};
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    #[error("{layer}: {source}")]
    Layer { layer: String, source: PtqError },
    #[error("{layer}: {source}")]
    Int { layer: String, source: IntError },
    /// The GPU GPTQ path failed (or `--device cuda` found no usable GPU: `layer` is empty).
    #[error("{}{source}", if layer.is_empty() { String::new() } else { format!("{layer}: ") })]
    Gpu { layer: String, source: qtool_kernels::KernelError },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("calibration state {}: {msg}", path.display())]
    State { path: PathBuf, msg: String },
    #[error("{0}")]
    Usage(String),
    /// The progress callback asked to stop; the state beside the output holds every finished
    /// block, and `--resume` continues from there.
    #[error("interrupted after block {block}; run again with --resume to continue")]
    Interrupted { block: usize },
}

/// The calibrated methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Gptq,
    Awq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Gptq => "gptq",
            Method::Awq => "awq",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub method: Method,
    /// GPTQ dampening fraction.
    pub damp: f64,
    /// GPTQ act-order (with static groups).
    pub act_order: bool,
    pub calib: CalibSpec,
    /// The final output path; the state directory and the log live beside it.
    pub output: PathBuf,
    /// Continue from the state of an interrupted run with the same settings.
    pub resume: bool,
}

/// Where the pipeline runs (`--device`). GPTQ on the GPU runs everything there (forward passes,
/// statistics, factorization, solve, error log); AWQ on the GPU runs the forward passes, the
/// statistics, the scale and clip searches and the error log there, and the folding and the
/// final rounding on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The GPU when one is usable, else the CPU (with one line on stderr).
    Auto,
    Cpu,
    /// The GPU; no usable GPU is an error.
    Cuda,
}

/// What a finished run leaves for the writer.
#[derive(Debug)]
pub struct Outcome {
    /// The quantized layers (the writer's [`Precomputed`](qtool_quantizers::export::pipeline::Precomputed)).
    pub store: Store,
    pub log: CalibLog,
    /// The first block this invocation computed (0 unless resumed).
    pub started_at: usize,
}

/// Progress after each block; the callback may stop the run ([`PipelineError::Interrupted`]).
#[derive(Debug)]
pub struct BlockDone<'a> {
    pub block: usize,
    pub blocks: usize,
    pub seconds: f64,
    pub layers: &'a [LayerLog],
}

/// `<OUT>.calib.json`.
pub fn log_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "out".into());
    name.push(".calib.json");
    output.with_file_name(name)
}

/// One linear to quantize.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Position in [`Block::linears`].
    pub slot: usize,
    pub name: String,
    pub site: Site,
    pub layer: LayerPlan,
}

/// The linear at `slot` of [`Block::linears_mut`].
pub(crate) fn linear_mut(block: &mut Block, slot: usize) -> &mut crate::engine::Linear {
    block.linears_mut().into_iter().nth(slot).expect("a block has seven linears").2
}

pub(crate) fn site_index(s: Site) -> usize {
    match s {
        Site::AttnIn => 0,
        Site::OIn => 1,
        Site::MlpIn => 2,
        Site::DownIn => 3,
    }
}

/// Statistics of the four input sites of one block.
#[derive(Debug, Default)]
pub(crate) struct SiteStats {
    pub sites: [Option<Hessian>; 4],
}

impl SiteStats {
    pub fn get(&self, s: Site, block: usize) -> Result<&Hessian, PipelineError> {
        self.sites[site_index(s)].as_ref().ok_or_else(|| {
            PipelineError::Usage(format!("block {block}: no activations were captured at {s:?}"))
        })
    }
}

/// The settings a resumed run must share with the run that wrote the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    input: String,
    fmt: String,
    layout: String,
    method: Method,
    bits: u32,
    group_size: i64,
    symmetric: bool,
    damp: f64,
    act_order: bool,
    samples: usize,
    seqlen: usize,
    calib_tokens: String,
    quantized_layers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    fingerprint: Fingerprint,
    next_block: usize,
    seconds: f64,
    #[serde(default)]
    block_seconds: Vec<f64>,
    layers: Vec<LayerLog>,
}

/// Runs the calibrated quantization of every block; the caller writes the checkpoint from the
/// returned [`Store`] and the log.
pub fn run(
    model: &Model,
    plan: &QuantizePlan,
    opts: &Options,
    progress: &mut dyn FnMut(&BlockDone<'_>) -> ControlFlow<()>,
) -> Result<Outcome, PipelineError> {
    run_on(model, plan, opts, Device::Auto, progress)
}

/// [`run`] with the GPTQ solve placed on `device`.
pub fn run_on(
    model: &Model,
    plan: &QuantizePlan,
    opts: &Options,
    device: Device,
    progress: &mut dyn FnMut(&BlockDone<'_>) -> ControlFlow<()>,
) -> Result<Outcome, PipelineError> {
    let settings = plan.int.ok_or_else(|| {
        PipelineError::Usage(format!(
            "--method {} applies to the integer weight-only formats (w4a16, w8a16), not {}",
            opts.method.name(),
            plan.fmt.name
        ))
    })?;
    if !(opts.damp > 0.0 && opts.damp < 1.0) {
        return Err(PipelineError::Usage(format!("--damp {} must be in (0, 1)", opts.damp)));
    }
    let gpu = gpu::open(device, opts.method)?;
    let cfg = model.config().clone();
    let tok = Tokenizer::for_model(model)?;
    let calib = calibration::build(&tok, &opts.calib)?;
    let targets_of = |i: usize| -> Vec<Target> {
        let block_linears = [
            ("self_attn.q_proj", Site::AttnIn),
            ("self_attn.k_proj", Site::AttnIn),
            ("self_attn.v_proj", Site::AttnIn),
            ("self_attn.o_proj", Site::OIn),
            ("mlp.gate_proj", Site::MlpIn),
            ("mlp.up_proj", Site::MlpIn),
            ("mlp.down_proj", Site::DownIn),
        ];
        block_linears
            .iter()
            .enumerate()
            .filter_map(|(slot, (rel, site))| {
                let name = format!("model.layers.{i}.{rel}.weight");
                plan.entries.iter().find(|e| e.name == name).and_then(|e| match &e.action {
                    Action::Quantize(l) => {
                        Some(Target { slot, name: name.clone(), site: *site, layer: l.clone() })
                    }
                    _ => None,
                })
            })
            .collect()
    };
    let quantized_layers = (0..cfg.n_layers).map(|i| targets_of(i).len()).sum();
    let fingerprint = Fingerprint {
        input: model.path().display().to_string(),
        fmt: plan.fmt.name.to_string(),
        layout: plan.layout.name().to_string(),
        method: opts.method,
        bits: settings.bits.get(),
        group_size: settings.group_size.to_i64(),
        symmetric: settings.symmetric,
        damp: opts.damp,
        act_order: opts.act_order,
        samples: opts.calib.samples,
        seqlen: opts.calib.seqlen,
        calib_tokens: format!("{:016x}", calib.fingerprint()),
        quantized_layers,
    };

    let dir = Store::dir_for(&opts.output);
    if !opts.resume {
        Store::remove(&dir)?;
    }
    let store = Store::open(dir, plan.layout, settings)?;
    let windows = calib.samples.len() + calib.held_out.len();
    let (mut state, mut hidden) =
        match load_state(&store, &fingerprint, windows, opts.calib.seqlen, cfg.hidden)? {
            Some(s) => s,
            None => {
                let mut hidden = Vec::with_capacity(windows);
                for w in calib.samples.iter().chain(&calib.held_out) {
                    hidden.push(model.embed(w)?);
                }
                let state = State {
                    fingerprint: fingerprint.clone(),
                    next_block: 0,
                    seconds: 0.0,
                    block_seconds: Vec::new(),
                    layers: Vec::new(),
                };
                (state, hidden)
            }
        };
    let started_at = state.next_block;
    let positions: Vec<usize> = (0..opts.calib.seqlen).collect();
    let n_calib = calib.samples.len();
    let mut on_gpu = match &gpu {
        Some(g) => {
            let p = gpu::GpuPipeline::new(g, &hidden, n_calib, opts.calib.seqlen)?;
            hidden = Vec::new(); // the device holds the streams now
            Some(p)
        }
        None => None,
    };
    for i in state.next_block..cfg.n_layers {
        let t0 = Instant::now();
        let mut block = model.load_block(i)?;
        let targets = targets_of(i);
        let mut logs = Vec::new();
        if let Some(p) = on_gpu.as_mut() {
            logs = p.run_block(&mut block, &targets, plan, &settings, opts, &store)?;
            drop(block);
            let (c, h) = p.download()?;
            save_hidden(&store, &[&c, &h])?;
        } else {
            if !targets.is_empty() {
                let (stats, held) = capture(&block, &hidden, n_calib, &positions)?;
                logs = match opts.method {
                    Method::Gptq => gptq_block::quantize(
                        &mut block, &targets, &stats, &held, plan, &settings, opts, &store,
                    )?,
                    Method::Awq => awq_block::quantize(
                        &mut block,
                        &targets,
                        &awq_block::CpuStats { stats: &stats, held: &held, block: i },
                        plan,
                        &settings,
                        &store,
                    )?,
                };
            }
            for h in hidden.iter_mut() {
                block.forward(h, &positions, None)?;
            }
            drop(block);
            save_hidden(&store, &hidden.iter().map(|h| h.data.as_slice()).collect::<Vec<_>>())?;
        }
        state.next_block = i + 1;
        state.seconds += t0.elapsed().as_secs_f64();
        state.block_seconds.push(t0.elapsed().as_secs_f64());
        state.layers.extend(logs.iter().cloned());
        save_state(&store, &state)?;
        let done = BlockDone {
            block: i,
            blocks: cfg.n_layers,
            seconds: t0.elapsed().as_secs_f64(),
            layers: &logs,
        };
        if progress(&done).is_break() && i + 1 < cfg.n_layers {
            return Err(PipelineError::Interrupted { block: i });
        }
    }
    let log = CalibLog {
        schema_version: 1,
        method: opts.method.name().into(),
        layout: plan.layout.name().into(),
        bits: settings.bits.get(),
        group_size: settings.group_size.to_i64(),
        symmetric: settings.symmetric,
        damp: (opts.method == Method::Gptq).then_some(opts.damp),
        act_order: opts.act_order && opts.method == Method::Gptq,
        calibration: calib_info(&calib, &opts.calib),
        seconds: state.seconds,
        device: if gpu.is_some() { "cuda" } else { "cpu" }.into(),
        block_seconds: state.block_seconds,
        summary: Summary::of(&state.layers),
        layers: state.layers,
    };
    Ok(Outcome { store, log, started_at })
}

fn calib_info(c: &CalibSet, spec: &CalibSpec) -> CalibInfo {
    CalibInfo {
        source: c.source.clone(),
        samples: c.samples.len(),
        seqlen: spec.seqlen,
        held_out_windows: c.held_out.len(),
        text_tokens: c.text_tokens,
    }
}

/// Runs every window through the (unquantized) block and accumulates the statistics of each
/// linear input: calibration windows into the first set, held-out windows into the second.
fn capture(
    block: &Block,
    hidden: &[Matrix],
    n_calib: usize,
    positions: &[usize],
) -> Result<(SiteStats, SiteStats), PipelineError> {
    let mut stats = SiteStats::default();
    let mut held = SiteStats::default();
    for (w, h) in hidden.iter().enumerate() {
        let target = if w < n_calib { &mut stats } else { &mut held };
        let mut failed: Option<PtqError> = None;
        let mut x = h.clone();
        block.forward(
            &mut x,
            positions,
            Some(&mut |site: Site, m: &Matrix| {
                if failed.is_some() {
                    return;
                }
                let slot = &mut target.sites[site_index(site)];
                let acc = slot.get_or_insert_with(|| Hessian::new(m.cols));
                if let Err(e) = acc.add(&m.data) {
                    failed = Some(e);
                }
            }),
        )?;
        if let Some(source) = failed {
            return Err(PipelineError::Layer {
                layer: format!("block {} calibration window {w}", block.index),
                source,
            });
        }
    }
    Ok((stats, held))
}

/// The residual streams, window after window, as little-endian f32 (streamed: a 7B model's
/// streams are a gigabyte).
fn save_hidden(store: &Store, parts: &[&[f32]]) -> Result<(), PipelineError> {
    store::write_atomic_with(&store.hidden_path(), |w| {
        let mut buf = Vec::with_capacity(1 << 20);
        for part in parts {
            for chunk in part.chunks(1 << 18) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

fn save_state(store: &Store, state: &State) -> Result<(), PipelineError> {
    let text = serde_json::to_vec_pretty(state)
        .map_err(|e| PipelineError::State { path: store.state_json(), msg: e.to_string() })?;
    store::write_atomic(&store.state_json(), &text)
}

/// The state of an interrupted run, when there is one; a state written with other settings
/// is an error (resuming it would mix two quantizations).
fn load_state(
    store: &Store,
    fp: &Fingerprint,
    windows: usize,
    seqlen: usize,
    hidden_size: usize,
) -> Result<Option<(State, Vec<Matrix>)>, PipelineError> {
    let path = store.state_json();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PipelineError::State { path, msg: e.to_string() }),
    };
    let bad = |msg: String| PipelineError::State { path: path.clone(), msg };
    let state: State =
        serde_json::from_slice(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
    if &state.fingerprint != fp {
        return Err(bad(format!(
            "it was written by a run with other settings or inputs ({:?}); remove it or run without --resume",
            state.fingerprint
        )));
    }
    let hp = store.hidden_path();
    let bytes = std::fs::read(&hp)
        .map_err(|e| PipelineError::State { path: hp.clone(), msg: e.to_string() })?;
    let per = seqlen * hidden_size;
    if bytes.len() != windows * per * 4 {
        return Err(PipelineError::State {
            path: hp,
            msg: format!(
                "{} bytes, expected {} windows × {seqlen} × {hidden_size} f32",
                bytes.len(),
                windows
            ),
        });
    }
    let hidden = bytes
        .chunks_exact(per * 4)
        .map(|c| {
            Matrix::from_vec(
                seqlen,
                hidden_size,
                c.chunks_exact(4).map(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]])).collect(),
            )
        })
        .collect();
    Ok(Some((state, hidden)))
}
