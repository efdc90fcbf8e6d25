//! Quantization recipes: which tensor of a checkpoint gets which scheme. GGUF recipes follow
//! llama.cpp's per-tensor rules (`llama_tensor_get_type`) for llama-family models.
//!
//! * [`ftype`]: the recipe names (`Q4_K_M`, ...), their `general.file_type` ids and default types.
//! * [`gguf`]: the per-tensor rules, overrides and shape fallbacks, producing a [`RecipePlan`] in
//!   llama.cpp's tensor order.
//! * [`log`]: the plan as the lines `llama-quantize --dry-run` prints.
//! * [`requant`]: streaming GGUF → GGUF quantization that writes llama.cpp's bytes.

pub mod ftype;
pub mod gguf;
pub mod log;
pub mod requant;

pub use ftype::{FileType, FileTypeError};
pub use gguf::{
    plan, Choice, ModelParams, RecipeError, RecipeOptions, RecipePlan, TensorDesc, TensorPlan,
    TensorTypeOverride,
};
pub use requant::{prepare, requantize_into, requantize_to_path, RequantError, RequantPlan};
