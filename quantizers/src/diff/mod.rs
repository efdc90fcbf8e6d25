//! Per-tensor error metrics between a reference checkpoint and a candidate (its quantized
//! version), with tensors matched by name across containers and layouts.
//!
//! The pieces, in the order a diff uses them:
//! - [`registry`]: splits each checkpoint into *logical* tensors — a quantized layer's weight,
//!   scales and markers read as one weight — and knows how to decode each back to `f32` by the
//!   scheme that wrote it: [`fp8`] (FP8 scaled: ComfyUI current and legacy, per-row
//!   `weight_scale`), [`nvfp4`] (ComfyUI, ModelOpt, compressed-tensors), [`ct_int`]
//!   (compressed-tensors INT4/INT8), [`gptq_awq`] (GPTQ, AWQ), [`marlin`] (vLLM legacy Marlin),
//!   every plain dtype and GGML type through [`crate::decode`]; new schemes plug in through
//!   [`registry::SchemeDecoder`];
//! - [`matching`]: pairs REF and CAND tensors by name, through the Hugging Face ↔ GGUF naming
//!   and the llama q/k row permutation when the containers differ;
//! - [`metrics`]: mse, rmse, max_abs, rel_fro, sqnr_db, cosine, accumulated in `f64` in fixed
//!   chunks and combined in order (deterministic for any thread count; edge cases documented
//!   there);
//! - [`driver`]: runs the pairs in parallel, chunk by chunk, into a [`DiffReport`] (rows in model
//!   order, see [`position`], plus a summary);
//! - [`plot`]: an SVG of SQNR per layer, one line per tensor role.

pub mod ct_int;
pub mod driver;
pub mod error;
pub mod fp8;
pub mod gptq_awq;
pub mod marlin;
pub mod matching;
pub mod metrics;
pub mod nvfp4;
pub mod plot;
pub mod position;
pub mod registry;
pub mod report;

pub use driver::{diff, plan, DiffOptions, DiffPlan, DIFF_CHUNK};
pub use error::{DiffError, Side};
pub use matching::{Input, Matcher, Pairing, QkHeads};
pub use metrics::{Metrics, Partial};
pub use registry::{Dequantize, LogicalTensor, Registry, SchemeDecoder};
pub use report::{DiffReport, DiffRow, DiffSummary, RowStatus, SCHEMA_VERSION};
