//! Element codecs: every dtype qtool reads, decoded to `f32`, and `f32` encoded to the float
//! formats qtool writes (F16, BF16, F8_E4M3, F8_E5M2) with round-to-nearest-even.
//!
//! The 8-bit float definitions are ml_dtypes' (`float8_e4m3fn`, `float8_e5m2`,
//! `float8_e4m3fnuz`, `float8_e5m2fnuz`, `float8_e8m0fnu`), which is what PyTorch and the
//! safetensors names `F8_*` mean. `formats/tests/codec_golden.rs` checks every decoder on all its
//! codes and both FP8 encoders on every f16 and every bf16 bit pattern against tables written by
//! ml_dtypes (`fixtures/golden/`), bit for bit.
//!
//! # Decoding
//!
//! [`decode_f32`] turns a little-endian byte slice into `f32`s, one dtype per call, so the inner
//! loop never dispatches per element (8-bit floats go through a 256-entry table built at compile
//! time). Decoding is exact for every float type narrower than `f32` and for integers of at most
//! 24 significant bits. Lossy cases, all rounded to nearest-even as Rust's `as` does:
//! - `F64`: rounded to `f32`; magnitudes beyond `f32::MAX` become ±inf.
//! - `I32`/`U32`/`I64`/`U64`: integers above 2^24 in magnitude lose low bits (a `U64` of
//!   `u64::MAX` decodes to 2^64). Statistics over index tensors are approximate for that reason.
//! - `BOOL`: any non-zero byte is `1.0` (as numpy reads it), zero is `0.0`.
//!
//! NaN codes decode to the canonical quiet NaN with the code's sign bit (`0x7FC0_0000` /
//! `0xFFC0_0000`), as ml_dtypes does; the FNUZ NaN `0x80` has its sign bit set, so it decodes to
//! `0xFFC0_0000`.
//!
//! `F4` is E2M1 (ml_dtypes `float4_e2m1fn`), two elements per byte, the even element in the LOW
//! nibble — PyTorch's `float4_e2m1fn_x2` layout (c10 `Float4_e2m1fn_x2.h`: bits 3..0 hold
//! `val0`), which safetensors' `F4` maps to. `F6_E2M3`/`F6_E3M2` are not decoded: neither
//! safetensors nor any runtime qtool targets fixes how four 6-bit codes share three bytes, and
//! guessing would print plausible wrong numbers. `C64` has no real value. Both give
//! [`CodecError::Unsupported`].
//!
//! # Encoding
//!
//! All encoders round to nearest, ties to even, in one step from the `f32` value (no double
//! rounding). F16 and BF16 follow IEEE 754: overflow becomes ±inf, NaN stays NaN (quiet, sign
//! kept). For the two FP8 formats the caller picks what happens beyond the largest finite value:
//!
//! | input                    | [`Overflow::Cast`] (= ml_dtypes `astype`)      | [`Overflow::Saturate`] |
//! |--------------------------|------------------------------------------------|------------------------|
//! | NaN (either sign)        | e4m3fn `0x7F`/`0xFF`, e5m2 `0x7E`/`0xFE`       | same                   |
//! | ±inf                     | e4m3fn `0x7F`/`0xFF` (NaN), e5m2 `0x7C`/`0xFC` (±inf) | ±max            |
//! | finite, rounds above max | e4m3fn `0x7F`/`0xFF` (NaN), e5m2 `0x7C`/`0xFC` (±inf) | ±max            |
//! | −0.0                     | `0x80`                                         | `0x80`                 |
//!
//! (Codes are positive/negative; the sign of a NaN is kept.)
//!
//! "Rounds above max" is decided after rounding: 464 (the midpoint of 448 and the would-be 480)
//! ties to even and gives 448 in both modes, anything larger overflows. `Cast` reproduces
//! ml_dtypes bit for bit. PyTorch's `.to(torch.float8_*)` does not saturate either (c10
//! `Float8_e4m3fn.h` / `Float8_e5m2.h` @ e9907a34: overflow gives NaN / inf), but writes an e5m2
//! NaN as `0x7F` where ml_dtypes (and qtool) write `0x7E`; both codes are NaN. `Saturate`
//! is what checkpoint quantizers want: ComfyUI and the FP8 scaled recipes clamp to ±max before
//! casting, which is exactly this mode, including an infinite input landing on ±max.

use half::{f16, slice::HalfFloatSliceExt};

use crate::dtype::DType;

/// Why a byte slice could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("dtype {0} cannot be decoded to f32 ({reason})", reason = unsupported_reason(*.0))]
    Unsupported(DType),
    #[error("{dtype}: {bytes} bytes do not hold exactly {elems} elements")]
    Length { dtype: DType, bytes: usize, elems: usize },
}

fn unsupported_reason(dtype: DType) -> &'static str {
    match dtype {
        DType::C64 => "complex values have no single real value",
        DType::F6E2M3 | DType::F6E3M2 => "the packing of 6-bit codes is not specified",
        _ => "no decoder",
    }
}

/// Largest finite `F8_E4M3` (e4m3fn) value.
pub const E4M3FN_MAX: f32 = 448.0;
/// Largest finite `F8_E5M2` value.
pub const E5M2_MAX: f32 = 57344.0;

/// Whether [`decode_f32`] can decode `dtype`.
pub const fn can_decode(dtype: DType) -> bool {
    !matches!(dtype, DType::C64 | DType::F6E2M3 | DType::F6E3M2)
}

/// Decodes `out.len()` elements of `dtype` from little-endian `bytes` into `out`.
///
/// `bytes.len()` must be exactly `dtype.byte_len(out.len())` (so an `F4` slice holds an even
/// number of elements); anything else is a [`CodecError::Length`], never a panic.
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    if !can_decode(dtype) {
        return Err(CodecError::Unsupported(dtype));
    }
    let expected = dtype.byte_len(out.len() as u64);
    if expected != Some(bytes.len() as u64) {
        return Err(CodecError::Length { dtype, bytes: bytes.len(), elems: out.len() });
    }
    match dtype {
        DType::F32 => decode_fixed(bytes, out, |b: [u8; 4]| f32::from_le_bytes(b)),
        DType::F64 => decode_fixed(bytes, out, |b: [u8; 8]| f64::from_le_bytes(b) as f32),
        DType::F16 => decode_f16(bytes, out),
        DType::BF16 => {
            decode_fixed(bytes, out, |b: [u8; 2]| bf16_bits_to_f32(u16::from_le_bytes(b)))
        }
        DType::F8E4M3 => decode_lut(&E4M3FN_LUT, bytes, out),
        DType::F8E5M2 => decode_lut(&E5M2_LUT, bytes, out),
        DType::F8E4M3Fnuz => decode_lut(&E4M3FNUZ_LUT, bytes, out),
        DType::F8E5M2Fnuz => decode_lut(&E5M2FNUZ_LUT, bytes, out),
        DType::F8E8M0 => decode_lut(&E8M0_LUT, bytes, out),
        DType::F4 => decode_f4(bytes, out),
        DType::Bool => decode_fixed(bytes, out, |b: [u8; 1]| if b[0] != 0 { 1.0 } else { 0.0 }),
        DType::U8 => decode_fixed(bytes, out, |b: [u8; 1]| b[0] as f32),
        DType::I8 => decode_fixed(bytes, out, |b: [u8; 1]| b[0] as i8 as f32),
        DType::I16 => decode_fixed(bytes, out, |b: [u8; 2]| i16::from_le_bytes(b) as f32),
        DType::U16 => decode_fixed(bytes, out, |b: [u8; 2]| u16::from_le_bytes(b) as f32),
        DType::I32 => decode_fixed(bytes, out, |b: [u8; 4]| i32::from_le_bytes(b) as f32),
        DType::U32 => decode_fixed(bytes, out, |b: [u8; 4]| u32::from_le_bytes(b) as f32),
        DType::I64 => decode_fixed(bytes, out, |b: [u8; 8]| i64::from_le_bytes(b) as f32),
        DType::U64 => decode_fixed(bytes, out, |b: [u8; 8]| u64::from_le_bytes(b) as f32),
        DType::C64 | DType::F6E2M3 | DType::F6E3M2 => unreachable!("rejected by can_decode"),
    }
    Ok(())
}

/// One element per `N` bytes; monomorphised per dtype so the loop body is a single conversion
/// the compiler can vectorise.
#[inline(always)]
fn decode_fixed<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        *o = f(b.try_into().expect("chunks_exact yields N bytes"));
    }
}

#[inline(always)]
fn decode_lut(lut: &[f32; 256], bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = lut[b as usize];
    }
}

/// Goes through a small aligned buffer because mmap'd tensor data need not be 2-byte aligned,
/// and `half`'s slice conversion (F16C when the CPU has it) wants `&[f16]`.
fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    const STEP: usize = 256;
    let mut buf = [f16::ZERO; STEP];
    for (o, b) in out.chunks_mut(STEP).zip(bytes.chunks(2 * STEP)) {
        let buf = &mut buf[..o.len()];
        for (h, pair) in buf.iter_mut().zip(b.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([pair[0], pair[1]]));
        }
        buf.convert_to_f32_slice(o);
    }
}

fn decode_f4(bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
        o[0] = E2M1_LUT[(b & 0x0F) as usize];
        o[1] = E2M1_LUT[(b >> 4) as usize];
    }
}

#[inline(always)]
fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

// ---------------------------------------------------------------------------------------------
// Small-float code tables, computed at compile time from each format's definition.

/// How a format spends its top codes.
#[derive(Clone, Copy)]
enum Specials {
    /// IEEE 754 style: exponent all ones is inf (mantissa 0) or NaN.
    Ieee,
    /// "fn": no inf; only exponent and mantissa all ones is NaN.
    Fn,
    /// "fnuz": no inf, no −0; the negative-zero code 0x80 is the only NaN.
    Fnuz,
    /// No NaN or inf (E2M1).
    None,
}

const F32_QNAN: u32 = 0x7FC0_0000;

/// `2^k` for `-149 <= k <= 127`.
const fn pow2(k: i32) -> f32 {
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (k + 149))
    }
}

/// The value of `code` in a sign/exponent/mantissa format with `e` exponent and `m` mantissa
/// bits (`1 + e + m` bits in all).
const fn small_float(code: u32, e: u32, m: u32, bias: i32, specials: Specials) -> f32 {
    let sign_bit = 1u32 << (e + m);
    let negative = code & sign_bit != 0;
    let exp = (code >> m) & ((1 << e) - 1);
    let man = code & ((1 << m) - 1);
    let exp_max = (1 << e) - 1;
    let nan = match specials {
        Specials::Ieee => exp == exp_max && man != 0,
        Specials::Fn => exp == exp_max && man == (1 << m) - 1,
        Specials::Fnuz => code == sign_bit,
        Specials::None => false,
    };
    if nan {
        return f32::from_bits(F32_QNAN | if negative { 0x8000_0000 } else { 0 });
    }
    let magnitude = if matches!(specials, Specials::Ieee) && exp == exp_max {
        f32::INFINITY
    } else if exp == 0 {
        man as f32 * pow2(1 - bias - m as i32)
    } else {
        (man + (1 << m)) as f32 * pow2(exp as i32 - bias - m as i32)
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

const fn lut8(e: u32, m: u32, bias: i32, specials: Specials) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = small_float(i as u32, e, m, bias, specials);
        i += 1;
    }
    t
}

const fn e8m0_lut() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 255 {
        t[i] = pow2(i as i32 - 127);
        i += 1;
    }
    t[255] = f32::from_bits(F32_QNAN);
    t
}

const fn e2m1_lut() -> [f32; 16] {
    let mut t = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = small_float(i as u32, 2, 1, 1, Specials::None);
        i += 1;
    }
    t
}

static E4M3FN_LUT: [f32; 256] = lut8(4, 3, 7, Specials::Fn);
static E5M2_LUT: [f32; 256] = lut8(5, 2, 15, Specials::Ieee);
static E4M3FNUZ_LUT: [f32; 256] = lut8(4, 3, 8, Specials::Fnuz);
static E5M2FNUZ_LUT: [f32; 256] = lut8(5, 2, 16, Specials::Fnuz);
static E8M0_LUT: [f32; 256] = e8m0_lut();
static E2M1_LUT: [f32; 16] = e2m1_lut();

/// `F8_E4M3` (e4m3fn) code → value.
#[inline]
pub fn e4m3fn_to_f32(code: u8) -> f32 {
    E4M3FN_LUT[code as usize]
}

/// `F8_E5M2` code → value.
#[inline]
pub fn e5m2_to_f32(code: u8) -> f32 {
    E5M2_LUT[code as usize]
}

/// `F8_E4M3FNUZ` code → value.
#[inline]
pub fn e4m3fnuz_to_f32(code: u8) -> f32 {
    E4M3FNUZ_LUT[code as usize]
}

/// `F8_E5M2FNUZ` code → value.
#[inline]
pub fn e5m2fnuz_to_f32(code: u8) -> f32 {
    E5M2FNUZ_LUT[code as usize]
}

/// `F8_E8M0` (e8m0fnu) code → `2^(code-127)`, NaN for `0xFF`.
#[inline]
pub fn e8m0_to_f32(code: u8) -> f32 {
    E8M0_LUT[code as usize]
}

/// E2M1 (`float4_e2m1fn`) code in the low 4 bits → value; the high bits are ignored.
#[inline]
pub fn e2m1_to_f32(code: u8) -> f32 {
    E2M1_LUT[(code & 0x0F) as usize]
}

// ---------------------------------------------------------------------------------------------
// Encoders.

/// The FP8 formats qtool writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    /// `F8_E4M3` (`float8_e4m3fn`): bias 7, max 448, no inf, `0x7F`/`0xFF` NaN.
    E4M3Fn,
    /// `F8_E5M2`: bias 15, max 57344, IEEE inf and NaN.
    E5M2,
}

impl Fp8Format {
    pub const fn dtype(self) -> DType {
        match self {
            Fp8Format::E4M3Fn => DType::F8E4M3,
            Fp8Format::E5M2 => DType::F8E5M2,
        }
    }

    /// Largest finite value.
    pub const fn max(self) -> f32 {
        match self {
            Fp8Format::E4M3Fn => E4M3FN_MAX,
            Fp8Format::E5M2 => E5M2_MAX,
        }
    }

    /// Decodes one code of this format.
    #[inline]
    pub fn decode(self, code: u8) -> f32 {
        match self {
            Fp8Format::E4M3Fn => e4m3fn_to_f32(code),
            Fp8Format::E5M2 => e5m2_to_f32(code),
        }
    }

    /// Encodes one value (see the module doc for the rules).
    #[inline]
    pub fn encode(self, x: f32, overflow: Overflow) -> u8 {
        match self {
            Fp8Format::E4M3Fn => f32_to_e4m3fn(x, overflow),
            Fp8Format::E5M2 => f32_to_e5m2(x, overflow),
        }
    }
}

/// What an FP8 encoder does with values beyond the format's largest finite value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// ml_dtypes' `astype`: e4m3fn overflows to NaN, e5m2 to inf.
    Cast,
    /// Clamp to ±max (infinities included); NaN stays NaN.
    Saturate,
}

/// The parameters of one FP8 target, so a single rounding routine serves both formats.
struct Fp8Spec {
    man_bits: u32,
    bias: i32,
    max_code: u32,
    nan_code: u8,
    /// Code for ±inf and overflow under [`Overflow::Cast`].
    cast_overflow_code: u8,
}

const E4M3FN_SPEC: Fp8Spec =
    Fp8Spec { man_bits: 3, bias: 7, max_code: 0x7E, nan_code: 0x7F, cast_overflow_code: 0x7F };
const E5M2_SPEC: Fp8Spec =
    Fp8Spec { man_bits: 2, bias: 15, max_code: 0x7B, nan_code: 0x7E, cast_overflow_code: 0x7C };

#[inline(always)]
fn f32_to_fp8(x: f32, spec: &Fp8Spec, overflow: Overflow) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    let overflow_code = match overflow {
        Overflow::Cast => spec.cast_overflow_code,
        Overflow::Saturate => spec.max_code as u8,
    };
    if abs > 0x7F80_0000 {
        return sign | spec.nan_code;
    }
    if abs == 0x7F80_0000 {
        return sign | overflow_code;
    }
    let exp = (abs >> 23) as i32;
    // f32 biased exponent of the target's smallest normal, 2^(1 - bias).
    let min_normal_exp = 128 - spec.bias;
    let magnitude = if exp >= min_normal_exp {
        // Re-bias in place: the f32 bits become the target's exponent/mantissa with 23 - m extra
        // mantissa bits, and rounding them off may carry into the exponent, as it should.
        let shift = 23 - spec.man_bits;
        let v = abs - (((127 - spec.bias) as u32) << 23);
        let rounded = v + ((1 << (shift - 1)) - 1) + ((v >> shift) & 1);
        rounded >> shift
    } else {
        // Subnormal target: the code is round(|x| / 2^(1 - bias - m)). f32 subnormals are far
        // below half the smallest FP8 subnormal and fall into the `shift > 24` branch.
        let shift = (151 - spec.bias - spec.man_bits as i32 - exp) as u32;
        if shift > 24 {
            0
        } else {
            let mant = (abs & 0x007F_FFFF) | 0x0080_0000;
            let q = mant >> shift;
            let rem = mant & ((1 << shift) - 1);
            let half = 1 << (shift - 1);
            q + u32::from(rem > half || (rem == half && q & 1 == 1))
        }
    };
    if magnitude > spec.max_code {
        sign | overflow_code
    } else {
        sign | magnitude as u8
    }
}

/// `f32` → `F8_E4M3` (e4m3fn), round to nearest even.
#[inline]
pub fn f32_to_e4m3fn(x: f32, overflow: Overflow) -> u8 {
    f32_to_fp8(x, &E4M3FN_SPEC, overflow)
}

/// `f32` → `F8_E5M2`, round to nearest even.
#[inline]
pub fn f32_to_e5m2(x: f32, overflow: Overflow) -> u8 {
    f32_to_fp8(x, &E5M2_SPEC, overflow)
}

/// Encodes `src` into FP8 codes.
///
/// # Panics
/// If `out.len() != src.len()` (a caller bug, not bad input).
pub fn encode_fp8(format: Fp8Format, overflow: Overflow, src: &[f32], out: &mut [u8]) {
    assert_eq!(src.len(), out.len(), "encode_fp8: one output byte per element");
    let spec = match format {
        Fp8Format::E4M3Fn => &E4M3FN_SPEC,
        Fp8Format::E5M2 => &E5M2_SPEC,
    };
    for (o, &x) in out.iter_mut().zip(src) {
        *o = f32_to_fp8(x, spec, overflow);
    }
}

/// Encodes `src` as little-endian IEEE half floats (`F16`).
///
/// # Panics
/// If `out.len() != 2 * src.len()`.
pub fn encode_f16(src: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), 2 * src.len(), "encode_f16: two output bytes per element");
    const STEP: usize = 256;
    let mut buf = [f16::ZERO; STEP];
    for (s, o) in src.chunks(STEP).zip(out.chunks_mut(2 * STEP)) {
        let buf = &mut buf[..s.len()];
        buf.convert_from_f32_slice(s);
        for (h, pair) in buf.iter().zip(o.chunks_exact_mut(2)) {
            pair.copy_from_slice(&h.to_bits().to_le_bytes());
        }
    }
}

/// Encodes `src` as little-endian bfloat16 (`BF16`).
///
/// # Panics
/// If `out.len() != 2 * src.len()`.
pub fn encode_bf16(src: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), 2 * src.len(), "encode_bf16: two output bytes per element");
    for (&x, pair) in src.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_vec(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        decode_f32(dtype, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn plain_floats_decode_exactly() {
        let f32s = [1.5f32, -0.0, f32::INFINITY, 3.4e38, 1e-45];
        let bytes: Vec<u8> = f32s.iter().flat_map(|x| x.to_le_bytes()).collect();
        let got = decode_vec(DType::F32, &bytes, 5);
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), f32s.map(f32::to_bits));

        let f64s = [0.1f64, -2.5, 1e300, f64::NEG_INFINITY];
        let bytes: Vec<u8> = f64s.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            decode_vec(DType::F64, &bytes, 4),
            [0.1f32, -2.5, f32::INFINITY, f32::NEG_INFINITY]
        );

        // F16 and BF16: every bit pattern decodes to the value `half` defines (NaN stays NaN).
        for bits in 0..=u16::MAX {
            let b = bits.to_le_bytes();
            let h = decode_vec(DType::F16, &b, 1)[0];
            let want = f16::from_bits(bits).to_f32();
            assert!(
                h.to_bits() == want.to_bits() || (h.is_nan() && want.is_nan()),
                "f16 {bits:#06x}"
            );
            let bf = decode_vec(DType::BF16, &b, 1)[0];
            assert_eq!(bf.to_bits(), u32::from(bits) << 16, "bf16 {bits:#06x}");
        }
    }

    #[test]
    fn f16_decode_handles_long_unaligned_slices() {
        let vals: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 100.0).collect();
        let mut bytes = vec![0u8; 1 + 2 * vals.len()];
        encode_f16(&vals, &mut bytes[1..]);
        assert_eq!(decode_vec(DType::F16, &bytes[1..], vals.len()), vals);
    }

    #[test]
    fn integers_and_bool() {
        assert_eq!(decode_vec(DType::I8, &[0x80, 0x7F, 0xFF], 3), [-128.0, 127.0, -1.0]);
        assert_eq!(decode_vec(DType::U8, &[0x80, 0xFF], 2), [128.0, 255.0]);
        assert_eq!(decode_vec(DType::Bool, &[0, 1, 2], 3), [0.0, 1.0, 1.0]);
        assert_eq!(decode_vec(DType::I16, &(-300i16).to_le_bytes(), 1), [-300.0]);
        assert_eq!(decode_vec(DType::U16, &65535u16.to_le_bytes(), 1), [65535.0]);
        assert_eq!(decode_vec(DType::I32, &(-7i32).to_le_bytes(), 1), [-7.0]);
        assert_eq!(decode_vec(DType::U32, &u32::MAX.to_le_bytes(), 1), [4294967296.0]);
        // 2^24 + 1 is the first integer f32 cannot hold: it rounds to even (2^24).
        assert_eq!(decode_vec(DType::I64, &(16_777_217i64).to_le_bytes(), 1), [16_777_216.0]);
        assert_eq!(decode_vec(DType::U64, &u64::MAX.to_le_bytes(), 1), [18446744073709551616.0]);
    }

    #[test]
    fn f4_even_element_is_the_low_nibble() {
        // 0x71: low nibble 1 (0.5) is element 0, high nibble 7 (6.0) element 1.
        assert_eq!(decode_vec(DType::F4, &[0x71, 0xF8], 4), [0.5, 6.0, -0.0, -6.0]);
        assert!(decode_vec(DType::F4, &[0x08], 2)[0].is_sign_negative());
    }

    #[test]
    fn e8m0_is_a_power_of_two() {
        assert_eq!(decode_vec(DType::F8E8M0, &[127, 0, 254], 3), [1.0, pow2(-127), pow2(127)]);
        assert!(e8m0_to_f32(255).is_nan());
    }

    #[test]
    fn fnuz_has_one_nan_and_no_negative_zero() {
        for code in 0..=255u8 {
            assert_eq!(e4m3fnuz_to_f32(code).is_nan(), code == 0x80);
            assert_eq!(e5m2fnuz_to_f32(code).is_nan(), code == 0x80);
            assert!(!e4m3fnuz_to_f32(code).is_infinite() && !e5m2fnuz_to_f32(code).is_infinite());
        }
        assert_eq!(e4m3fnuz_to_f32(0x7F), 240.0);
        assert_eq!(e5m2fnuz_to_f32(0x7F), 57344.0);
    }

    #[test]
    fn unsupported_and_bad_lengths_are_errors() {
        let mut out = [0.0f32; 2];
        for d in [DType::C64, DType::F6E2M3, DType::F6E3M2] {
            assert_eq!(decode_f32(d, &[0; 16], &mut out), Err(CodecError::Unsupported(d)));
        }
        assert_eq!(
            decode_f32(DType::F32, &[0; 7], &mut out),
            Err(CodecError::Length { dtype: DType::F32, bytes: 7, elems: 2 })
        );
        let mut three = [0.0f32; 3];
        assert!(matches!(
            decode_f32(DType::F4, &[0; 2], &mut three),
            Err(CodecError::Length { .. })
        ));
        assert!(CodecError::Unsupported(DType::C64).to_string().contains("C64"));
    }

    #[test]
    fn fp8_encoder_edges() {
        use Overflow::*;
        assert_eq!(f32_to_e4m3fn(448.0, Cast), 0x7E);
        assert_eq!(f32_to_e4m3fn(464.0, Cast), 0x7E, "tie rounds to even 448");
        assert_eq!(f32_to_e4m3fn(464.1, Cast), 0x7F, "rounds to 480: NaN");
        assert_eq!(f32_to_e4m3fn(-464.1, Saturate), 0xFE);
        assert_eq!(f32_to_e4m3fn(f32::INFINITY, Cast), 0x7F);
        assert_eq!(f32_to_e4m3fn(f32::NEG_INFINITY, Saturate), 0xFE);
        assert_eq!(f32_to_e4m3fn(-f32::NAN, Saturate), 0xFF);
        assert_eq!(f32_to_e4m3fn(-0.0, Cast), 0x80);
        // Smallest subnormal 2^-9; half of it ties to zero, just above rounds up.
        assert_eq!(f32_to_e4m3fn(pow2(-9), Cast), 0x01);
        assert_eq!(f32_to_e4m3fn(pow2(-10), Cast), 0x00);
        assert_eq!(f32_to_e4m3fn(f32::from_bits(pow2(-10).to_bits() + 1), Cast), 0x01);
        assert_eq!(f32_to_e4m3fn(1.5 * pow2(-9), Cast), 0x02, "tie 1.5 → 2");
        assert_eq!(f32_to_e5m2(61440.0, Cast), 0x7C, "tie rounds to even = 2^16 = inf");
        assert_eq!(f32_to_e5m2(61440.0, Saturate), 0x7B);
        assert_eq!(f32_to_e5m2(f32::NEG_INFINITY, Cast), 0xFC);
        assert_eq!(f32_to_e5m2(f32::NAN, Cast), 0x7E);
        assert_eq!(f32_to_e5m2(f32::MAX, Saturate), 0x7B);
        assert_eq!(f32_to_e5m2(f32::from_bits(1), Cast), 0x00);
    }

    #[test]
    fn fp8_round_trips_every_finite_code() {
        for f in [Fp8Format::E4M3Fn, Fp8Format::E5M2] {
            for code in 0..=255u8 {
                let v = f.decode(code);
                if v.is_finite() {
                    assert_eq!(f.encode(v, Overflow::Cast), code, "{f:?} {code:#04x}");
                    assert_eq!(f.encode(v, Overflow::Saturate), code, "{f:?} {code:#04x}");
                }
            }
            assert_eq!(f.decode(f.encode(f.max(), Overflow::Cast)), f.max());
        }
    }

    #[test]
    fn f16_bf16_encoders_round_trip_and_round_to_even() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let mut out = [0u8; 2];
            encode_f16(&[h.to_f32()], &mut out);
            let back = u16::from_le_bytes(out);
            assert!(back == bits || (h.is_nan() && f16::from_bits(back).is_nan()), "{bits:#06x}");
            let b = half::bf16::from_bits(bits);
            encode_bf16(&[b.to_f32()], &mut out);
            let back = u16::from_le_bytes(out);
            assert!(back == bits || (b.is_nan() && half::bf16::from_bits(back).is_nan()));
        }
        let mut out = [0u8; 4];
        // 1 + 2^-11 is the midpoint of 1 and 1 + 2^-10: ties to even (1.0); 65520 overflows.
        encode_f16(&[1.0 + pow2(-11), 65520.0], &mut out);
        assert_eq!(out, [0x00, 0x3C, 0x00, 0x7C]);
        // bf16 midpoint of 1 and 1 + 2^-7 → 1.0; of 1 + 2^-7 and 1 + 2^-6 → 1 + 2^-6.
        encode_bf16(&[1.0 + pow2(-8), 1.0 + 3.0 * pow2(-8)], &mut out);
        assert_eq!(out, [0x80, 0x3F, 0x82, 0x3F]);
    }
}
