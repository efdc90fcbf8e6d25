//! E8M0 (`float8_e8m0fnu`): a bare biased exponent, value `2^(e − 127)`, `0xFF` = NaN, no zero
//! and no sign. It is the shared block scale of the MX formats.
//!
//! Three producers turn a block's amax into the exponent three different ways; each is a
//! function here, named after its source. With `emax` the exponent of the element format's
//! largest value (2 for E2M1, whose max 6 = 1.5·2², 8 for E4M3, 448 = 1.75·2⁸):
//!
//! | rule | exponent | source |
//! |------|----------|--------|
//! | [`exponent_floor`] | `floor(log2(amax)) − emax + 127`; 0 when amax = 0 | ggml `quantize_row_mxfp4_ref` (formats.md §5.4), OCP MX |
//! | [`exponent_round_pow2`] | amax rounded to a power of two first (up iff its significand ≥ 1.75), then as above | compressed-tensors `generate_mx_scales` (§2.5) |
//! | [`exponent_ceil`] | `ceil(log2(max(amax/elem_max, 2^−127))) + 127`, clamped to [0, 254] | comfy-kitchen `quantize_mxfp8` (§1.3.3) |
//!
//! `floor` can leave the block maximum above the element range (E2M1: amax/2^(e−127) reaches
//! up to 8 > 6, which then saturates); `ceil` never does, at the cost of up to one binade of
//! precision; rounding to a power of two first sits in between.

/// E8M0 code → `2^(e − 127)` (`2^−127` for code 0), NaN for `0xFF`.
#[inline]
pub fn decode(code: u8) -> f32 {
    qtool_formats::codec::e8m0_to_f32(code)
}

/// ggml's rule: `e = amax > 0 ? floor(log2f(amax)) − emax + 127 : 0`.
///
/// `log2f` is rounded to f32 before the floor, as in C (see `log2_f32`). ggml casts the float
/// straight to `uint8_t`, which is undefined below 0 (amax < 2^(emax−127)); we clamp to 0, the
/// smallest scale, there. The result is at most 254 for any finite amax.
pub fn exponent_floor(amax: f32, emax: i32) -> u8 {
    if amax.is_nan() || amax <= 0.0 {
        return 0;
    }
    let e = super::log2_f32(amax).floor() as i32 - emax + 127;
    e.clamp(0, 254) as u8
}

/// compressed-tensors' rule (`generate_mx_scales`): `round_to_power_2(amax)` adds
/// `1 << (mantissa_bits − 2)` to the bit pattern and masks off the mantissa — so the amax is
/// rounded up to the next power of two when its significand is ≥ 1.75 (the top two mantissa
/// bits set) and down otherwise — then `e = 127 + floor(log2(p)) − emax`, which is exact for a
/// power of two. The bf16 and f32 variants give the same result on a bf16 value (the added bit
/// is bit 5 of the bf16 pattern either way), so the weight's dtype does not matter here.
///
/// The exponent goes through `round(clamp(e, 0, 255))` into a `uint8`: amax = 0 gives
/// `log2(0) = −inf` → 0, and an amax that rounds up to 2^128 (≥ 1.75·2^127) gives +inf → 255,
/// E8M0's NaN — compressed-tensors' own behaviour, kept.
pub fn exponent_round_pow2(amax: f32, emax: i32) -> u8 {
    let bits = amax.abs().to_bits();
    let p = (bits + (1 << 21)) & 0xFF80_0000;
    let biased = (p >> 23) as i32; // exponent field of the power of two
    if biased == 0 {
        return 0; // p == 0 (subnormal exponent fields are masked to zero too)
    }
    if biased == 255 {
        return 255;
    }
    (biased - 127 - emax + 127).clamp(0, 255) as u8
}

/// comfy-kitchen's MXFP8 rule: `scale = max(amax / elem_max, 2^−127)` (f32),
/// `e = clamp(ceil(log2(scale)) + 127, 0, 254)`; a zero block gets `e = 0`.
///
/// `log2` is rounded to f32 before the ceil (torch computes it in f32): a scale one or two ulps
/// above `2^k` gives exactly `k`, so that block's maximum lands a hair above `elem_max` and is
/// clamped there by the data cast.
pub fn exponent_ceil(amax: f32, elem_max: f32) -> u8 {
    if amax == 0.0 {
        return 0;
    }
    let needed = (amax / elem_max).max(2f32.powi(-127));
    let e = super::log2_f32(needed).ceil() as i32 + 127;
    e.clamp(0, 254) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_is_a_power_of_two_and_ff_is_nan() {
        assert_eq!(decode(127), 1.0);
        assert_eq!(decode(130), 8.0);
        assert_eq!(decode(0), 2f32.powi(-127));
        assert_eq!(decode(254), 2f32.powi(127));
        assert!(decode(255).is_nan());
    }

    #[test]
    fn floor_rule_matches_ggml_formula() {
        assert_eq!(exponent_floor(6.0, 2), 127); // floor(log2 6) = 2
        assert_eq!(exponent_floor(8.0, 2), 128);
        assert_eq!(exponent_floor(7.99, 2), 127);
        assert_eq!(exponent_floor(0.0, 2), 0);
        assert_eq!(exponent_floor(1e-45, 2), 0, "below 2^-125 clamps");
        // log2(f32::MAX) = 128 − 2^-24·… rounds to 128.0 in f32: ggml's floor then says 128.
        assert_eq!(exponent_floor(f32::MAX, 2), 253);
        // Same effect just below a small power of two: 2^-9·(1 − 2^-24) has f32 log2 = −9.
        assert_eq!(exponent_floor(f32::from_bits(2f32.powi(-9).to_bits() - 1), 2), 116);
    }

    #[test]
    fn round_pow2_rounds_up_from_one_point_seven_five() {
        assert_eq!(exponent_round_pow2(1.0, 2), 125);
        assert_eq!(exponent_round_pow2(1.74, 2), 125);
        assert_eq!(exponent_round_pow2(1.75, 2), 126);
        assert_eq!(exponent_round_pow2(1.9, 2), 126);
        assert_eq!(exponent_round_pow2(0.0, 2), 0);
        assert_eq!(exponent_round_pow2(3.0e38, 2), 255, "rounds up to 2^128: CT writes NaN");
        assert_eq!(exponent_round_pow2(448.0, 8), 128, "448 = 1.75·2^8 rounds up to 2^9");
        assert_eq!(exponent_round_pow2(256.0, 8), 127);
    }

    #[test]
    fn ceil_rule_matches_comfy_kitchen() {
        assert_eq!(exponent_ceil(448.0, 448.0), 127);
        assert_eq!(exponent_ceil(449.0, 448.0), 128);
        assert_eq!(exponent_ceil(224.0, 448.0), 126);
        assert_eq!(exponent_ceil(0.0, 448.0), 0);
        assert_eq!(exponent_ceil(1e-44, 448.0), 0);
        // 2^-10·(1 + 2^-23) needs ceil = -9 mathematically; the f32 log2 is exactly -10.
        let x = f32::from_bits((2f32.powi(-10)).to_bits() + 1);
        assert_eq!(exponent_ceil(x, 1.0), 117);
    }
}
