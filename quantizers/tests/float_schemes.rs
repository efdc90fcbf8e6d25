//! Exhaustive and property checks of the float schemes through the public API. The references
//! here are brute-force definitions (nearest representable value in f64, exact exponents), not
//! the formulas the library uses.

use proptest::prelude::*;
use qtool_quantizers::float::fp8_scaled::{self, Granularity};
use qtool_quantizers::float::mx::{self, Mxfp4Rule};
use qtool_quantizers::float::nvfp4::{self, Layout, Producer};
use qtool_quantizers::float::{e2m1, e8m0, swizzle, ComputeDType, Fp8Format, Matrix, Options};

/// Brute-force E2M1: the nearest magnitude, ties to the even code, saturating at 6.
fn e2m1_reference(x: f32) -> u8 {
    let a = f64::from(x.abs());
    if a >= 6.0 {
        return (u8::from(x.is_sign_negative()) << 3) | 7; // saturation (differences lose meaning)
    }
    let mut best = 0u8;
    for code in 1..8u8 {
        let (db, dc) = (
            (f64::from(e2m1::VALUES[best as usize]) - a).abs(),
            (f64::from(e2m1::VALUES[code as usize]) - a).abs(),
        );
        if dc < db || (dc == db && code % 2 == 0) {
            best = code;
        }
    }
    (u8::from(x.is_sign_negative()) << 3) | best
}

#[test]
fn e2m1_encode_matches_brute_force_on_every_bf16_and_f16() {
    let bf16 = (0..=u16::MAX).map(|b| half::bf16::from_bits(b).to_f32());
    let f16 = (0..=u16::MAX).map(|b| half::f16::from_bits(b).to_f32());
    for x in bf16.chain(f16).filter(|x| !x.is_nan()) {
        assert_eq!(e2m1::encode(x), e2m1_reference(x), "encode({x:e})");
        let lt0 = if x == 0.0 { e2m1_reference(x) & 7 } else { e2m1_reference(x) };
        assert_eq!(e2m1::encode_lt0(x), lt0, "encode_lt0({x:e})");
    }
}

#[test]
fn e8m0_rules_match_exact_exponents_on_every_positive_bf16() {
    for b in 1..0x7F80u16 {
        let x = half::bf16::from_bits(b).to_f32();
        let (m, k) = frexp(f64::from(x)); // x = m·2^k, m in [0.5, 1)
        let floor_log2 = k - 1;
        let want = (floor_log2 - 2 + 127).clamp(0, 254) as u8;
        assert_eq!(e8m0::exponent_floor(x, 2), want, "floor rule at {x:e}");
        let p2 = if m >= 0.875 { floor_log2 + 1 } else { floor_log2 }; // significand ≥ 1.75
                                                                       // A power of two past f32's range is +inf in compressed-tensors: log2 = inf → 255.
        let want = if p2 >= 128 { 255 } else { (p2 - 2 + 127).clamp(0, 255) as u8 };
        if x >= f32::MIN_POSITIVE {
            assert_eq!(e8m0::exponent_round_pow2(x, 2), want, "round_pow2 rule at {x:e}");
        }
        let e = e8m0::exponent_ceil(x, 448.0);
        if (1..254).contains(&e) {
            let s = e8m0::decode(e);
            assert!(x / s <= 448.0 * (1.0 + 1e-6), "ceil rule leaves {x:e} above range");
            assert!(x / s > 224.0 * (1.0 - 1e-6), "ceil rule wastes a binade at {x:e}");
        }
    }
}

fn frexp(x: f64) -> (f64, i32) {
    let k = x.log2().floor() as i32 + 1;
    let mut m = x / 2f64.powi(k);
    let mut k = k;
    if m >= 1.0 {
        m /= 2.0;
        k += 1;
    } else if m < 0.5 {
        m *= 2.0;
        k -= 1;
    }
    (m, k)
}

fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows * cols)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 61 == 3 {
                u * 3.0
            } else {
                u * 0.05
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn swizzle_is_invertible(rows in 1usize..300, cols in 1usize..20, seed in any::<u8>()) {
        let src: Vec<u8> = (0..rows * cols).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let b = swizzle::to_blocked(&src, rows, cols).unwrap();
        prop_assert_eq!(swizzle::from_blocked(&b, rows, cols).unwrap(), src);
    }

    #[test]
    fn nvfp4_layouts_convert_losslessly(rows in 1usize..40, kb in 1usize..6, seed in any::<u64>()) {
        let cols = kb * 16;
        let w = weights(rows, cols, seed);
        let m = Matrix::new(&w, rows, cols).unwrap();
        for p in [Producer::ModelOpt, Producer::CompressedTensors, Producer::Comfy] {
            let q = nvfp4::quantize(&m, p, &Options::default()).unwrap();
            for t in [Layout::ModelOpt, Layout::CompressedTensors, Layout::Comfy] {
                let back = q.to_layout(t).unwrap().to_layout(q.layout).unwrap();
                prop_assert_eq!(&back.packed, &q.packed);
                prop_assert_eq!(&back.block_scales, &q.block_scales);
            }
        }
    }

    #[test]
    fn nvfp4_error_is_within_half_a_step(rows in 1usize..24, kb in 1usize..5, seed in any::<u64>()) {
        let cols = kb * 16;
        let w = weights(rows, cols, seed);
        let m = Matrix::new(&w, rows, cols).unwrap();
        for p in [Producer::ModelOpt, Producer::CompressedTensors, Producer::Comfy] {
            let q = nvfp4::quantize(&m, p, &Options::default()).unwrap();
            let d = q.dequantize().unwrap();
            for (blk, (dw, ww)) in d.chunks(16).zip(w.chunks(16)).enumerate() {
                let amax = ww.iter().fold(0f32, |a, v| a.max(v.abs()));
                // E2M1 steps are at most 2 at the top (4 → 6) of a block scaled to amax/6 (the
                // E4M3 scale rounding adds up to 1/16): half a step is amax/6 · (1 + 1/16).
                let tol = amax / 6.0 * (1.0 + 1.0 / 16.0) + 1e-6;
                for (a, b) in dw.iter().zip(ww) {
                    prop_assert!((a - b).abs() <= tol, "{:?} block {}: {} vs {}", p, blk, a, b);
                }
            }
        }
    }

    #[test]
    fn fp8_ct_block_dequantizes_close(rows in 1usize..300, cols in 1usize..300, seed in any::<u64>()) {
        let w = weights(rows, cols, seed);
        let m = Matrix::new(&w, rows, cols).unwrap();
        let g = Granularity::Block { rows: 128, cols: 128 };
        let q = fp8_scaled::quantize_compressed_tensors(&m, g, &Options::default()).unwrap();
        prop_assert_eq!(q.scale_shape.clone(), vec![rows.div_ceil(128), cols.div_ceil(128)]);
        let s_max = q.scales.iter().fold(0f32, |a, &v| a.max(v));
        for (a, b) in q.dequantize().iter().zip(&w) {
            // E4M3 relative step 2^-3 (half 2^-4), subnormal step 2^-9·scale.
            prop_assert!((a - b).abs() <= b.abs() / 16.0 + s_max * 2f32.powi(-9));
        }
    }
}

#[test]
fn mxfp4_rules_agree_where_their_scales_agree() {
    // When amax is a power of two both rules pick e = log2(amax) − 2 + 127; then the element
    // rounding differs only in tie handling (ggml: towards zero, CT: to even).
    let mut w = vec![0.0f32; 64];
    w[0] = 4.0;
    w[1] = 0.75; // tie between 0.5 and 1
    w[2] = 2.2;
    w[32] = -8.0;
    w[33] = 5.0; // 5/2 = 2.5: tie between 2 and 3 in units of 2
    let m = Matrix::new(&w, 1, 64).unwrap();
    let g = mx::quantize_mxfp4(&m, Mxfp4Rule::Ggml, &Options::default()).unwrap();
    let c = mx::quantize_mxfp4(&m, Mxfp4Rule::CompressedTensors, &Options::default()).unwrap();
    assert_eq!(g.scales, c.scales);
    let (gd, cd) = (g.dequantize(), c.dequantize());
    assert_eq!((gd[1], cd[1]), (0.5, 1.0));
    assert_eq!((gd[2], cd[2]), (2.0, 2.0));
    assert_eq!((gd[33], cd[33]), (4.0, 4.0), "2.5 → ggml 2 (first minimum), CT 2 (even)");
    assert_eq!(gd[32], -8.0);
}

#[test]
fn fp8_comfy_f16_and_bf16_bytes_differ_from_f32_on_the_same_values() {
    // bf16-representable weights: quantizing in bf16 must round the reciprocal and the product.
    let w: Vec<f32> =
        weights(16, 64, 5).iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    let m = Matrix::new(&w, 16, 64).unwrap();
    let f32q = fp8_scaled::quantize_comfy(&m, Fp8Format::E4M3Fn, &Options::default()).unwrap();
    let bq = fp8_scaled::quantize_comfy(
        &m,
        Fp8Format::E4M3Fn,
        &Options { compute: ComputeDType::BF16, allow_nonfinite: false },
    )
    .unwrap();
    assert_ne!(f32q.data, bq.data);
    assert_ne!(f32q.scales, bq.scales);
}

#[test]
fn every_scheme_rejects_nonfinite_input_by_index_and_saturates_it_when_allowed() {
    let mut w = weights(4, 64, 9);
    w[70] = f32::INFINITY;
    w[71] = f32::NEG_INFINITY;
    w[72] = f32::NAN;
    let m = Matrix::new(&w, 4, 64).unwrap();
    let strict = Options::default();
    let allow = Options { allow_nonfinite: true, ..Default::default() };
    let block = Granularity::Block { rows: 128, cols: 128 };
    type Run<'a> =
        Box<dyn Fn(&Options) -> Result<Vec<f32>, qtool_quantizers::float::FloatError> + 'a>;
    let m2 = m;
    let runs: Vec<(&str, Run<'_>)> = vec![
        (
            "fp8 comfy",
            Box::new(move |o| {
                Ok(fp8_scaled::quantize_comfy(&m2, Fp8Format::E4M3Fn, o)?.dequantize())
            }),
        ),
        (
            "fp8 ct",
            Box::new(move |o| {
                Ok(fp8_scaled::quantize_compressed_tensors(&m2, block, o)?.dequantize())
            }),
        ),
        (
            "nvfp4 modelopt",
            Box::new(move |o| nvfp4::quantize(&m2, Producer::ModelOpt, o)?.dequantize()),
        ),
        (
            "nvfp4 ct",
            Box::new(move |o| nvfp4::quantize(&m2, Producer::CompressedTensors, o)?.dequantize()),
        ),
        ("nvfp4 comfy", Box::new(move |o| nvfp4::quantize(&m2, Producer::Comfy, o)?.dequantize())),
        (
            "mxfp4 ggml",
            Box::new(move |o| Ok(mx::quantize_mxfp4(&m2, Mxfp4Rule::Ggml, o)?.dequantize())),
        ),
        (
            "mxfp4 ct",
            Box::new(move |o| {
                Ok(mx::quantize_mxfp4(&m2, Mxfp4Rule::CompressedTensors, o)?.dequantize())
            }),
        ),
        ("mxfp8 comfy", Box::new(move |o| mx::quantize_mxfp8_comfy(&m2, o)?.dequantize())),
    ];
    for (name, run) in runs {
        let err = run(&strict).unwrap_err().to_string();
        assert!(err.contains("element 70 (row 1, column 6) is inf"), "{name}: {err}");
        let d = run(&allow).unwrap();
        assert!(d[70] > 0.0 && d[70].is_finite(), "{name}: +inf → {}", d[70]);
        assert!(d[71] < 0.0 && d[71].is_finite(), "{name}: -inf → {}", d[71]);
        // Finite elements keep the scale of the finite amax.
        let amax = w.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
        assert!(d.iter().filter(|v| v.is_finite()).all(|v| v.abs() <= amax * 1.5), "{name}");
    }
}
