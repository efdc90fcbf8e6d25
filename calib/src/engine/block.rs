//! One decoder block with its weights decoded to `f32`, and its forward pass over one sequence.

use super::config::{ModelConfig, Rope};
use super::error::{EngineError, Result};
use super::matrix::Matrix;
use super::ops;

/// Where a linear layer's input is observed during [`Block::forward`]. Linears that share an
/// input are one site: q/k/v read [`Site::AttnIn`], gate/up read [`Site::MlpIn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// After the input RMSNorm: the input of `q_proj`, `k_proj`, `v_proj`.
    AttnIn,
    /// The attention output before `o_proj` (its input).
    OIn,
    /// After the post-attention RMSNorm: the input of `gate_proj`, `up_proj`.
    MlpIn,
    /// `silu(gate) · up`: the input of `down_proj`.
    DownIn,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::AttnIn, Site::OIn, Site::MlpIn, Site::DownIn];
}

/// The observer [`Block::forward`] calls with each [`Site`] and the `[t, in_features]` input.
pub type Capture<'a> = &'a mut dyn FnMut(Site, &Matrix);

/// A linear layer `y = x · weightᵀ + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out_features, in_features]`, row-major (PyTorch's layout).
    pub weight: Matrix,
    /// `[out_features]` (Qwen2's q/k/v biases); `None` for most layers.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// `x · weightᵀ (+ bias)` for `x` of `[t, in_features]`.
    pub fn forward(&self, x: &Matrix) -> Matrix {
        let mut y = x.matmul_t(&self.weight);
        if let Some(b) = &self.bias {
            for row in y.data.chunks_mut(b.len()) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        y
    }
}

/// One transformer block. Every weight is a public field, so a quantizer can swap a linear's
/// `weight` for its quantized-dequantized version and run the block again.
#[derive(Clone, Debug)]
pub struct Block {
    /// Position in the model (0-based).
    pub index: usize,
    pub input_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// Qwen3's per-head RMSNorm of queries and keys (before rope), `[head_dim]`.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub(crate) cfg: BlockShape,
}

/// What a block needs from the model config.
#[derive(Clone, Debug)]
pub(crate) struct BlockShape {
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope: Rope,
    pub sliding_window: Option<usize>,
}

impl BlockShape {
    fn check_seq_len(&self, t: usize) -> Result<()> {
        match self.sliding_window {
            Some(w) if t > w => Err(EngineError::Usage(format!(
                "a sequence of {t} tokens exceeds the model's sliding attention window of {w}, which the engine does not implement"
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) fn of(cfg: &ModelConfig) -> BlockShape {
        BlockShape {
            hidden: cfg.hidden,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            eps: cfg.eps,
            rope: cfg.rope.clone(),
            sliding_window: cfg.sliding_window,
        }
    }
}

impl Block {
    /// Runs the block on one sequence: `hidden` (`[t, hidden]`, the residual stream) is updated
    /// in place. `positions[i]` is the rope position of row `i`; row `i` attends to rows `0..=i`.
    /// `capture` sees the input of every linear, once per [`Site`], in the order
    /// AttnIn, OIn, MlpIn, DownIn.
    pub fn forward(
        &self,
        hidden: &mut Matrix,
        positions: &[usize],
        mut capture: Option<Capture<'_>>,
    ) -> Result<()> {
        let c = &self.cfg;
        if hidden.cols != c.hidden || positions.len() != hidden.rows {
            return Err(EngineError::Usage(format!(
                "block {}: hidden is [{}, {}] with {} positions, expected [t, {}] with t positions",
                self.index,
                hidden.rows,
                hidden.cols,
                positions.len(),
                c.hidden
            )));
        }
        // Full causal attention equals the model's only within its sliding window.
        c.check_seq_len(hidden.rows)?;
        let mut emit = |site: Site, m: &Matrix| {
            if let Some(f) = capture.as_mut() {
                f(site, m);
            }
        };
        let t = hidden.rows;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);

        let x = Matrix::from_vec(t, c.hidden, ops::rms_norm(&hidden.data, &self.input_norm, c.eps));
        emit(Site::AttnIn, &x);
        let mut q = self.q.forward(&x);
        let mut k = self.k.forward(&x);
        let v = self.v.forward(&x);
        drop(x);
        if let Some(w) = &self.q_norm {
            ops::rms_norm_in_place(&mut q.data, w, c.eps);
        }
        if let Some(w) = &self.k_norm {
            ops::rms_norm_in_place(&mut k.data, w, c.eps);
        }
        let (cos, sin) = c.rope.tables(positions);
        ops::apply_rope(&mut q, nh, hd, &cos, &sin);
        ops::apply_rope(&mut k, nkv, hd, &cos, &sin);
        let attn = ops::causal_attention(&q, &k, &v, nh, nkv, hd);
        drop((q, k, v));
        emit(Site::OIn, &attn);
        add_into(hidden, &self.o.forward(&attn));
        drop(attn);

        let x =
            Matrix::from_vec(t, c.hidden, ops::rms_norm(&hidden.data, &self.post_attn_norm, c.eps));
        emit(Site::MlpIn, &x);
        let mut g = self.gate.forward(&x);
        let u = self.up.forward(&x);
        drop(x);
        ops::swiglu(&mut g, &u);
        drop(u);
        emit(Site::DownIn, &g);
        add_into(hidden, &self.down.forward(&g));
        Ok(())
    }

    /// The linear layers with their Hugging Face names relative to the block
    /// (`self_attn.q_proj`, ...) and the site of their input.
    pub fn linears(&self) -> [(&'static str, Site, &Linear); 7] {
        [
            ("self_attn.q_proj", Site::AttnIn, &self.q),
            ("self_attn.k_proj", Site::AttnIn, &self.k),
            ("self_attn.v_proj", Site::AttnIn, &self.v),
            ("self_attn.o_proj", Site::OIn, &self.o),
            ("mlp.gate_proj", Site::MlpIn, &self.gate),
            ("mlp.up_proj", Site::MlpIn, &self.up),
            ("mlp.down_proj", Site::DownIn, &self.down),
        ]
    }

    /// Mutable access to the linear layers, same order and names as [`Block::linears`].
    pub fn linears_mut(&mut self) -> [(&'static str, Site, &mut Linear); 7] {
        [
            ("self_attn.q_proj", Site::AttnIn, &mut self.q),
            ("self_attn.k_proj", Site::AttnIn, &mut self.k),
            ("self_attn.v_proj", Site::AttnIn, &mut self.v),
            ("self_attn.o_proj", Site::OIn, &mut self.o),
            ("mlp.gate_proj", Site::MlpIn, &mut self.gate),
            ("mlp.up_proj", Site::MlpIn, &mut self.up),
            ("mlp.down_proj", Site::DownIn, &mut self.down),
        ]
    }
}

fn add_into(acc: &mut Matrix, x: &Matrix) {
    for (a, &b) in acc.data.iter_mut().zip(&x.data) {
        *a += b;
    }
}
