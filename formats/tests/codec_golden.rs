//! qtool's element codecs against tables written by ml_dtypes (`fixtures/golden/`, made by
//! `fixtures/scripts/make_golden_fp8.py`; `tests/crosscheck/test_codecs.py` proves the committed
//! tables are what the installed ml_dtypes produces).
//!
//! Exhaustive: both FP8 encoders on all 65536 f16 and all 65536 bf16 bit patterns, every decoder
//! on all of its codes, bit for bit (NaN bit patterns included).

use std::path::PathBuf;

use half::{bf16, f16};
use qtool_formats::codec::{self, Fp8Format, Overflow};
use qtool_formats::DType;

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_f32_bits(name: &str) -> Vec<u32> {
    golden(name).chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Every 16-bit pattern of a source format, widened (exactly) to f32.
fn all_values(source: &str) -> Vec<f32> {
    (0..=u16::MAX)
        .map(|bits| match source {
            "f16" => f16::from_bits(bits).to_f32(),
            "bf16" => bf16::from_bits(bits).to_f32(),
            _ => unreachable!(),
        })
        .collect()
}

fn check_encoder(source: &str, format: Fp8Format, target: &str) {
    let want = golden(&format!("{source}_to_{target}.bin"));
    assert_eq!(want.len(), 65536);
    let src = all_values(source);
    let mut got = vec![0u8; src.len()];
    codec::encode_fp8(format, Overflow::Cast, &src, &mut got);
    let mismatches: Vec<String> = (0..src.len())
        .filter(|&i| got[i] != want[i])
        .take(8)
        .map(|i| {
            format!(
                "{source} {i:#06x} ({}): got {:#04x}, ml_dtypes {:#04x}",
                src[i], got[i], want[i]
            )
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{target} (Cast) differs from ml_dtypes:\n{}",
        mismatches.join("\n")
    );

    // Saturate differs from ml_dtypes' cast exactly where a non-NaN input lands beyond max:
    // there it is ±max, everywhere else the same code.
    let max_code = if format == Fp8Format::E4M3Fn { 0x7E } else { 0x7B };
    codec::encode_fp8(format, Overflow::Saturate, &src, &mut got);
    for (i, &x) in src.iter().enumerate() {
        let overflowed = !x.is_nan() && !format.decode(want[i]).is_finite();
        let expected = if overflowed { (want[i] & 0x80) | max_code } else { want[i] };
        assert_eq!(got[i], expected, "{target} (Saturate) {source} {i:#06x} ({x})");
    }
}

#[test]
fn f16_to_e4m3fn_matches_ml_dtypes() {
    check_encoder("f16", Fp8Format::E4M3Fn, "e4m3fn");
}

#[test]
fn f16_to_e5m2_matches_ml_dtypes() {
    check_encoder("f16", Fp8Format::E5M2, "e5m2");
}

#[test]
fn bf16_to_e4m3fn_matches_ml_dtypes() {
    check_encoder("bf16", Fp8Format::E4M3Fn, "e4m3fn");
}

#[test]
fn bf16_to_e5m2_matches_ml_dtypes() {
    check_encoder("bf16", Fp8Format::E5M2, "e5m2");
}

fn check_decoder(dtype: DType, table: &str, codes: &[u8]) {
    let want = golden_f32_bits(table);
    let mut got = vec![0f32; want.len()];
    codec::decode_f32(dtype, codes, &mut got).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{dtype} code {i:#04x}: got {g} ({:#010x}), ml_dtypes {}",
            g.to_bits(),
            f32::from_bits(*w)
        );
    }
}

#[test]
fn every_8_bit_float_code_decodes_as_ml_dtypes() {
    let codes: Vec<u8> = (0..=255).collect();
    check_decoder(DType::F8E4M3, "e4m3fn_to_f32.bin", &codes);
    check_decoder(DType::F8E5M2, "e5m2_to_f32.bin", &codes);
    check_decoder(DType::F8E4M3Fnuz, "e4m3fnuz_to_f32.bin", &codes);
    check_decoder(DType::F8E5M2Fnuz, "e5m2fnuz_to_f32.bin", &codes);
    check_decoder(DType::F8E8M0, "e8m0fnu_to_f32.bin", &codes);
}

#[test]
fn every_e2m1_code_decodes_as_ml_dtypes() {
    // Codes 0..16 packed two per byte, even code in the low nibble.
    let packed: Vec<u8> = (0..8u8).map(|i| (2 * i) | ((2 * i + 1) << 4)).collect();
    check_decoder(DType::F4, "e2m1fn_to_f32.bin", &packed);
}
