//! Unit tests of the block codecs through the run-time dispatcher. Bit identity with llama.cpp
//! and gguf-py is checked in `tests/crosscheck/test_gguf_codecs.py`; these tests check the
//! properties any correct codec has (error bounds, exact zeros, no NaN from finite input,
//! thread-count independence) and the dispatcher's refusals.

use qtool_formats::GgmlType;

use super::*;

/// Every block type with a quantizer, with a bound on relative RMS error for Gaussian rows.
const TYPES: &[(GgmlType, f64)] = &[
    (GgmlType::Q8_0, 0.006),
    (GgmlType::Q4_0, 0.12),
    (GgmlType::Q4_1, 0.10),
    (GgmlType::Q5_0, 0.06),
    (GgmlType::Q5_1, 0.05),
    (GgmlType::Q2_K, 0.40),
    (GgmlType::Q3_K, 0.20),
    (GgmlType::Q4_K, 0.10),
    (GgmlType::Q5_K, 0.05),
    (GgmlType::Q6_K, 0.025),
    (GgmlType::Q8_K, 0.008),
    (GgmlType::MXFP4, 0.20),
];

/// SplitMix64: a seeded, dependency-free source of test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal by Box-Muller.
    fn normal(&mut self) -> f32 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn encoded_len(ty: GgmlType, values: usize) -> usize {
    values / ty.block_size() as usize * ty.type_size() as usize
}

fn round_trip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; encoded_len(ty, x.len())];
    quantize(ty, x, &mut q).unwrap();
    let mut y = vec![f32::NAN; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    (q, y)
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let norm: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn gaussian_rows_stay_within_each_types_error_bound() {
    let mut rng = Rng(1);
    for &(ty, bound) in TYPES {
        let x = rng.normals(4096, 0.02);
        let (_, y) = round_trip(ty, &x);
        let e = rel_rmse(&x, &y);
        assert!(e < bound, "{ty}: relative RMSE {e} exceeds {bound}");
        assert!(e > 0.0, "{ty}: a lossy codec reproduced Gaussian data exactly");
    }
}

#[test]
fn more_bits_give_less_error() {
    let mut rng = Rng(2);
    let x = rng.normals(8192, 1.0);
    let err = |ty| rel_rmse(&x, &round_trip(ty, &x).1);
    let ladder = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
    ];
    for pair in ladder.windows(2) {
        assert!(err(pair[0]) > err(pair[1]), "{} should be worse than {}", pair[0], pair[1]);
    }
    assert!(err(GgmlType::Q4_0) > err(GgmlType::Q5_0));
    assert!(err(GgmlType::Q4_1) > err(GgmlType::Q5_1));
}

#[test]
fn q8_0_error_is_at_most_half_a_step_per_block() {
    let mut rng = Rng(3);
    let x = rng.normals(32 * 64, 3.0);
    let (_, y) = round_trip(GgmlType::Q8_0, &x);
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Half a step, plus the fp16 rounding of d (2^-11 relative) across 127 steps.
        let bound = amax / 127.0 * 0.5 + amax * 2f32.powi(-11) * 1.01;
        for (a, b) in xb.iter().zip(yb) {
            assert!((a - b).abs() <= bound, "|{a} - {b}| > {bound}");
        }
    }
}

#[test]
fn zero_rows_decode_to_exact_zeros() {
    for &(ty, _) in TYPES {
        let x = vec![0.0f32; 512];
        let (q, y) = round_trip(ty, &x);
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros decoded to nonzero");
        if ty != GgmlType::MXFP4 && ty != GgmlType::Q4_0 && ty != GgmlType::Q5_0 {
            // Symmetric legacy types store level 8/16 for zero and MXFP4 stores code 0 with
            // exponent 0; every other type writes an all-zero block.
            assert!(q.iter().all(|&b| b == 0), "{ty}: zero row did not encode to zero bytes");
        }
    }
}

#[test]
fn constant_rows_are_reproduced_closely() {
    for &(ty, _) in TYPES {
        for c in [1.0f32, -3.5, 1e-3, 1000.0] {
            let x = vec![c; 512];
            let (_, y) = round_trip(ty, &x);
            // A constant is one level times an fp16 (and, for k-quants, 6-bit) scale.
            // MXFP4: ggml's floor(log2) exponent tops the grid at 6·2^e for amax < 8·2^e.
            let tol = match ty {
                GgmlType::MXFP4 => 0.25,
                GgmlType::Q8_K => 2f32.powi(-8),
                _ if ty.block_size() == 256 => 0.03,
                _ => 2f32.powi(-8),
            };
            for &v in &y {
                assert!((v - c).abs() <= c.abs() * tol, "{ty}: constant {c} decoded to {v}");
            }
        }
    }
}

#[test]
fn all_negative_rows_keep_their_sign_and_scale() {
    let mut rng = Rng(4);
    for &(ty, bound) in TYPES {
        let x: Vec<f32> = rng.normals(1024, 1.0).into_iter().map(|v| -v.abs() - 0.5).collect();
        let (_, y) = round_trip(ty, &x);
        assert!(y.iter().all(|&v| v <= 0.0), "{ty}: a negative row decoded to a positive value");
        let e = rel_rmse(&x, &y);
        assert!(e < bound, "{ty}: relative RMSE {e} on an all-negative row exceeds {bound}");
    }
}

#[test]
fn a_single_nonzero_value_survives_and_the_rest_stay_zero() {
    for &(ty, _) in TYPES {
        let mut x = vec![0.0f32; 256];
        x[77] = -2.75;
        let (_, y) = round_trip(ty, &x);
        // MXFP4's grid near 2.75 is {2, 3}·scale: the nearest value is 3.
        let tol = if ty == GgmlType::MXFP4 { 0.1 } else { 0.01 };
        assert!((y[77] + 2.75).abs() <= 2.75 * tol, "{ty}: -2.75 decoded to {}", y[77]);
        let block = ty.block_size() as usize;
        for (i, &v) in y.iter().enumerate() {
            if i / block != 77 / block {
                assert_eq!(v, 0.0, "{ty}: element {i} of an all-zero block should stay zero");
            } else if i != 77 {
                // Types with an offset (Q4_1, Q5_1, k-quant mins) land near zero, not on it.
                assert!(
                    v.abs() <= 2.75 * 2f32.powi(-9),
                    "{ty}: zero beside the spike decoded to {v}"
                );
            }
        }
    }
}

#[test]
fn huge_outliers_do_not_produce_nan_or_inf() {
    let mut rng = Rng(5);
    for &(ty, _) in TYPES {
        let mut x = rng.normals(1024, 1e-3);
        x[5] = 60000.0;
        x[700] = -50000.0;
        let (_, y) = round_trip(ty, &x);
        assert!(y.iter().all(|v| v.is_finite()), "{ty}: outliers produced a non-finite value");
        // MXFP4's floor(log2) exponent caps 60000 at 12·2^12 = 49152 (ggml's choice).
        let tol = if ty == GgmlType::MXFP4 { 0.2 } else { 0.02 };
        assert!((y[5] - 60000.0).abs() < 60000.0 * tol, "{ty}: outlier decoded to {}", y[5]);
        assert!((y[700] + 50000.0).abs() < 50000.0 * tol, "{ty}: outlier decoded to {}", y[700]);
    }
}

#[test]
fn subnormal_rows_decode_to_finite_small_values() {
    for &(ty, _) in TYPES {
        let x: Vec<f32> = (0..512)
            .map(|i| {
                f32::from_bits(1 + (i as u32 % 97) * 1000) * if i % 3 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let (_, y) = round_trip(ty, &x);
        assert!(
            y.iter().all(|v| v.is_finite() && v.abs() <= 1e-30),
            "{ty}: subnormal row decoded badly"
        );
    }
}

#[test]
fn quantize_rows_is_independent_of_thread_count() {
    let mut rng = Rng(6);
    for &(ty, _) in TYPES {
        let (rows, n_per_row) = (37, 512);
        let x = rng.normals(rows * n_per_row, 1.0);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0u8; encoded_len(ty, x.len())];
            pool.install(|| quantize_rows(ty, &x, n_per_row, &mut out)).unwrap();
            out
        };
        let one = run(1);
        assert_eq!(one, run(3), "{ty}: 3 threads differ from 1");
        let mut whole = vec![0u8; one.len()];
        quantize(ty, &x, &mut whole).unwrap();
        assert_eq!(one, whole, "{ty}: quantize_rows differs from quantize");
    }
}

#[test]
fn blocks_are_viewed_from_unaligned_bytes() {
    let mut rng = Rng(7);
    let x = rng.normals(256, 1.0);
    let mut q = vec![0u8; 1 + 210];
    quantize(GgmlType::Q6_K, &x, &mut q[1..]).unwrap();
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(&q[1..]);
    let mut y = vec![0.0f32; 256];
    BlockQ6K::dequantize(blocks, &mut y);
    let mut y2 = vec![0.0f32; 256];
    dequantize(GgmlType::Q6_K, &q[1..], &mut y2).unwrap();
    assert_eq!(y, y2);
}

#[test]
fn block_sizes_match_the_type_table() {
    fn check<B: BlockCodec>() {
        assert_eq!(size_of::<B>() as u64, B::TYPE.type_size(), "{}", B::TYPE);
        assert_eq!(B::BLOCK as u64, B::TYPE.block_size(), "{}", B::TYPE);
        assert_eq!(align_of::<B>(), 1, "{}", B::TYPE);
    }
    check::<BlockQ4_0>();
    check::<BlockQ4_1>();
    check::<BlockQ5_0>();
    check::<BlockQ5_1>();
    check::<BlockQ8_0>();
    check::<BlockQ2K>();
    check::<BlockQ3K>();
    check::<BlockQ4K>();
    check::<BlockQ5K>();
    check::<BlockQ6K>();
    check::<BlockQ8K>();
    check::<BlockMxfp4>();
}

#[test]
fn plain_types_decode_through_the_same_entry_point() {
    let mut out = [0.0f32; 2];
    dequantize(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0], &mut out).unwrap();
    assert_eq!(out, [1.0, -2.0]);
    dequantize(GgmlType::BF16, &[0x80, 0x3F, 0xC0, 0x7F], &mut out).unwrap();
    assert!(out[0] == 1.0 && out[1].is_nan());
    dequantize(GgmlType::I8, &[0xFF, 0x7F], &mut out).unwrap();
    assert_eq!(out, [-1.0, 127.0]);
    dequantize(GgmlType::I16, &[0x00, 0x80, 0x01, 0x00], &mut out).unwrap();
    assert_eq!(out, [-32768.0, 1.0]);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(-7i32).to_le_bytes());
    bytes.extend_from_slice(&2.5f32.to_le_bytes());
    let mut one = [0.0f32; 1];
    dequantize(GgmlType::I32, &bytes[..4], &mut one).unwrap();
    assert_eq!(one, [-7.0]);
    dequantize(GgmlType::F32, &bytes[4..], &mut one).unwrap();
    assert_eq!(one, [2.5]);
    dequantize(GgmlType::I64, &(1i64 << 40).to_le_bytes(), &mut one).unwrap();
    assert_eq!(one, [(1u64 << 40) as f32]);
    dequantize(GgmlType::F64, &0.1f64.to_le_bytes(), &mut one).unwrap();
    assert_eq!(one, [0.1f32]);
}

#[test]
fn plain_float_types_encode_and_decode_back() {
    let x = [1.0f32, -0.333_333_34, 65504.0, 1e-7];
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let (_, y) = round_trip(ty, &x);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-8) + 6e-8, "{ty}: {a} -> {b}");
        }
    }
}

#[test]
fn unsupported_type_is_refused_with_its_name() {
    let mut out = [0.0f32; 256];
    let err = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut out).unwrap_err();
    assert_eq!(
        err,
        CodecError::UnsupportedType { ty: GgmlType::IQ2_XXS, direction: Direction::Dequantize }
    );
    assert!(err.to_string().contains("IQ2_XXS"), "{err}");
    let err = quantize(GgmlType::I32, &[0.0], &mut [0u8; 4]).unwrap_err();
    assert!(err.to_string().contains("quantize to GGML type I32"), "{err}");
    assert!(!can_quantize(GgmlType::IQ4_NL) && !can_dequantize(GgmlType::NVFP4));
}

#[test]
fn partial_block_bytes_are_refused() {
    let mut out = [7.0f32; 32];
    let err = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
    assert_eq!(err, CodecError::PartialBlock { ty: GgmlType::Q8_0, bytes: 33, block_bytes: 34 });
    assert!(out.iter().all(|&v| v == 7.0), "output touched on error");
}

#[test]
fn partial_block_values_are_refused() {
    let err = quantize(GgmlType::Q4_K, &[0.0; 255], &mut [0u8; 144]).unwrap_err();
    assert_eq!(
        err,
        CodecError::PartialValues { ty: GgmlType::Q4_K, values: 255, unit: 256, what: "blocks" }
    );
}

#[test]
fn mismatched_output_length_is_refused() {
    let mut out = [0.0f32; 64];
    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).unwrap_err();
    assert_eq!(
        err,
        CodecError::LengthMismatch { ty: GgmlType::Q4_0, bytes: 18, expected: 32, actual: 64 }
    );
    let err = quantize(GgmlType::Q4_0, &[0.0; 32], &mut [0u8; 36]).unwrap_err();
    assert!(matches!(err, CodecError::LengthMismatch { expected: 64, actual: 32, .. }), "{err}");
}

#[test]
fn quantize_rows_refuses_a_row_length_that_is_not_whole_blocks() {
    let err = quantize_rows(GgmlType::Q8_0, &[0.0; 96], 48, &mut [0u8; 102]).unwrap_err();
    assert!(matches!(err, CodecError::PartialValues { values: 48, unit: 32, .. }), "{err}");
    let err = quantize_rows(GgmlType::Q8_0, &[0.0; 96], 0, &mut [0u8; 102]).unwrap_err();
    assert!(matches!(err, CodecError::PartialValues { values: 0, .. }), "{err}");
}

#[test]
fn quantize_rows_refuses_a_partial_last_row() {
    let err = quantize_rows(GgmlType::Q8_0, &[0.0; 96], 64, &mut [0u8; 102]).unwrap_err();
    assert!(
        matches!(err, CodecError::PartialValues { values: 96, unit: 64, what: "rows", .. }),
        "{err}"
    );
}

#[test]
fn legacy_layouts_match_hand_computed_blocks() {
    // Q8_0: amax 127 gives d = 1 exactly, so levels are the values themselves.
    let x: Vec<f32> =
        (0..32).map(|i| i as f32 * 4.0 - 63.0).map(|v| v.clamp(-127.0, 127.0)).collect();
    let mut x = x;
    x[0] = -127.0;
    let mut q = [0u8; 34];
    quantize(GgmlType::Q8_0, &x, &mut q).unwrap();
    assert_eq!(&q[..2], &0x3C00u16.to_le_bytes());
    for (j, &v) in x.iter().enumerate() {
        assert_eq!(q[2 + j] as i8 as f32, v, "element {j}");
    }
    // Q4_0: max magnitude -8 gives d = 1, level = x + 8, element j low / j+16 high nibble.
    let x: Vec<f32> = (0..32).map(|i| ((i % 16) as f32) - 8.0).collect();
    let mut q = [0u8; 18];
    quantize(GgmlType::Q4_0, &x, &mut q).unwrap();
    assert_eq!(&q[..2], &0x3C00u16.to_le_bytes());
    for j in 0..16 {
        assert_eq!(q[2 + j], (j as u8) | ((j as u8) << 4), "byte {j}");
    }
    // Q5_0: fifth bits go to qh as a little-endian u32, bit j for element j.
    let mut x = vec![0.0f32; 32];
    x[0] = -16.0; // level 0
    x[17] = 15.0; // level 31: bit 17 of qh
    let mut q = [0u8; 22];
    quantize(GgmlType::Q5_0, &x, &mut q).unwrap();
    let qh = u32::from_le_bytes(q[2..6].try_into().unwrap());
    // Zeros sit at level 16 (fifth bit set) except element 0.
    assert_eq!(qh, !1u32);
    assert_eq!(
        q[6 + 1],
        0xF << 4,
        "element 1 (level 16) low nibble 0, element 17 (level 31) high nibble 0xF"
    );
}

/// Types whose llama.cpp quantizer uses an importance matrix.
const WEIGHTED: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn weighted(ty: GgmlType, x: &[f32], n_per_row: usize, importance: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; encoded_len(ty, x.len())];
    quantize_rows_weighted(ty, x, n_per_row, importance, &mut q).unwrap();
    let mut y = vec![0.0f32; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    y
}

#[test]
fn importance_lowers_the_error_where_it_is_high() {
    let mut rng = Rng(8);
    let (rows, n) = (64, 512);
    let x = rng.normals(rows * n, 1.0);
    // Every 8th column matters 1000 times more than the rest.
    let importance: Vec<f32> = (0..n).map(|c| if c % 8 == 0 { 1000.0 } else { 1.0 }).collect();
    let important_err = |y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .enumerate()
            .filter(|(i, _)| (i % n) % 8 == 0)
            .map(|(_, (&a, &b))| (a as f64 - b as f64).powi(2))
            .sum()
    };
    for &ty in WEIGHTED {
        let plain = important_err(&round_trip(ty, &x).1);
        let favoured = important_err(&weighted(ty, &x, n, &importance));
        assert!(
            favoured < plain,
            "{ty}: weighted error {favoured} on important columns, reference {plain}"
        );
    }
}

#[test]
fn weighted_quantization_ignores_importance_where_ggml_does() {
    let mut rng = Rng(9);
    let x = rng.normals(4 * 256, 1.0);
    let importance: Vec<f32> = (0..256).map(|i| i as f32).collect();
    for ty in [GgmlType::Q8_0, GgmlType::MXFP4, GgmlType::Q8_K, GgmlType::F16] {
        assert_eq!(weighted(ty, &x, 256, &importance), round_trip(ty, &x).1, "{ty}");
    }
}

#[test]
fn weighted_rows_are_independent_of_thread_count() {
    let mut rng = Rng(10);
    let (rows, n) = (19, 768);
    let x = rng.normals(rows * n, 1.0);
    let importance: Vec<f32> = rng.normals(n, 1.0).into_iter().map(f32::abs).collect();
    for &ty in WEIGHTED {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0u8; encoded_len(ty, x.len())];
            pool.install(|| quantize_rows_weighted(ty, &x, n, &importance, &mut out)).unwrap();
            out
        };
        assert_eq!(run(1), run(4), "{ty}");
    }
}

#[test]
fn importance_of_the_wrong_length_is_refused() {
    let err =
        quantize_rows_weighted(GgmlType::Q4_K, &[0.0; 512], 256, &[1.0; 255], &mut [0u8; 288])
            .unwrap_err();
    assert_eq!(
        err,
        CodecError::ImportanceLength { ty: GgmlType::Q4_K, expected: 256, actual: 255 }
    );
}
