//! Group-wise integer weight quantization (round to nearest, 4 and 8 bits, symmetric and
//! asymmetric) and the packings real runtimes load: GPTQ, AWQ, compressed-tensors
//! pack-quantized and Marlin.
//!
//! Everything meets in [`QuantizedInt`] (unsigned codes `[N, K]`, scales and zeros `[G, N]`,
//! optional act-order `g_idx`): the quantizers ([`rtn`], and GPTQ/AWQ through
//! [`quantize_with_params`]) produce it, and every packer consumes it and gives it back
//! unchanged (`unpack(pack(x)) == x`). Layout facts and their sources are in
//! `/work/shared/formats.md` §2.3, §3, §4; each module restates the layout it writes.
//!
//! ```text
//!   W[N,K] f32 ──rtn::quantize──► QuantizedInt ──┬─ gptq::pack_gptq ──► qweight/qzeros(v1|v2)/scales/g_idx
//!                                                ├─ awq::pack_awq   ──► qweight/qzeros/scales (interleaved)
//!                                                ├─ compressed::pack_ct ► weight_packed/scale/zero_point/shape
//!                                                └─ marlin::pack_marlin ► B / s / zp (+ sort_indices)
//! ```

pub mod awq;
pub mod compressed;
pub mod convert;
pub mod error;
pub mod gptq;
pub mod marlin;
pub mod marlin_check;
pub mod pack;
pub mod rtn;

pub use awq::{pack_awq, unpack_awq, AwqTensors};
pub use compressed::{pack_ct, unpack_ct, CtPackedTensors};
pub use convert::{convert, pack_layout, unpack_layout, IntLayout, PackedInt};
pub use error::{IntError, IntResult, MarlinRuleError};
pub use gptq::{pack_gptq, qzeros_v1_to_v2, qzeros_v2_to_v1, unpack_gptq, GptqTensors, GptqZeros};
pub use marlin::{
    marlin_dequantize, marlin_scale_perm, marlin_scale_perm_single, marlin_weight_perm,
    pack_marlin, unpack_marlin, MarlinTensors,
};
pub use marlin_check::{
    check_marlin_shape, marlin_supported_tp, MarlinKind, MarlinShape, Parallel,
};
pub use rtn::{
    dequantize, g_idx_from_i32, quantize, quantize_for_storage, quantize_with_params, Bits,
    Convention, GroupSize, QuantizedInt, RtnConfig, ScaleDtype,
};
