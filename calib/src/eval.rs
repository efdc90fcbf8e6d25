//! Perplexity with the forward engine.
//!
//! Protocol (the one `llama-perplexity` and most papers use, minus BOS): the text is tokenized
//! without special tokens, cut into `n = ⌊tokens / ctx⌋` non-overlapping windows of `ctx`
//! tokens (a trailing partial window is dropped), each window is run from position 0 with a
//! causal mask, and every token of a window except its first is scored:
//! `ppl = exp( Σ −log p(tᵢ | t₀..tᵢ₋₁) / (n · (ctx − 1)) )`, the natural log, summed in f64 in
//! window order (so the result does not depend on the thread count).
//!
//! The run is layer-major: windows are processed in groups whose residual streams fit a
//! budget ([`PplOptions::activation_budget`]), and each block is decoded once per group, so a
//! model is never resident as a whole and a quantized checkpoint is dequantized on the fly.
//!
//! [`perplexity_gpu`] runs the same protocol on a GPU (`engine::gpu`): each group's residual
//! streams live on the device, every block is decoded on the host once per group and uploaded,
//! and the head's logits never leave the device (only each row's NLL does). Its groups are
//! bounded by [`PplOptions::device_budget`]; the sums are taken in the same order as on the CPU.

use std::time::Instant;

use qtool_kernels::Gpu;

use crate::engine::gpu::{GpuBlock, GpuHead, LlamaGpu};
use crate::engine::{EngineError, Matrix, Model, Result};

/// How perplexity is computed.
#[derive(Clone, Debug)]
pub struct PplOptions {
    /// Tokens per window.
    pub ctx: usize,
    /// Score only the first windows (quick checks); `None` for all.
    pub max_windows: Option<usize>,
    /// Bytes of residual stream (`windows · ctx · hidden · 4`) per group of windows.
    pub activation_budget: usize,
    /// The same bound on the GPU ([`perplexity_gpu`]), where a larger group means fewer block
    /// decodes on the host; the block's scratch comes on top (`GpuBlock::set_scratch_budget`).
    pub device_budget: usize,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            ctx: 512,
            max_windows: None,
            activation_budget: 256 << 20,
            device_budget: 2 << 30,
        }
    }
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PplReport {
    pub ppl: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// Tokens scored: `windows · (ctx − 1)`.
    pub tokens: u64,
    pub windows: usize,
    pub ctx: usize,
    /// Tokens of the whole text.
    pub text_tokens: usize,
    /// Wall time of the forward passes.
    pub seconds: f64,
    /// Tokens run through the model per second (`windows · ctx / seconds`).
    pub tokens_per_second: f64,
}

/// Progress: `(steps done, total steps)`, one step per block per group of windows plus the head.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Perplexity of `tokens` under `model` by the protocol above.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: &PplOptions,
    progress: Progress<'_>,
) -> Result<PplReport> {
    let ctx = opts.ctx;
    let windows = window_count(tokens.len(), opts)?;
    let cfg = model.config();
    let per_window = ctx * cfg.hidden * 4;
    let group = (opts.activation_budget / per_window).clamp(1, windows);
    let n_groups = windows.div_ceil(group);
    let total_steps = n_groups * (cfg.n_layers + 1);
    let mut step = 0;
    progress(0, total_steps);

    let positions: Vec<usize> = (0..ctx).collect();
    let started = Instant::now();
    let mut nll_sum = 0f64;
    for g in 0..n_groups {
        let first = g * group;
        let last = (first + group).min(windows);
        let mut hidden: Vec<Matrix> = (first..last)
            .map(|w| model.embed(&tokens[w * ctx..(w + 1) * ctx]))
            .collect::<Result<_>>()?;
        for i in 0..cfg.n_layers {
            let block = model.load_block(i)?;
            for h in &mut hidden {
                block.forward(h, &positions, None)?;
            }
            step += 1;
            progress(step, total_steps);
        }
        let head = model.load_head()?;
        for (w, h) in (first..last).zip(&hidden) {
            nll_sum += window_nll(&head, h, &tokens[w * ctx..(w + 1) * ctx]);
        }
        drop(head);
        step += 1;
        progress(step, total_steps);
    }
    Ok(report(nll_sum, windows, ctx, tokens.len(), started))
}

/// Windows of `ctx` tokens scored from a text of `n_tokens` (see the module doc).
fn window_count(n_tokens: usize, opts: &PplOptions) -> Result<usize> {
    let ctx = opts.ctx;
    if ctx < 2 {
        return Err(EngineError::Usage(format!("--ctx {ctx}: a window needs at least 2 tokens")));
    }
    let mut windows = n_tokens / ctx;
    if windows == 0 {
        return Err(EngineError::Usage(format!(
            "the text has {n_tokens} tokens, fewer than one window of --ctx {ctx} tokens"
        )));
    }
    if let Some(m) = opts.max_windows {
        windows = windows.min(m.max(1));
    }
    Ok(windows)
}

fn report(
    nll_sum: f64,
    windows: usize,
    ctx: usize,
    text_tokens: usize,
    started: Instant,
) -> PplReport {
    let seconds = started.elapsed().as_secs_f64();
    let scored = (windows * (ctx - 1)) as u64;
    let nll = nll_sum / scored as f64;
    PplReport {
        ppl: nll.exp(),
        nll,
        tokens: scored,
        windows,
        ctx,
        text_tokens,
        seconds,
        tokens_per_second: (windows * ctx) as f64 / seconds.max(1e-9),
    }
}

/// [`perplexity`] on `gpu`: the same protocol, windows and summation order, with the blocks and
/// the head run by the GPU engine. Equal to the CPU result within f32 rounding.
pub fn perplexity_gpu(
    model: &Model,
    tokens: &[u32],
    opts: &PplOptions,
    gpu: &Gpu,
    progress: Progress<'_>,
) -> Result<PplReport> {
    let ctx = opts.ctx;
    let windows = window_count(tokens.len(), opts)?;
    let cfg = model.config();
    cfg.check_seq_len(ctx)?;
    let ops = LlamaGpu::new(gpu)?;
    let per_window = ctx * cfg.hidden * 4;
    let group = (opts.device_budget / per_window).clamp(1, windows);
    let n_groups = windows.div_ceil(group);
    let total_steps = n_groups * (cfg.n_layers + 1);
    let mut step = 0;
    progress(0, total_steps);

    let started = Instant::now();
    let mut nll_sum = 0f64;
    for g in 0..n_groups {
        let first = g * group;
        let last = (first + group).min(windows);
        let n = last - first;
        let window_tokens = &tokens[first * ctx..last * ctx];
        let mut hidden = gpu.upload(&model.embed(window_tokens)?.data)?;
        for i in 0..cfg.n_layers {
            let block = GpuBlock::upload(&ops, &model.load_block(i)?)?;
            block.forward(&ops, &mut hidden, n, ctx, None)?;
            step += 1;
            progress(step, total_steps);
        }
        let head = GpuHead::upload(&ops, &model.load_head()?)?;
        // Row r of a window predicts its token r + 1; the last row predicts nothing.
        let targets: Vec<i32> = (0..n * ctx)
            .map(|r| if r % ctx == ctx - 1 { -1 } else { window_tokens[r + 1] as i32 })
            .collect();
        let nll = head.nll(&ops, &hidden, &targets)?;
        for w in nll.chunks(ctx) {
            nll_sum += w[..ctx - 1].iter().sum::<f64>();
        }
        drop(head);
        step += 1;
        progress(step, total_steps);
    }
    Ok(report(nll_sum, windows, ctx, tokens.len(), started))
}

/// Rows of logits computed at once (bounds the `[rows, vocab]` buffer).
const LOGIT_ROWS: usize = 64;

/// Σ −log p(token[r+1] | ..r) over rows `0..ctx−1` of one window.
fn window_nll(head: &crate::engine::Head, hidden: &Matrix, tokens: &[u32]) -> f64 {
    let mut sum = 0f64;
    let scored = hidden.rows - 1;
    let mut r0 = 0;
    while r0 < scored {
        let r1 = (r0 + LOGIT_ROWS).min(scored);
        let logits = head.logits(&hidden.slice_rows(r0, r1));
        for r in r0..r1 {
            sum += nll_of(logits.row(r - r0), tokens[r + 1] as usize);
        }
        r0 = r1;
    }
    sum
}

/// `logsumexp(logits) − logits[target]`, in f64.
pub fn nll_of(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + z.ln() - logits[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        assert!((nll_of(&[0.0; 8], 3) - 8f64.ln()).abs() < 1e-12);
        // logits (ln 1, ln 3): p(1) = 3/4.
        assert!((nll_of(&[0.0, 3f32.ln()], 1) - (4.0f64 / 3.0).ln()).abs() < 1e-7);
    }
}
