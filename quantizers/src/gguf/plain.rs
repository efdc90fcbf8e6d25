//! The plain (one element per "block") GGML types, so that [`super::dequantize`] is the one
//! entry point for every tensor of a GGUF file.
//!
//! Decoding widens or narrows to f32 (F64 and the wide integers round to nearest, as `as f32`
//! does). Encoding exists for F32, F16 and BF16 only, matching ggml's reference conversions:
//! F16 round-to-nearest-even with a canonical NaN, BF16 round-to-nearest-even with quieted NaN.

use qtool_formats::GgmlType;

use super::common::{bf16_to_f32, f32_to_bf16, f32_to_fp16, fp16_to_f32};

pub(super) fn can_decode(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::F64
            | GgmlType::I8
            | GgmlType::I16
            | GgmlType::I32
            | GgmlType::I64
    )
}

pub(super) fn can_encode(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Converts `N`-byte little-endian elements with `f`.
fn widen<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        // chunks_exact yields exactly N bytes.
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        *o = f(a);
    }
}

/// F16 to f32 through `half`'s slice conversion, which uses the F16C instructions when the CPU
/// has them (detected at run time): eight values per instruction instead of one call each. The
/// conversion is exact either way; bytes that are not 2-byte aligned take the element path.
fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
        Ok(halves) => halves.convert_to_f32_slice(out),
        Err(_) => widen(bytes, out, fp16_to_f32),
    }
}

/// Lengths are checked by the caller (`bytes.len() == out.len() * type_size`).
pub(super) fn decode(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => widen(bytes, out, f32::from_le_bytes),
        GgmlType::F16 => decode_f16(bytes, out),
        GgmlType::BF16 => widen(bytes, out, |b| bf16_to_f32(u16::from_le_bytes(b))),
        GgmlType::F64 => widen(bytes, out, |b| f64::from_le_bytes(b) as f32),
        GgmlType::I8 => widen(bytes, out, |b: [u8; 1]| b[0] as i8 as f32),
        GgmlType::I16 => widen(bytes, out, |b| i16::from_le_bytes(b) as f32),
        GgmlType::I32 => widen(bytes, out, |b| i32::from_le_bytes(b) as f32),
        GgmlType::I64 => widen(bytes, out, |b| i64::from_le_bytes(b) as f32),
        _ => unreachable!("can_decode({ty}) is false"),
    }
}

/// Lengths are checked by the caller (`out.len() == x.len() * type_size`).
pub(super) fn encode(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_fp16(v));
            }
        }
        GgmlType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        _ => unreachable!("can_encode({ty}) is false"),
    }
}
