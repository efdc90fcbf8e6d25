//! The integer weight-only family in the export pipeline: for every layout, bit width, group
//! size and symmetry, the bytes `int_layer::encode` returns have the sizes and shapes the plan
//! promised, and reading them back with the layout's unpacker gives exactly the weights
//! `quantize_for_storage` + `dequantize` give (the scales as stored, the codes against them).

use half::{bf16, f16};
use qtool_formats::DType;
use qtool_quantizers::export::int_layer::{self, IntOptions, IntSettings};
use qtool_quantizers::export::plan::LayerPlan;
use qtool_quantizers::export::{Layout, Scheme};
use qtool_quantizers::float::ComputeDType;
use qtool_quantizers::int::{
    dequantize, quantize_for_storage, unpack_awq, unpack_ct, unpack_gptq, AwqTensors, Convention,
    CtPackedTensors, GptqTensors, RtnConfig, ScaleDtype,
};

fn weights(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32 ^ seed).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn floats(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F16 => {
            b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        DType::BF16 => {
            b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        _ => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
    }
}

#[test]
fn encoded_parts_match_the_plan_and_unpack_to_the_stored_quantization() {
    let cases = [
        (Layout::Gptq, 4, 32, Some(true), false),
        (Layout::Gptq, 4, 64, Some(false), true),
        (Layout::Gptq, 8, -1, Some(true), false),
        (Layout::Gptq, 8, 32, Some(false), true),
        (Layout::Awq, 4, 32, None, false),
        (Layout::Awq, 4, -1, None, false),
        (Layout::CompressedTensors, 4, 32, Some(true), false),
        (Layout::CompressedTensors, 4, 64, Some(false), false),
        (Layout::CompressedTensors, 8, -1, Some(false), false),
    ];
    let (n, k) = (64usize, 128usize);
    let mut checked = 0;
    for (layout, bits, group, sym, v2) in cases {
        for (dtype, compute) in [
            (DType::BF16, ComputeDType::BF16),
            (DType::F16, ComputeDType::F16),
            (DType::F32, ComputeDType::F32),
        ] {
            let opts = IntOptions { group_size: Some(group), symmetric: sym, gptq_v2: v2 };
            let s =
                IntSettings::resolve(Scheme::IntWeight { bits }, layout, &opts).unwrap().unwrap();
            let l = LayerPlan { prefix: "m.l".into(), rows: n, cols: k, dtype, compute };
            assert_eq!(int_layer::shape_rule(layout, &s, n, k), None);
            let planned = int_layer::outputs(layout, &s, &l);
            let w = weights(n * k, (bits * 7).wrapping_add(group as u32));
            let parts = int_layer::encode(layout, &s, &l, &w).unwrap();
            assert_eq!(parts.len(), planned.len(), "{layout}");
            for (p, b) in planned.iter().zip(&parts) {
                assert_eq!(p.nbytes, b.len() as u64, "{layout} {}", p.name);
            }
            let sd = int_layer::scale_dtype(layout, dtype);
            let convention = match layout {
                Layout::Gptq => Convention::Gptq,
                Layout::Awq => Convention::Awq,
                _ => Convention::CompressedTensors,
            };
            let cfg = RtnConfig {
                bits: s.bits,
                group_size: s.group_size,
                symmetric: s.symmetric,
                convention,
            };
            let storage = match sd {
                DType::BF16 => ScaleDtype::BF16,
                DType::F32 => ScaleDtype::F32,
                _ => ScaleDtype::F16,
            };
            let want =
                dequantize(&quantize_for_storage(&w, n, k, &cfg, None, storage).unwrap()).unwrap();
            let back = match layout {
                Layout::Gptq => unpack_gptq(
                    &GptqTensors {
                        bits: s.bits,
                        n,
                        k,
                        zeros_format: s.zeros,
                        qweight: i32s(&parts[0]),
                        qzeros: i32s(&parts[1]),
                        scales: floats(sd, &parts[2]),
                        g_idx: i32s(&parts[3]),
                    },
                    s.group_size,
                    s.symmetric,
                ),
                Layout::Awq => unpack_awq(
                    &AwqTensors {
                        n,
                        k,
                        qweight: i32s(&parts[0]),
                        qzeros: i32s(&parts[1]),
                        scales: floats(sd, &parts[2]),
                    },
                    s.group_size,
                ),
                _ => {
                    let scale_nk = floats(sd, &parts[1]);
                    unpack_ct(
                        &CtPackedTensors {
                            bits: s.bits,
                            n,
                            k,
                            weight_packed: i32s(&parts[0]),
                            weight_scale: scale_nk,
                            weight_zero_point: parts.get(3).map(|b| i32s(b)),
                            weight_shape: [n as i64, k as i64],
                            weight_g_idx: None,
                        },
                        s.group_size,
                    )
                }
            }
            .unwrap();
            assert_eq!(dequantize(&back).unwrap(), want, "{layout} {bits}-bit g{group} {dtype:?}");
            let shape: Vec<i64> = parts
                .get(2)
                .filter(|_| layout == Layout::CompressedTensors)
                .map(|b| {
                    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
                })
                .unwrap_or_else(|| vec![n as i64, k as i64]);
            assert_eq!(shape, [n as i64, k as i64]);
            checked += 1;
        }
    }
    assert_eq!(checked, 27);
}

#[test]
fn shape_rules_name_the_failing_dimension() {
    let s =
        IntSettings::resolve(Scheme::IntWeight { bits: 4 }, Layout::Gptq, &IntOptions::default())
            .unwrap()
            .unwrap();
    assert!(int_layer::shape_rule(Layout::Gptq, &s, 64, 64).unwrap().contains("group size 128"));
    let s32 = IntSettings::resolve(
        Scheme::IntWeight { bits: 4 },
        Layout::Gptq,
        &IntOptions { group_size: Some(-1), ..Default::default() },
    )
    .unwrap()
    .unwrap();
    assert!(int_layer::shape_rule(Layout::Gptq, &s32, 12, 64).unwrap().contains("out_features"));
    assert!(int_layer::shape_rule(Layout::Gptq, &s32, 64, 60).unwrap().contains("in_features"));
    assert!(int_layer::shape_rule(Layout::Awq, &s32, 12, 64).unwrap().contains("multiple of 8"));
    assert_eq!(int_layer::shape_rule(Layout::CompressedTensors, &s32, 12, 60), None);
}

#[test]
fn awq_defaults_to_asymmetric_and_refuses_sym() {
    let s =
        IntSettings::resolve(Scheme::IntWeight { bits: 4 }, Layout::Awq, &IntOptions::default())
            .unwrap()
            .unwrap();
    assert!(!s.symmetric);
    let err = IntSettings::resolve(
        Scheme::IntWeight { bits: 4 },
        Layout::Awq,
        &IntOptions { symmetric: Some(true), ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("asymmetric only"), "{err}");
}
