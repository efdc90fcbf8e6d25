//! Conversions between the three int4 checkpoint layouts for the same quantization.
//!
//! Every conversion goes through [`QuantizedInt`], so a conversion is lossless exactly when the
//! target can hold the source's codes, scales, zeros and group map:
//!
//! | from \ to | GPTQ v2 | GPTQ v1 | AWQ | CT pack-quantized | GPTQ-Marlin |
//! |---|---|---|---|---|---|
//! | GPTQ sym | ✓ | ✓ | ✓ (4-bit, no act-order; zeros written as 8) | ✓ (no zero point) | ✓ |
//! | GPTQ asym | ✓ | ✓ unless a zero is 0 | ✓ (4-bit, no act-order) | ✓ (zero point packed along N) | ✗ symmetric only (use AWQ-Marlin) |
//! | AWQ | ✓ | ✓ unless a zero is 0 | — | ✓ asymmetric | ✗ (AWQ zeros are free; AWQ-Marlin) |
//! | CT sym | ✓ | ✓ | ✓ (4-bit, no act-order) | — | ✓ |
//! | CT asym | ✓ | ✓ unless a zero is 0 | ✓ (4-bit, no act-order) | — | ✗ |
//!
//! Scales are carried as f32; a file stores them as fp16/bf16, which the exporter rounds
//! (identically for every layout, so the conversion itself adds no loss). What the *quantizers*
//! would have chosen differs between conventions (GPTQ sym `2·amax/15` vs CT `amax/7.5`), but a
//! conversion moves an existing quantization, it does not requantize.

use super::awq::{pack_awq, unpack_awq, AwqTensors};
use super::compressed::{pack_ct, unpack_ct, CtPackedTensors};
use super::error::{IntError, IntResult};
use super::gptq::{pack_gptq, unpack_gptq, GptqTensors, GptqZeros};
use super::pack::transpose;
use super::rtn::{check_len, Bits, GroupSize, QuantizedInt};

/// A target layout for [`pack_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntLayout {
    Gptq(GptqZeros),
    Awq,
    CompressedTensors,
}

/// Tensors of one layer in any of the three layouts.
#[derive(Debug, Clone, PartialEq)]
pub enum PackedInt {
    Gptq(GptqTensors),
    Awq(AwqTensors),
    CompressedTensors(CtPackedTensors),
}

pub fn pack_layout(q: &QuantizedInt, layout: IntLayout) -> IntResult<PackedInt> {
    Ok(match layout {
        IntLayout::Gptq(z) => PackedInt::Gptq(pack_gptq(q, z)?),
        IntLayout::Awq => PackedInt::Awq(pack_awq(q)?),
        IntLayout::CompressedTensors => PackedInt::CompressedTensors(pack_ct(q)?),
    })
}

/// Reads any layout back. `symmetric` is the GPTQ config's `sym` (AWQ is always asymmetric;
/// compressed-tensors is symmetric exactly when it has no zero point).
pub fn unpack_layout(
    p: &PackedInt,
    group_size: GroupSize,
    symmetric: bool,
) -> IntResult<QuantizedInt> {
    match p {
        PackedInt::Gptq(t) => unpack_gptq(t, group_size, symmetric),
        PackedInt::Awq(t) => unpack_awq(t, group_size),
        PackedInt::CompressedTensors(t) => unpack_ct(t, group_size),
    }
}

/// Moves one layer from its layout to `target`; fails with the reason where the target cannot
/// hold it (see the module table).
pub fn convert(
    p: &PackedInt,
    group_size: GroupSize,
    symmetric: bool,
    target: IntLayout,
) -> IntResult<PackedInt> {
    pack_layout(&unpack_layout(p, group_size, symmetric)?, target)
}

/// compressed-tensors `weight_packed` `[N, K/pf]` to GPTQ `qweight` `[K/pf, N]` by moving whole
/// words (formats.md §4.5: `weight_packed.t()` is `qweight`); the path vLLM takes before
/// `gptq_marlin_repack`.
pub fn ct_weight_packed_to_gptq_qweight(
    weight_packed: &[i32],
    n: usize,
    k: usize,
    bits: Bits,
) -> IntResult<Vec<i32>> {
    let pf = bits.per_word();
    if k % pf != 0 {
        return Err(IntError::NotMultiple {
            format: "GPTQ qweight",
            dim: "K",
            value: k,
            multiple: pf,
        });
    }
    check_len("weight_packed", n, k / pf, weight_packed.len())?;
    Ok(transpose(weight_packed, n, k / pf))
}
