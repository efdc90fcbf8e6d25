//! Exporters: the tensor names, dtypes and configs each target runtime loads (ComfyUI current
//! and legacy, compressed-tensors, ModelOpt), and the streaming quantize pipeline that writes
//! them.

pub mod catalog;
pub mod config;
mod error;
pub mod int_layer;
pub mod layer;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod repack;

pub use catalog::{lookup, FmtSpec, Layout, Scheme, FORMATS};
pub use error::ExportError;
pub use int_layer::{IntOptions, IntSettings};
pub use plan::{plan, Action, PlanEntry, QuantizePlan, Request};
