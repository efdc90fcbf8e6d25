//! Calibrated post-training quantization of linear layers: GPTQ (Frantar et al. 2022, "GPTQ:
//! Accurate Post-Training Quantization for Generative Pre-trained Transformers") and AWQ (Lin et
//! al. 2023, "AWQ: Activation-aware Weight Quantization").
//!
//! Both methods see a layer only through statistics of its calibration inputs `X[T, K]`:
//!
//! ```text
//!   X batches ──Hessian::add──► Σ xxᵀ (f64), Σ|x| ──┬─ hessian()  = 2·XᵀX/T ──► gptq::quantize
//!                                                   ├─ gram()     =   XᵀX/T ──► awq::search_scales / clip
//!                                                   └─ abs_mean() = mean|x| ─┘
//! ```
//!
//! AWQ's output error `‖X·Wᵀ − X·Ŵᵀ‖²` is evaluated as `Σₙ Δₙᵀ (XᵀX) Δₙ` with `Δ = W − Ŵ`, which
//! is exact and costs `N·K²` instead of `T·N·K` — so every calibration token counts, not a
//! subsample. The result of either method is the [`QuantizedInt`](crate::int::QuantizedInt)
//! every int4/int8 layout writer packs, computed with the scale/zero formula of the target
//! layout ([`Convention`](crate::int::Convention)) and with scales rounded to the dtype the file
//! stores before the codes are chosen, exactly like RTN's `quantize_for_storage`.

pub mod awq;
pub mod error;
mod gemm;
pub mod gptq;
pub mod hessian;
pub mod linalg;

pub use awq::{clip_search, search_scales, search_scales_with, AwqConfig, ClipResult, ScaleSearch};
pub use error::{PtqError, PtqResult};
pub use gptq::{GptqConfig, GptqOutput, Prepared};
pub use hessian::{abs_mean_of, output_error, GramQuadForm, Hessian, QuadForm};

#[cfg(test)]
mod tests;
