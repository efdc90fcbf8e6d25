//! The forward engine for llama-family decoders (Llama, Mistral, Qwen2 with q/k/v biases, Qwen3
//! with q/k norms, SmolLM): RMSNorm, RoPE (plain, linear, Llama-3), grouped-query causal
//! attention, SwiGLU MLP, tied or untied head, on the CPU with rayon and a packed SGEMM.
//!
//! Weights are read straight from the mapped checkpoint — a Hugging Face directory (or a
//! `.safetensors` file with `config.json` beside it) or a GGUF file — and decoded to `f32` from
//! whatever dtype or quantization scheme stores them. The engine never holds the model: the
//! caller asks for one block at a time and drops it when done; released mapped pages go back
//! to the OS.
//!
//! # API (for calibration pipelines and evaluation)
//! ```no_run
//! use qtool_calib::engine::{Model, Site};
//! # fn main() -> Result<(), qtool_calib::engine::EngineError> {
//! let model = Model::open("SmolLM2-135M.gguf")?;
//! let cfg = model.config(); // n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, eps, rope
//! let tokens = [1u32, 2, 3];
//! let positions: Vec<usize> = (0..tokens.len()).collect();
//! let mut hidden = model.embed(&tokens)?; // Matrix [t, hidden]
//! for i in 0..cfg.n_layers {
//!     let mut block = model.load_block(i)?; // pub fields: q, k, v, o, gate, up, down (Linear), norms
//!     block.forward(&mut hidden, &positions, Some(&mut |site: Site, x: &qtool_calib::engine::Matrix| {
//!         // x: the input of the linears at `site` ([t, in_features]); accumulate X·Xᵀ etc.
//!         let _ = (site, x);
//!     }))?;
//!     block.q.weight.data[0] = 0.0; // swap in quantized-dequantized weights, run again, ...
//! }
//! let logits = model.load_head()?.logits(&hidden); // final norm + lm_head: [t, vocab]
//! # let _ = logits; Ok(()) }
//! ```
//! * [`Matrix`] is row-major `f32` (`rows`, `cols`, `data`); a [`Linear`]'s `weight` is
//!   `[out_features, in_features]` like PyTorch, `bias` optional.
//! * [`Block::forward`] works on one sequence (`[t, hidden]`); batch several sequences by
//!   calling it once per sequence with the same block. `capture` sees each [`Site`] once:
//!   `AttnIn` (q/k/v input, after the input norm), `OIn` (o_proj input), `MlpIn` (gate/up input,
//!   after the post-attention norm), `DownIn` (down_proj input).
//! * [`Block::linears`] / [`Block::linears_mut`] list the seven linears with their HF names
//!   (`self_attn.q_proj`, ...) and sites, for loops over layers.
//! * GGUF `llama` q/k rows are returned in Hugging Face order (the permutation is undone on
//!   load); a quantizer that writes GGUF must permute back (`qtool_formats::naming::permute_qk`).
//! * Results do not depend on the rayon thread count.
//! * [`gpu`] holds the GPU twin ([`GpuBlock`], [`GpuHead`]): the same block over many stacked
//!   windows at once, with cuBLAS FP32 GEMMs, equal to the CPU within f32 rounding.

mod block;
mod config;
mod error;
pub mod gpu;
mod matrix;
mod model;
pub mod ops;
mod weights;

pub use block::{Block, Capture, Linear, Site};
pub use config::{ModelConfig, Rope, RopeKind};
pub use error::{EngineError, Result};
pub use gpu::{GpuBlock, GpuCapture, GpuHead};
pub use matrix::{gemm_xwt, panel_width, Matrix};
pub use model::{Head, Model};
