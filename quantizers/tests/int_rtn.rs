//! Round-to-nearest integer quantization: each convention on hand-computed groups (values chosen
//! so the f32 arithmetic is exact), act-order grouping, externally supplied parameters, and one
//! test per bad input.

use proptest::prelude::*;
use qtool_quantizers::int::{
    dequantize, quantize, quantize_for_storage, quantize_with_params, Bits, Convention, GroupSize,
    IntError, QuantizedInt, RtnConfig, ScaleDtype,
};

fn cfg(bits: Bits, group: GroupSize, symmetric: bool, convention: Convention) -> RtnConfig {
    RtnConfig { bits, group_size: group, symmetric, convention }
}

fn one_row(row: &[f32], c: RtnConfig) -> QuantizedInt {
    quantize(row, 1, row.len(), &c, None).unwrap()
}

#[test]
fn gptq_sym_uses_twice_amax_and_ties_to_even() {
    // xmin = -3 after symmetrisation: scale = 6/15 = 0.4, zero 8.
    // x/s = -3.75, 0.5, 1.875, 7.5 -> round -4, 0 (half to even), 2, 8 -> +8, clamp 15.
    let q = one_row(
        &[-1.5, 0.2, 0.75, 3.0],
        cfg(Bits::B4, GroupSize::PerChannel, true, Convention::Gptq),
    );
    assert_eq!(q.scales, vec![6.0f32 / 15.0]);
    assert_eq!(q.zeros, vec![8]);
    assert_eq!(q.codes, vec![4, 8, 10, 15]);
}

#[test]
fn gptq_sym_keeps_autogptq_quirk_for_nonnegative_group() {
    // No negative value: AutoGPTQ leaves xmin = 0, so scale = amax / 15 (not 2·amax / 15).
    let q = one_row(
        &[0.5, 1.0, 1.5, 3.0],
        cfg(Bits::B4, GroupSize::PerChannel, true, Convention::Gptq),
    );
    assert_eq!(q.scales, vec![3.0f32 / 15.0]);
    assert_eq!(q.zeros, vec![8]);
    assert_eq!(q.codes, vec![10, 13, 15, 15]);
}

#[test]
fn gptq_all_zero_group_becomes_minus_one_to_one() {
    let q = one_row(&[0.0; 4], cfg(Bits::B4, GroupSize::PerChannel, false, Convention::Gptq));
    assert_eq!(q.scales, vec![2.0f32 / 15.0]);
    // In f32, 2/15 rounds up to 0.13333334, so -xmin/scale = 7.4999995 and the zero is 7.
    assert_eq!(2.0f32 / 15.0, 0.133_333_34);
    assert_eq!(q.zeros, vec![7]);
    assert_eq!(q.codes, vec![7; 4]);
    assert!(dequantize(&q).unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn gptq_asym_zero_is_round_of_minus_min_over_scale() {
    // range [-1, 2.75]: scale 3.75/15 = 0.25, zero round(4) = 4.
    let q = one_row(
        &[-1.0, 0.0, 0.5, 2.75],
        cfg(Bits::B4, GroupSize::PerChannel, false, Convention::Gptq),
    );
    assert_eq!(q.scales, vec![0.25]);
    assert_eq!(q.zeros, vec![4]);
    assert_eq!(q.codes, vec![0, 4, 6, 15]);
}

#[test]
fn awq_range_excludes_zero_and_clamps_zero_point() {
    // min 0.5, max 3.5: scale 3/15 = 0.2; zero = -round(2.5) = -2 -> clamp 0.
    let q = one_row(
        &[0.5, 1.0, 2.0, 3.5],
        cfg(Bits::B4, GroupSize::PerChannel, false, Convention::Awq),
    );
    assert_eq!(q.scales, vec![3.0f32 / 15.0]);
    assert_eq!(q.zeros, vec![0]);
    let s = 3.0f32 / 15.0;
    let expect: Vec<u8> = [0.5f32, 1.0, 2.0, 3.5]
        .iter()
        .map(|x| (x / s).round_ties_even().clamp(0.0, 15.0) as u8)
        .collect();
    assert_eq!(q.codes, expect);
}

#[test]
fn awq_constant_group_uses_1e5_floor() {
    let q = one_row(&[0.25; 4], cfg(Bits::B4, GroupSize::PerChannel, false, Convention::Awq));
    assert_eq!(q.scales, vec![1e-5f32 / 15.0]);
}

#[test]
fn ct_sym_int4_scale_is_amax_over_7_5() {
    // amax 3 -> scale 0.4; round(clamp(x/s, -8, 7)) = -4, 0, 2, 7 -> stored +8.
    let q = one_row(
        &[-1.5, 0.2, 0.75, 3.0],
        cfg(Bits::B4, GroupSize::PerChannel, true, Convention::CompressedTensors),
    );
    assert_eq!(q.scales, vec![3.0f32 / 7.5]);
    assert_eq!(q.zeros, vec![8]);
    assert_eq!(q.codes, vec![4, 8, 10, 15]);
}

#[test]
fn ct_sym_int8_scale_is_amax_over_127_5() {
    let q = one_row(
        &[-2.0, 1.0, 0.0, 0.5],
        cfg(Bits::B8, GroupSize::PerChannel, true, Convention::CompressedTensors),
    );
    assert_eq!(q.scales, vec![2.0f32 / 127.5]);
    assert_eq!(q.zeros, vec![128]);
    let s = 2.0f32 / 127.5;
    let expect: Vec<u8> = [-2.0f32, 1.0, 0.0, 0.5]
        .iter()
        .map(|x| ((x / s).clamp(-128.0, 127.0).round_ties_even() + 128.0) as u8)
        .collect();
    assert_eq!(q.codes, expect);
}

#[test]
fn ct_asym_zero_point_is_signed_then_offset() {
    // scale 0.25, zp = -8 - (-1 / 0.25) = -4 -> stored 4; q = round(x/s - 4) in [-8, 7].
    let q = one_row(
        &[-1.0, 0.0, 0.5, 2.75],
        cfg(Bits::B4, GroupSize::PerChannel, false, Convention::CompressedTensors),
    );
    assert_eq!(q.scales, vec![0.25]);
    assert_eq!(q.zeros, vec![4]);
    assert_eq!(q.codes, vec![0, 4, 6, 15]);
}

#[test]
fn ct_all_zero_group_gets_eps_scale_and_exact_zero() {
    for sym in [true, false] {
        let q = one_row(
            &[0.0; 8],
            cfg(Bits::B4, GroupSize::PerChannel, sym, Convention::CompressedTensors),
        );
        assert_eq!(q.scales, vec![f32::EPSILON]);
        assert!(dequantize(&q).unwrap().iter().all(|&x| x == 0.0));
    }
}

#[test]
fn groups_are_laid_out_g_by_n() {
    // 2 rows x 4 columns, group 2: scales[g * N + n].
    let w = [1.0f32, -1.0, 4.0, -4.0, 2.0, -2.0, 8.0, -8.0];
    let q = quantize(
        &w,
        2,
        4,
        &cfg(Bits::B4, GroupSize::Size(2), true, Convention::CompressedTensors),
        None,
    )
    .unwrap();
    let s = |a: f32| a / 7.5;
    assert_eq!(q.scales, vec![s(1.0), s(2.0), s(4.0), s(8.0)]);
}

fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    // xorshift; deterministic and dependency-free.
    let mut x = seed | 1;
    (0..n * k)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

fn act_order_g_idx(k: usize, g: usize, seed: u64) -> Vec<u32> {
    // GPTQ desc_act without static groups: perm = some column order, g_idx[perm[i]] = i / G.
    let mut perm: Vec<usize> = (0..k).collect();
    let mut x = seed | 1;
    for i in (1..k).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        perm.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut g_idx = vec![0u32; k];
    for (i, &p) in perm.iter().enumerate() {
        g_idx[p] = (i / g) as u32;
    }
    g_idx
}

#[test]
fn act_order_groups_equal_plain_groups_of_sorted_columns() {
    let (n, k, g) = (8, 64, 16);
    let w = weights(n, k, 7);
    let g_idx = act_order_g_idx(k, g, 11);
    for conv in [Convention::Gptq, Convention::Awq, Convention::CompressedTensors] {
        let c = cfg(Bits::B4, GroupSize::Size(g), conv == Convention::Gptq, conv);
        let q = quantize(&w, n, k, &c, Some(&g_idx)).unwrap();
        assert_eq!(q.g_idx.as_deref(), Some(&g_idx[..]));
        // Sort columns by group (stable): plain grouping of that matrix has the same params.
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by_key(|&i| g_idx[i]);
        let ws: Vec<f32> = (0..n)
            .flat_map(|r| order.iter().map(move |&c| (r, c)))
            .map(|(r, c)| w[r * k + c])
            .collect();
        let p = quantize(&ws, n, k, &c, None).unwrap();
        assert_eq!(q.scales, p.scales, "{conv:?}");
        assert_eq!(q.zeros, p.zeros, "{conv:?}");
        for r in 0..n {
            for (j, &c) in order.iter().enumerate() {
                assert_eq!(q.codes[r * k + c], p.codes[r * k + j]);
            }
        }
    }
}

#[test]
fn default_g_idx_is_normalized_away() {
    let (n, k) = (8, 64);
    let w = weights(n, k, 3);
    let g_idx: Vec<u32> = (0..k as u32).map(|i| i / 32).collect();
    let c = cfg(Bits::B4, GroupSize::Size(32), true, Convention::Gptq);
    assert_eq!(
        quantize(&w, n, k, &c, Some(&g_idx)).unwrap(),
        quantize(&w, n, k, &c, None).unwrap()
    );
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let (n, k) = (64, 256);
    let w = weights(n, k, 5);
    let c = cfg(Bits::B4, GroupSize::Size(128), false, Convention::Gptq);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| quantize(&w, n, k, &c, None).unwrap())
    };
    assert_eq!(run(1), run(4));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn with_params_reproduces_own_params(
        seed in any::<u64>(),
        conv in prop::sample::select(vec![Convention::Gptq, Convention::Awq, Convention::CompressedTensors]),
        sym in any::<bool>(),
        bits in prop::sample::select(vec![Bits::B4, Bits::B8]),
        g in prop::sample::select(vec![GroupSize::Size(32), GroupSize::Size(64), GroupSize::PerChannel]),
    ) {
        let sym = sym && conv != Convention::Awq;
        let (n, k) = (8, 128);
        let w = weights(n, k, seed);
        let c = cfg(bits, g, sym, conv);
        let q = quantize(&w, n, k, &c, None).unwrap();
        let p = quantize_with_params(&w, n, k, &c, None, &q.scales, &q.zeros).unwrap();
        prop_assert_eq!(p, q);
    }

    #[test]
    fn dequant_error_is_at_most_half_a_step_inside_the_range(
        seed in any::<u64>(),
        bits in prop::sample::select(vec![Bits::B4, Bits::B8]),
    ) {
        // GPTQ asym covers [min(min,0), max(max,0)], so no value clamps.
        let (n, k) = (4, 64);
        let w = weights(n, k, seed);
        let q = quantize(&w, n, k, &cfg(bits, GroupSize::Size(32), false, Convention::Gptq), None).unwrap();
        let d = dequantize(&q).unwrap();
        for (i, (&a, &b)) in w.iter().zip(&d).enumerate() {
            let s = q.scales[((i % k) / 32) * n + i / k];
            prop_assert!((a - b).abs() <= s * 0.5 * (1.0 + 1e-5) + 1e-7, "{} {} {}", a, b, s);
        }
    }
}

#[test]
fn bad_input_nan_weight() {
    let mut w = vec![0.5f32; 32];
    w[17] = f32::NAN;
    let err =
        quantize(&w, 1, 32, &cfg(Bits::B4, GroupSize::Size(32), true, Convention::Gptq), None)
            .unwrap_err();
    assert!(matches!(err, IntError::NonFiniteWeight { row: 0, col: 17, .. }), "{err}");
}

#[test]
fn bad_input_infinite_weight() {
    let mut w = vec![0.5f32; 64];
    w[40] = f32::NEG_INFINITY;
    let err =
        quantize(&w, 2, 32, &cfg(Bits::B4, GroupSize::Size(32), true, Convention::Gptq), None)
            .unwrap_err();
    assert!(matches!(err, IntError::NonFiniteWeight { row: 1, col: 8, .. }), "{err}");
}

#[test]
fn bad_input_weight_length() {
    let err = quantize(
        &[0.0; 30],
        1,
        32,
        &cfg(Bits::B4, GroupSize::Size(32), true, Convention::Gptq),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, IntError::LengthMismatch { what: "weight", expected: 32, got: 30, .. }),
        "{err}"
    );
}

#[test]
fn bad_input_group_does_not_divide_k() {
    let err = quantize(
        &[0.0; 96],
        1,
        96,
        &cfg(Bits::B4, GroupSize::Size(64), true, Convention::Gptq),
        None,
    )
    .unwrap_err();
    assert_eq!(err, IntError::GroupDoesNotDivide { group: 64, k: 96 });
}

#[test]
fn bad_input_group_size_zero() {
    assert_eq!(GroupSize::from_i64(0).unwrap_err(), IntError::ZeroGroupSize);
    assert_eq!(GroupSize::from_i64(-2).unwrap_err(), IntError::ZeroGroupSize);
    assert_eq!(GroupSize::from_i64(-1).unwrap(), GroupSize::PerChannel);
}

#[test]
fn bad_input_unsupported_bits() {
    assert_eq!(Bits::from_u32(3).unwrap_err(), IntError::UnsupportedBits { bits: 3 });
}

#[test]
fn bad_input_empty_shape() {
    let err =
        quantize(&[], 0, 32, &cfg(Bits::B4, GroupSize::Size(32), true, Convention::Gptq), None)
            .unwrap_err();
    assert_eq!(err, IntError::EmptyShape { n: 0, k: 32 });
}

#[test]
fn bad_input_g_idx_length() {
    let g = vec![0u32; 31];
    let err = quantize(
        &[0.0; 32],
        1,
        32,
        &cfg(Bits::B4, GroupSize::Size(16), true, Convention::Gptq),
        Some(&g),
    )
    .unwrap_err();
    assert_eq!(err, IntError::GIdxLength { got: 31, k: 32 });
}

#[test]
fn bad_input_g_idx_out_of_range() {
    let mut g = vec![0u32; 32];
    g[5] = 2;
    let err = quantize(
        &[0.0; 32],
        1,
        32,
        &cfg(Bits::B4, GroupSize::Size(16), true, Convention::Gptq),
        Some(&g),
    )
    .unwrap_err();
    assert_eq!(err, IntError::GIdxOutOfRange { index: 5, value: 2, groups: 2 });
}

#[test]
fn bad_input_awq_symmetric() {
    let err = quantize(
        &[0.0; 32],
        1,
        32,
        &cfg(Bits::B4, GroupSize::Size(32), true, Convention::Awq),
        None,
    )
    .unwrap_err();
    assert_eq!(err, IntError::AwqSymmetric);
}

#[test]
fn bad_input_external_zero_scale() {
    let c = cfg(Bits::B4, GroupSize::Size(16), false, Convention::Gptq);
    let err = quantize_with_params(&[0.0; 32], 1, 32, &c, None, &[1.0, 0.0], &[3, 3]).unwrap_err();
    assert!(matches!(err, IntError::BadScale { group: 1, col: 0, .. }), "{err}");
}

#[test]
fn bad_input_external_zero_out_of_range() {
    let c = cfg(Bits::B4, GroupSize::Size(16), false, Convention::Gptq);
    let err = quantize_with_params(&[0.0; 32], 1, 32, &c, None, &[1.0, 1.0], &[3, 16]).unwrap_err();
    assert!(
        matches!(err, IntError::CodeOutOfRange { what: "zeros", index: 1, value: 16, .. }),
        "{err}"
    );
}

#[test]
fn bad_input_external_zero_not_symmetric() {
    let c = cfg(Bits::B4, GroupSize::Size(16), true, Convention::Gptq);
    let err = quantize_with_params(&[0.0; 32], 1, 32, &c, None, &[1.0, 1.0], &[8, 7]).unwrap_err();
    assert_eq!(err, IntError::NotSymmetric { group: 1, col: 0, value: 7, mid: 8 });
}

#[test]
fn bad_input_external_scales_length() {
    let c = cfg(Bits::B4, GroupSize::Size(16), false, Convention::Gptq);
    let err = quantize_with_params(&[0.0; 32], 1, 32, &c, None, &[1.0], &[3, 3]).unwrap_err();
    assert!(matches!(err, IntError::LengthMismatch { what: "scales", .. }), "{err}");
}

#[test]
fn storage_scales_are_representable_and_codes_use_them() {
    let (n, k) = (16, 128);
    let w = weights(n, k, 9);
    for conv in [Convention::Gptq, Convention::Awq, Convention::CompressedTensors] {
        let c = cfg(Bits::B4, GroupSize::Size(32), conv != Convention::Awq, conv);
        for dtype in [ScaleDtype::F16, ScaleDtype::BF16] {
            let q = quantize_for_storage(&w, n, k, &c, None, dtype).unwrap();
            assert!(q.scales.iter().all(|&s| dtype.round(s) == s), "{conv:?} {dtype:?}");
            let plain = quantize(&w, n, k, &c, None).unwrap();
            let rounded: Vec<f32> = plain.scales.iter().map(|&s| dtype.round(s)).collect();
            assert_ne!(rounded, plain.scales, "the rounding must matter for this test");
            let again = quantize_with_params(&w, n, k, &c, None, &rounded, &plain.zeros).unwrap();
            assert_eq!(q, again);
        }
        assert_eq!(
            quantize_for_storage(&w, n, k, &c, None, ScaleDtype::F32).unwrap(),
            quantize(&w, n, k, &c, None).unwrap()
        );
    }
}

#[test]
fn bad_input_scale_underflows_in_f16() {
    // amax 1e-9: the CT scale 1.3e-10 is below the smallest f16 subnormal and rounds to 0.
    let w = vec![1e-9f32; 32];
    let c = cfg(Bits::B4, GroupSize::Size(32), true, Convention::CompressedTensors);
    let err = quantize_for_storage(&w, 1, 32, &c, None, ScaleDtype::F16).unwrap_err();
    assert!(matches!(err, IntError::BadScale { group: 0, col: 0, value } if value == 0.0), "{err}");
}

#[test]
fn bad_input_dequantize_inconsistent_value() {
    let mut q = one_row(
        &[1.0, -1.0, 0.5, 0.25],
        cfg(Bits::B4, GroupSize::PerChannel, true, Convention::Gptq),
    );
    q.codes.pop();
    assert!(matches!(dequantize(&q).unwrap_err(), IntError::LengthMismatch { what: "codes", .. }));
}
