//! The one error type of the float schemes: bad values, bad shapes, and parts whose sizes do not
//! match what their layout promises. Messages carry the numbers needed to find the problem; the
//! caller adds the file and tensor name.

use super::ComputeDType;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FloatError {
    #[error(
        "element {index} (row {row}, column {col}) is {value}: a non-finite weight has no \
         quantized value (allow non-finite values to saturate them instead)"
    )]
    NonFinite { index: usize, row: usize, col: usize, value: f32 },

    #[error("element {index} (row {row}, column {col}) = {value} does not fit in {dtype}, the weight's dtype")]
    OutOfRange { index: usize, row: usize, col: usize, value: f32, dtype: ComputeDType },

    #[error("shape [{rows}, {cols}] holds {} elements but the data has {got}", expected.map_or("too many".to_string(), |n| n.to_string()))]
    Shape { rows: usize, cols: usize, expected: Option<usize>, got: usize },

    /// The scheme cannot represent this shape or setting (named, with the rule it breaks).
    #[error("{scheme}: {reason}")]
    Unsupported { scheme: &'static str, reason: String },

    /// A quantized part (packed data, scales) is not the size its shape implies.
    #[error("{part}: expected {expected} bytes, got {got}")]
    PartLength { part: &'static str, expected: usize, got: usize },

    /// ComfyUI's per-tensor FP8 multiplies by `(1/scale)` rounded to the weight's dtype; in F16
    /// that reciprocal overflows to inf when amax < 448/65504 and ComfyUI would write NaN/±max
    /// garbage. Quantize such a tensor with F32 compute instead.
    #[error(
        "the reciprocal scale 1/{scale} overflows {dtype} (amax {amax}); ComfyUI would write \
         garbage for this tensor — quantize it in F32"
    )]
    ReciprocalOverflow { scale: f32, amax: f32, dtype: ComputeDType },
}
