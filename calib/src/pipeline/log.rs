//! The per-layer log: data, not prose — written as JSON beside the output
//! (`<OUT>.calib.json`) and kept in the resume state.

use serde::{Deserialize, Serialize};

/// One quantized linear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerLog {
    /// The weight tensor's name.
    pub name: String,
    pub block: usize,
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    /// `‖XWᵀ − XQᵀ‖² / ‖XWᵀ‖²` on the held-out calibration tokens, for round-to-nearest and for
    /// the method (AWQ: the effective weight, scales folded back).
    pub rtn_error: f64,
    pub error: f64,
    /// GPTQ: the dampening fraction that made the Hessian factorizable.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub damp: Option<f64>,
    /// AWQ: the chosen exponent of the scale search (absent where the input has no producer
    /// to fold the scales into).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alpha: Option<f32>,
    /// Set when the method could not run on this layer and it was quantized by RTN instead.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fallback: Option<String>,
}

/// The whole log document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibLog {
    pub schema_version: u32,
    pub method: String,
    pub layout: String,
    pub bits: u32,
    pub group_size: i64,
    pub symmetric: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub damp: Option<f64>,
    #[serde(default)]
    pub act_order: bool,
    pub calibration: CalibInfo,
    pub seconds: f64,
    /// Where the blocks ran: `"cuda"` (forward, statistics and GPTQ on the GPU) or `"cpu"`.
    #[serde(default)]
    pub device: String,
    /// Wall seconds of each block (capture, quantization, quantized pass, resume state), in
    /// block order; a resumed run keeps the times of the blocks it did not redo.
    #[serde(default)]
    pub block_seconds: Vec<f64>,
    pub layers: Vec<LayerLog>,
    pub summary: Summary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibInfo {
    pub source: String,
    pub samples: usize,
    pub seqlen: usize,
    pub held_out_windows: usize,
    pub text_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub layers: usize,
    /// Layers where the method's error is below RTN's.
    pub better_than_rtn: usize,
    pub fallbacks: usize,
    pub mean_rtn_error: f64,
    pub mean_error: f64,
}

impl Summary {
    pub fn of(layers: &[LayerLog]) -> Summary {
        let n = layers.len().max(1) as f64;
        Summary {
            layers: layers.len(),
            better_than_rtn: layers.iter().filter(|l| l.error < l.rtn_error).count(),
            fallbacks: layers.iter().filter(|l| l.fallback.is_some()).count(),
            mean_rtn_error: layers.iter().map(|l| l.rtn_error).sum::<f64>() / n,
            mean_error: layers.iter().map(|l| l.error).sum::<f64>() / n,
        }
    }
}
