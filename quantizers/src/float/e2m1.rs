//! E2M1 (FP4, `float4_e2m1fn`): one sign bit, two exponent bits, one mantissa bit, no inf/NaN.
//! Codes `s|eem`: magnitudes `0, 0.5, 1, 1.5, 2, 3, 4, 6` (formats.md §5.1; MO `e2m1_values`,
//! CT `kE2M1ToFloat`, CK `E2M1_LUT`).
//!
//! # Rounding
//!
//! ModelOpt's `_cast_fp4` (formats.md §5.1) takes `ord = searchsorted(bounds, |x|)` (left) with
//! `bounds = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5]` — the midpoints between neighbouring values —
//! and adds 1 when `|x|` equals `bounds[1]`, `bounds[3]` or `bounds[5]`. Worked through every
//! tie point (left searchsorted counts the bounds strictly below `|x|`):
//!
//! | tie `|x|` | between | `ord` | +1? | code | result | even code? |
//! |-----------|---------|-------|-----|------|--------|------------|
//! | 0.25      | 0 / 0.5   | 0 | no  | 0 | 0   | yes |
//! | 0.75      | 0.5 / 1   | 1 | yes | 2 | 1   | yes |
//! | 1.25      | 1 / 1.5   | 2 | no  | 2 | 1   | yes |
//! | 1.75      | 1.5 / 2   | 3 | yes | 4 | 2   | yes |
//! | 2.5       | 2 / 3     | 4 | no  | 4 | 2   | yes |
//! | 3.5       | 3 / 4     | 5 | yes | 6 | 4   | yes |
//! | 5         | 4 / 6     | 6 | no  | 6 | 4   | yes |
//!
//! Every tie lands on the even code: it is exactly round-to-nearest-even, the rule of ml_dtypes'
//! `astype(float4_e2m1fn)`, torchao's `_f32_to_floatx_unpacked` (used by comfy-kitchen) and
//! compressed-tensors' `cast_to_fp4` (its tie rule is marked UNCONFIRMED in formats.md §10; the
//! interval form read in vLLM's reference, `0.75 ≤ x ≤ 1.25 → 1` etc., is RNE too). Magnitudes
//! above 5 give 6: the cast saturates, no producer overflows.
//!
//! The producers differ in one place only, the sign of a result that rounds to zero:
//! - [`encode`] takes the sign bit (`signbit`): `-0.0 → 0x8`, `-0.1 → 0x8`. This is ml_dtypes and
//!   torchao/comfy-kitchen.
//! - [`encode_lt0`] takes `x < 0`: `-0.0 → 0x0`, `-0.1 → 0x8`. This is ModelOpt
//!   (`sign_bit = (weight < 0)`) and compressed-tensors (`cast_to_fp4` multiplies by `sign(x)`,
//!   and `sign(-0.0) = 0`).
//!
//! Both decode to the same number; the byte differs, so a byte-exact writer must pick the right
//! one. NaN has no E2M1 code: [`encode`] gives a zero of NaN's sign bit; [`encode_lt0`] gives
//! code 7 (+6), what ModelOpt's `searchsorted` makes of it.

/// Largest E2M1 magnitude.
pub const MAX: f32 = 6.0;

/// Value of every 4-bit code (code 8 is −0.0).
pub const VALUES: [f32; 16] =
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// The 3-bit magnitude code of `|x|`, round-to-nearest-even, saturating (table in the module doc).
#[inline]
fn magnitude(a: f32) -> u8 {
    // The number of rounding boundaries below `a` (ties at 0.25, 1.25, 2.5 and 5 go down, at
    // 0.75, 1.75 and 3.5 up: to the even code). NaN compares false everywhere → 0. Written as a
    // sum of comparisons, without branches, so block loops vectorize.
    u8::from(a > 0.25)
        + u8::from(a >= 0.75)
        + u8::from(a > 1.25)
        + u8::from(a >= 1.75)
        + u8::from(a > 2.5)
        + u8::from(a >= 3.5)
        + u8::from(a > 5.0)
}

/// `f32` → E2M1 code, sign from the sign bit (ml_dtypes, torchao, comfy-kitchen).
#[inline]
pub fn encode(x: f32) -> u8 {
    (((x.to_bits() >> 31) as u8) << 3) | magnitude(x.abs())
}

/// `f32` → E2M1 code, sign from `x < 0` (ModelOpt `_cast_fp4`, compressed-tensors
/// `cast_to_fp4`): identical to [`encode`] except that `-0.0` gives code 0.
#[inline]
pub fn encode_lt0(x: f32) -> u8 {
    if x.is_nan() {
        // `NaN < 0` is false, and `searchsorted` (numpy's and torch's lower bound) places NaN
        // past every bound: ModelOpt writes +6. This is what a 0/0 in a block whose E4M3 scale
        // rounded to zero produces.
        return 7;
    }
    (u8::from(x < 0.0) << 3) | magnitude(x.abs())
}

/// E2M1 code (low 4 bits) → value.
#[inline]
pub fn decode(code: u8) -> f32 {
    VALUES[(code & 0x0F) as usize]
}

/// Which element of a pair goes into the low nibble of a packed byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NibbleOrder {
    /// Element `2i` in bits 3..0 (ModelOpt, compressed-tensors, vLLM, torch `float4_e2m1fn_x2`).
    EvenLow,
    /// Element `2i` in bits 7..4 (comfy-kitchen `pack_uint4(hi_first=True)`, ComfyUI).
    EvenHigh,
}

/// Packs 4-bit codes two per byte. An odd count leaves the last byte's second nibble zero.
pub fn pack(codes: &[u8], order: NibbleOrder) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| {
            let (a, b) = (p[0] & 0x0F, p.get(1).map_or(0, |b| b & 0x0F));
            match order {
                NibbleOrder::EvenLow => a | (b << 4),
                NibbleOrder::EvenHigh => (a << 4) | b,
            }
        })
        .collect()
}

/// Unpacks bytes into two codes each, in element order.
pub fn unpack(packed: &[u8], order: NibbleOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() * 2);
    for &b in packed {
        let (lo, hi) = (b & 0x0F, b >> 4);
        match order {
            NibbleOrder::EvenLow => out.extend([lo, hi]),
            NibbleOrder::EvenHigh => out.extend([hi, lo]),
        }
    }
    out
}

/// Converts between the two nibble orders (its own inverse).
pub fn swap_nibbles(packed: &mut [u8]) {
    for b in packed {
        *b = b.rotate_left(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tie_goes_to_the_even_code() {
        let ties = [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6)];
        for (x, code) in ties {
            assert_eq!(encode(x), code, "tie {x}");
            assert_eq!(encode(-x), code | 8, "tie -{x}");
            assert_eq!(code % 2, 0);
        }
    }

    #[test]
    fn just_off_the_ties_round_to_the_nearer_value() {
        for (tie, below, above) in [
            (0.25, 0, 1),
            (0.75, 1, 2),
            (1.25, 2, 3),
            (1.75, 3, 4),
            (2.5, 4, 5),
            (3.5, 5, 6),
            (5.0, 6, 7),
        ] {
            let t: f32 = tie;
            assert_eq!(encode(f32::from_bits(t.to_bits() - 1)), below, "below {tie}");
            assert_eq!(encode(f32::from_bits(t.to_bits() + 1)), above, "above {tie}");
        }
    }

    #[test]
    fn exact_values_round_trip_and_large_values_saturate() {
        for code in 0..16u8 {
            assert_eq!(encode(decode(code)), code);
        }
        assert_eq!(encode(6.5), 7);
        assert_eq!(encode(1e30), 7);
        assert_eq!(encode(f32::NEG_INFINITY), 15);
        assert_eq!(encode_lt0(f32::INFINITY), 7);
    }

    #[test]
    fn negative_zero_is_where_the_producers_differ() {
        assert_eq!(encode(-0.0), 8);
        assert_eq!(encode_lt0(-0.0), 0);
        assert_eq!(encode(-0.1), 8);
        assert_eq!(encode_lt0(-0.1), 8);
        assert_eq!(encode(f32::NAN), 0);
        assert_eq!(encode(-f32::NAN), 8);
        assert_eq!(encode_lt0(-f32::NAN), 7);
    }

    #[test]
    fn nibble_orders_pack_unpack_and_swap() {
        let codes = [1u8, 2, 3, 4, 15, 0];
        let lo = pack(&codes, NibbleOrder::EvenLow);
        let hi = pack(&codes, NibbleOrder::EvenHigh);
        assert_eq!(lo, [0x21, 0x43, 0x0F]);
        assert_eq!(hi, [0x12, 0x34, 0xF0]);
        assert_eq!(unpack(&lo, NibbleOrder::EvenLow), codes);
        assert_eq!(unpack(&hi, NibbleOrder::EvenHigh), codes);
        let mut s = lo.clone();
        swap_nibbles(&mut s);
        assert_eq!(s, hi);
        swap_nibbles(&mut s);
        assert_eq!(s, lo);
    }

    #[test]
    fn decode_matches_the_shared_codec() {
        for code in 0..16u8 {
            assert_eq!(decode(code).to_bits(), qtool_formats::codec::e2m1_to_f32(code).to_bits());
        }
    }
}
