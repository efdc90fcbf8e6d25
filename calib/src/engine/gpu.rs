//! The forward engine's GPU twin: one decoder block (and the head) with its weights on the
//! device, run over many windows at once with cuBLAS FP32 SGEMMs and the kernels of
//! `qtool_kernels::llama`. It computes what [`Block::forward`] computes, step for step (same
//! norms, rope tables, mask, f64 reductions), so results agree with the CPU within f32 rounding
//! of the GEMM summation order; the tests in this module state and check the tolerance.
//!
//! Windows are stacked: `hidden` is `[windows · seqlen, hidden]`, every window from position 0,
//! causal within itself — the layout calibration and perplexity both use. The block works through
//! them in chunks of whole windows whose scratch fits a byte budget, so a 7B block over 128
//! windows of 512 tokens needs a few GB of scratch, not the tens a single pass would take.
//!
//! ```no_run
//! use qtool_calib::engine::gpu::{GpuBlock, GpuHead, LlamaGpu};
//! use qtool_calib::engine::{Model, Site};
//! # fn main() -> qtool_calib::engine::Result<()> {
//! let gpu = qtool_kernels::Gpu::open(0)?;
//! let ops = LlamaGpu::new(&gpu)?;
//! let model = Model::open("SmolLM2-135M.gguf")?;
//! let (windows, seqlen) = (4, 512);
//! let tokens = vec![1u32; windows * seqlen];
//! let mut hidden = gpu.upload(&model.embed(&tokens)?.data)?;
//! for i in 0..model.config().n_layers {
//!     let block = GpuBlock::upload(&ops, &model.load_block(i)?)?;
//!     let mut seen = |site: Site, x: &qtool_calib::engine::gpu::CudaSlice<f32>, rows: usize| {
//!         let _ = (site, x, rows); // x: [rows, in_features] in its first rows·in values
//!         Ok(())
//!     };
//!     block.forward(&ops, &mut hidden, windows, seqlen, Some(&mut seen))?;
//! }
//! let head = GpuHead::upload(&ops, &model.load_head()?)?;
//! let logits = head.logits(&ops, &hidden, windows * seqlen)?; // [rows, vocab] on the device
//! # let _ = logits; Ok(()) }
//! ```

use qtool_kernels::llama::RopeTables;
pub use qtool_kernels::llama::{CudaSlice, LlamaGpu};

use super::block::{Block, BlockShape, Linear, Site};
use super::error::{EngineError, Result};
use super::model::Head;

/// The observer [`GpuBlock::forward`] calls with each [`Site`], the device input of that site's
/// linears (`[rows, in_features]` in its first `rows · in_features` values; the buffer may be
/// longer) and `rows`, the chunk's row count.
pub type GpuCapture<'a> = &'a mut dyn FnMut(Site, &CudaSlice<f32>, usize) -> Result<()>;

/// Slots of [`GpuBlock::set_weight`], in the order of [`Block::linears`].
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// A linear layer on the device.
struct GpuLinear {
    /// `[out, inp]` row-major.
    w: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

impl GpuLinear {
    fn upload(ops: &LlamaGpu<'_>, l: &Linear) -> Result<GpuLinear> {
        let gpu = ops.gpu();
        Ok(GpuLinear {
            w: gpu.upload(&l.weight.data)?,
            bias: l.bias.as_deref().map(|b| gpu.upload(b)).transpose()?,
            out: l.weight.rows,
            inp: l.weight.cols,
        })
    }

    fn run(
        &self,
        ops: &LlamaGpu<'_>,
        x: &CudaSlice<f32>,
        rows: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Ok(ops.linear(x, rows, self.inp, &self.w, self.out, self.bias.as_ref(), y)?)
    }
}

/// One decoder block's weights on the device. Build with [`GpuBlock::upload`].
pub struct GpuBlock {
    index: usize,
    shape: BlockShape,
    input_norm: CudaSlice<f32>,
    post_attn_norm: CudaSlice<f32>,
    q_norm: Option<CudaSlice<f32>>,
    k_norm: Option<CudaSlice<f32>>,
    /// q, k, v, o, gate, up, down.
    lin: [GpuLinear; 7],
    /// Bytes of device scratch a forward pass may take ([`GpuBlock::set_scratch_budget`]).
    scratch_budget: usize,
}

impl std::fmt::Debug for GpuBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBlock").field("index", &self.index).field("shape", &self.shape).finish()
    }
}

/// The device buffers of one chunk of windows.
struct Scratch {
    /// Normed input of q/k/v, then of gate/up: `[R, hidden]`.
    x: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    scores: CudaSlice<f32>,
    /// Attention output (o_proj input): `[R, heads · hd]`.
    attn: CudaSlice<f32>,
    /// o_proj / down_proj output before the residual add: `[R, hidden]`.
    proj: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
}

impl GpuBlock {
    /// Copies `block`'s weights to the device.
    pub fn upload(ops: &LlamaGpu<'_>, block: &Block) -> Result<GpuBlock> {
        let gpu = ops.gpu();
        let opt = |w: &Option<Vec<f32>>| w.as_deref().map(|w| gpu.upload(w)).transpose();
        let lin = [
            GpuLinear::upload(ops, &block.q)?,
            GpuLinear::upload(ops, &block.k)?,
            GpuLinear::upload(ops, &block.v)?,
            GpuLinear::upload(ops, &block.o)?,
            GpuLinear::upload(ops, &block.gate)?,
            GpuLinear::upload(ops, &block.up)?,
            GpuLinear::upload(ops, &block.down)?,
        ];
        let b = GpuBlock {
            index: block.index,
            shape: block.cfg.clone(),
            input_norm: gpu.upload(&block.input_norm)?,
            post_attn_norm: gpu.upload(&block.post_attn_norm)?,
            q_norm: opt(&block.q_norm)?,
            k_norm: opt(&block.k_norm)?,
            lin,
            scratch_budget: default_scratch_budget(gpu.device().total_memory_bytes),
        };
        b.check_shapes()?;
        Ok(b)
    }

    /// Refuses weights whose shapes disagree with the block's configuration (a caller that
    /// edited a [`Block`]'s matrices by hand), before any kernel reads past a buffer.
    fn check_shapes(&self) -> Result<()> {
        let c = &self.shape;
        let (h, qd, kvd) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let f = self.lin[GATE].out;
        let want = [(qd, h), (kvd, h), (kvd, h), (h, qd), (f, h), (f, h), (h, f)];
        for (slot, (l, (o, i))) in self.lin.iter().zip(want).enumerate() {
            if l.out != o || l.inp != i {
                return Err(EngineError::Usage(format!(
                    "block {}: linear {slot} is [{}, {}], the configuration needs [{o}, {i}]",
                    self.index, l.out, l.inp
                )));
            }
        }
        if c.n_kv_heads == 0 || c.n_heads % c.n_kv_heads != 0 || c.head_dim % 2 != 0 {
            return Err(EngineError::Usage(format!(
                "block {}: {} heads over {} KV heads of {} is not a GQA shape",
                self.index, c.n_heads, c.n_kv_heads, c.head_dim
            )));
        }
        Ok(())
    }

    /// Sets the bytes of device scratch [`GpuBlock::forward`] may allocate (one window's worth is
    /// used however small the budget). The default is an eighth of the device's memory, between
    /// 256 MiB and 8 GiB.
    pub fn set_scratch_budget(&mut self, bytes: usize) {
        self.scratch_budget = bytes;
    }

    /// The block's position in the model.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Replaces the weight of linear `slot` (the order of [`Block::linears`]: q, k, v, o, gate,
    /// up, down) with `w` (`[out_features, in_features]` row-major); biases stay.
    pub fn set_weight(&mut self, ops: &LlamaGpu<'_>, slot: usize, w: &[f32]) -> Result<()> {
        let index = self.index;
        let l = self.lin.get_mut(slot).ok_or_else(|| {
            EngineError::Usage(format!("block {index}: linear slot {slot} does not exist (0..7)"))
        })?;
        if w.len() != l.out * l.inp {
            return Err(EngineError::Usage(format!(
                "block {index}: linear {slot} is [{}, {}], got {} values",
                l.out,
                l.inp,
                w.len()
            )));
        }
        l.w = ops.gpu().upload(w)?;
        Ok(())
    }

    /// Bytes of device scratch one chunk of `windows` windows of `seqlen` tokens needs (plus the
    /// chunk's copy of the residual stream when the pass takes more than one chunk).
    pub fn scratch_bytes(&self, windows: usize, seqlen: usize) -> usize {
        let c = &self.shape;
        let (h, qd, kvd, f) =
            (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, self.lin[GATE].out);
        let rows = windows * seqlen;
        4 * (rows * (2 * h + 2 * qd + 2 * kvd + 2 * f)
            + LlamaGpu::attention_scores_len(windows, seqlen, c.n_heads))
    }

    /// Runs the block on `hidden` = `[windows · seqlen, hidden]` on the device, updated in place:
    /// every window from position 0 (positions `0..seqlen`), causal within each window.
    ///
    /// Works through the windows in chunks whose scratch ([`GpuBlock::scratch_bytes`] plus a
    /// copy of the chunk's rows when there is more than one chunk) stays under the scratch
    /// budget ([`GpuBlock::set_scratch_budget`]) — one whole window per chunk at least. `capture`, when given, is called for each
    /// chunk and each [`Site`] in the order AttnIn, OIn, MlpIn, DownIn (see [`GpuCapture`]);
    /// chunks come in window order, so rows of chunk `c` are windows `c·cw ..` of `hidden`.
    pub fn forward(
        &self,
        ops: &LlamaGpu<'_>,
        hidden: &mut CudaSlice<f32>,
        windows: usize,
        seqlen: usize,
        mut capture: Option<GpuCapture<'_>>,
    ) -> Result<()> {
        let c = &self.shape;
        if windows == 0 || seqlen == 0 {
            return Ok(());
        }
        if hidden.len() < windows * seqlen * c.hidden {
            return Err(EngineError::Usage(format!(
                "block {}: hidden holds {} values, [{windows} · {seqlen}, {}] needs {}",
                self.index,
                hidden.len(),
                c.hidden,
                windows * seqlen * c.hidden
            )));
        }
        if let Some(w) = c.sliding_window.filter(|&w| seqlen > w) {
            return Err(EngineError::Usage(format!(
                "a sequence of {seqlen} tokens exceeds the model's sliding attention window of {w}, which the engine does not implement"
            )));
        }
        let per_window = self.scratch_bytes(1, seqlen) + 4 * seqlen * c.hidden;
        let cw = (self.scratch_budget / per_window).clamp(1, windows);
        let chunked = cw < windows;
        let positions: Vec<usize> = (0..seqlen).collect();
        let (cos, sin) = c.rope.tables(&positions);
        let tables = RopeTables::upload(ops.gpu(), &cos, &sin, seqlen)?;
        let mut s = self.scratch(ops, cw, seqlen)?;
        let width = seqlen * c.hidden;
        if !chunked {
            return self.run_chunk(ops, hidden, windows, seqlen, &tables, &mut s, &mut capture);
        }
        let mut h = ops.gpu().zeros::<f32>(cw * width)?;
        for w0 in (0..windows).step_by(cw) {
            let nw = cw.min(windows - w0);
            ops.copy(hidden, w0 * width, &mut h, 0, nw * width)?;
            self.run_chunk(ops, &mut h, nw, seqlen, &tables, &mut s, &mut capture)?;
            ops.copy(&h, 0, hidden, w0 * width, nw * width)?;
        }
        Ok(())
    }

    fn scratch(&self, ops: &LlamaGpu<'_>, cw: usize, t: usize) -> Result<Scratch> {
        let c = &self.shape;
        let gpu = ops.gpu();
        let rows = cw * t;
        let (qd, kvd, f) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, self.lin[GATE].out);
        Ok(Scratch {
            x: gpu.zeros(rows * c.hidden)?,
            q: gpu.zeros(rows * qd)?,
            k: gpu.zeros(rows * kvd)?,
            v: gpu.zeros(rows * kvd)?,
            scores: gpu.zeros(LlamaGpu::attention_scores_len(cw, t, c.n_heads))?,
            attn: gpu.zeros(rows * qd)?,
            proj: gpu.zeros(rows * c.hidden)?,
            gate: gpu.zeros(rows * f)?,
            up: gpu.zeros(rows * f)?,
        })
    }

    /// [`Block::forward`]'s steps over `nw` stacked windows of `t` tokens in `h`.
    #[allow(clippy::too_many_arguments)]
    fn run_chunk(
        &self,
        ops: &LlamaGpu<'_>,
        h: &mut CudaSlice<f32>,
        nw: usize,
        t: usize,
        tables: &RopeTables,
        s: &mut Scratch,
        capture: &mut Option<GpuCapture<'_>>,
    ) -> Result<()> {
        let c = &self.shape;
        let rows = nw * t;
        let (hd, nh, nkv, eps) = (c.head_dim, c.n_heads, c.n_kv_heads, c.eps);
        let mut emit = |site: Site, x: &CudaSlice<f32>| -> Result<()> {
            match capture.as_mut() {
                Some(f) => f(site, x, rows),
                None => Ok(()),
            }
        };

        ops.rms_norm(h, &self.input_norm, rows, c.hidden, eps, &mut s.x)?;
        emit(Site::AttnIn, &s.x)?;
        self.lin[Q].run(ops, &s.x, rows, &mut s.q)?;
        self.lin[K].run(ops, &s.x, rows, &mut s.k)?;
        self.lin[V].run(ops, &s.x, rows, &mut s.v)?;
        if let Some(w) = &self.q_norm {
            ops.rms_norm_in_place(&mut s.q, w, rows * nh, hd, eps)?;
        }
        if let Some(w) = &self.k_norm {
            ops.rms_norm_in_place(&mut s.k, w, rows * nkv, hd, eps)?;
        }
        ops.rope(&mut s.q, rows, nh, hd, tables)?;
        ops.rope(&mut s.k, rows, nkv, hd, tables)?;
        ops.attention(&s.q, &s.k, &s.v, nw, t, nh, nkv, hd, &mut s.scores, &mut s.attn)?;
        emit(Site::OIn, &s.attn)?;
        self.lin[O].run(ops, &s.attn, rows, &mut s.proj)?;
        ops.add(h, &s.proj, rows * c.hidden)?;

        ops.rms_norm(h, &self.post_attn_norm, rows, c.hidden, eps, &mut s.x)?;
        emit(Site::MlpIn, &s.x)?;
        self.lin[GATE].run(ops, &s.x, rows, &mut s.gate)?;
        self.lin[UP].run(ops, &s.x, rows, &mut s.up)?;
        ops.swiglu(&mut s.gate, &s.up, rows * self.lin[GATE].out)?;
        emit(Site::DownIn, &s.gate)?;
        self.lin[DOWN].run(ops, &s.gate, rows, &mut s.proj)?;
        ops.add(h, &s.proj, rows * c.hidden)?;
        Ok(())
    }
}

fn default_scratch_budget(device_bytes: u64) -> usize {
    ((device_bytes / 8) as usize).clamp(256 << 20, 8 << 30)
}

/// The final RMSNorm and the output projection on the device.
pub struct GpuHead {
    norm: CudaSlice<f32>,
    /// `[vocab, hidden]`.
    weight: CudaSlice<f32>,
    vocab: usize,
    hidden: usize,
    eps: f32,
}

impl std::fmt::Debug for GpuHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHead").field("vocab", &self.vocab).field("hidden", &self.hidden).finish()
    }
}

/// Bytes of logits [`GpuHead::nll`] computes at once.
const LOGITS_BUDGET: usize = 256 << 20;

impl GpuHead {
    pub fn upload(ops: &LlamaGpu<'_>, head: &Head) -> Result<GpuHead> {
        let gpu = ops.gpu();
        if head.norm.len() != head.weight.cols {
            return Err(EngineError::Usage(format!(
                "head: norm of {} values for a [{}, {}] projection",
                head.norm.len(),
                head.weight.rows,
                head.weight.cols
            )));
        }
        Ok(GpuHead {
            norm: gpu.upload(&head.norm)?,
            weight: gpu.upload(&head.weight.data)?,
            vocab: head.weight.rows,
            hidden: head.weight.cols,
            eps: head.eps,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Logits `[rows, vocab]` of the first `rows` rows of `hidden` (`[rows, hidden]`).
    pub fn logits(
        &self,
        ops: &LlamaGpu<'_>,
        hidden: &CudaSlice<f32>,
        rows: usize,
    ) -> Result<CudaSlice<f32>> {
        let gpu = ops.gpu();
        let mut x = gpu.zeros::<f32>(rows * self.hidden)?;
        ops.rms_norm(hidden, &self.norm, rows, self.hidden, self.eps, &mut x)?;
        let mut out = gpu.zeros::<f32>(rows * self.vocab)?;
        ops.linear(&x, rows, self.hidden, &self.weight, self.vocab, None, &mut out)?;
        Ok(out)
    }

    /// Per-row negative log-likelihood `logsumexp(logits[r]) − logits[r][targets[r]]` (f64, as
    /// `eval::nll_of`) of the first `targets.len()` rows of `hidden`; a negative target gives 0.
    /// Logits are computed a few MB at a time and never leave the device.
    pub fn nll(
        &self,
        ops: &LlamaGpu<'_>,
        hidden: &CudaSlice<f32>,
        targets: &[i32],
    ) -> Result<Vec<f64>> {
        let gpu = ops.gpu();
        let rows = targets.len();
        if hidden.len() < rows * self.hidden {
            return Err(EngineError::Usage(format!(
                "head: hidden holds {} values, {rows} rows of {} need more",
                hidden.len(),
                self.hidden
            )));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t >= 0 && t as usize >= self.vocab) {
            return Err(EngineError::Usage(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab
            )));
        }
        let chunk = (LOGITS_BUDGET / (4 * self.vocab.max(1))).clamp(1, rows.max(1));
        let mut x = gpu.zeros::<f32>(chunk * self.hidden)?;
        let mut xn = gpu.zeros::<f32>(chunk * self.hidden)?;
        let mut logits = gpu.zeros::<f32>(chunk * self.vocab)?;
        let mut nll = gpu.zeros::<f64>(chunk)?;
        let mut out = Vec::with_capacity(rows);
        for r0 in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - r0);
            ops.copy(hidden, r0 * self.hidden, &mut x, 0, n * self.hidden)?;
            ops.rms_norm(&x, &self.norm, n, self.hidden, self.eps, &mut xn)?;
            ops.linear(&xn, n, self.hidden, &self.weight, self.vocab, None, &mut logits)?;
            let tg = gpu.upload(&targets[r0..r0 + n])?;
            ops.nll_rows(&logits, n, self.vocab, &tg, &mut nll)?;
            out.extend_from_slice(&gpu.download(&nll)?[..n]);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "gpu_tests.rs"]
mod tests;
