//! GPTQ, AWQ and compressed-tensors packers: `unpack(pack(x)) == x` on random shapes, word
//! layouts checked against hand-built words, v1<->v2 zero conversion, conversions between
//! layouts, and one test per bad input.

use proptest::prelude::*;
use qtool_quantizers::int::convert::ct_weight_packed_to_gptq_qweight;
use qtool_quantizers::int::{
    convert, pack_awq, pack_ct, pack_gptq, qzeros_v1_to_v2, qzeros_v2_to_v1, unpack_awq, unpack_ct,
    unpack_gptq, AwqTensors, Bits, GptqZeros, GroupSize, IntError, IntLayout, PackedInt,
    QuantizedInt,
};

/// A random, valid QuantizedInt: N a multiple of 8, K a multiple of the group (and of 8).
fn arb_quantized(allow_act_order: bool) -> impl Strategy<Value = QuantizedInt> {
    (
        prop::sample::select(vec![Bits::B4, Bits::B8]),
        1usize..=4,
        prop::sample::select(vec![
            GroupSize::Size(32),
            GroupSize::Size(64),
            GroupSize::Size(128),
            GroupSize::PerChannel,
        ]),
        1usize..=3,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(bits, n8, group, kmul, symmetric, act, seed)| {
            let n = 8 * n8;
            let k = match group {
                GroupSize::Size(g) => g * kmul,
                GroupSize::PerChannel => 32 * kmul,
            };
            let groups = group.num_groups(k).unwrap();
            let mut x = seed | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let max = bits.max_code() as u64 + 1;
            let codes = (0..n * k).map(|_| (next() % max) as u8).collect();
            let zeros = if symmetric {
                vec![bits.mid() as u8; groups * n]
            } else {
                (0..groups * n).map(|_| (next() % max) as u8).collect()
            };
            let scales = (0..groups * n).map(|_| ((next() % 1000) as f32 + 1.0) * 1e-4).collect();
            let g_idx = (allow_act_order && act && groups > 1).then(|| {
                // A shuffled column → group map with every group of equal size.
                let cols = group.columns(k);
                let mut g: Vec<u32> = (0..k).map(|i| (i / cols) as u32).collect();
                for i in (1..k).rev() {
                    g.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                g
            });
            let g_idx = g_idx
                .filter(|g| g.iter().enumerate().any(|(i, &v)| v as usize != i / group.columns(k)));
            QuantizedInt { bits, n, k, group_size: group, symmetric, codes, scales, zeros, g_idx }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gptq_v2_round_trips(q in arb_quantized(true)) {
        let t = pack_gptq(&q, GptqZeros::V2).unwrap();
        prop_assert_eq!(t.qweight.len(), q.k / q.bits.per_word() * q.n);
        prop_assert_eq!(unpack_gptq(&t, q.group_size, q.symmetric).unwrap(), q);
    }

    #[test]
    fn gptq_v1_round_trips(mut q in arb_quantized(true)) {
        for z in q.zeros.iter_mut() { *z = (*z).max(1); }
        let t = pack_gptq(&q, GptqZeros::V1).unwrap();
        prop_assert_eq!(unpack_gptq(&t, q.group_size, q.symmetric).unwrap(), q);
    }

    #[test]
    fn gptq_v1_v2_word_conversion_matches_repacking(mut q in arb_quantized(true)) {
        for z in q.zeros.iter_mut() { *z = (*z).max(1); }
        let v1 = pack_gptq(&q, GptqZeros::V1).unwrap();
        let v2 = pack_gptq(&q, GptqZeros::V2).unwrap();
        prop_assert_eq!(&v1.with_zeros(GptqZeros::V2).unwrap(), &v2);
        prop_assert_eq!(&v2.with_zeros(GptqZeros::V1).unwrap(), &v1);
    }

    #[test]
    fn awq_round_trips(q in arb_quantized(false)) {
        prop_assume!(q.bits == Bits::B4 && !q.symmetric);
        let t = pack_awq(&q).unwrap();
        prop_assert_eq!(unpack_awq(&t, q.group_size).unwrap(), q);
    }

    #[test]
    fn ct_round_trips(q in arb_quantized(true)) {
        let t = pack_ct(&q).unwrap();
        prop_assert_eq!(t.weight_zero_point.is_some(), !q.symmetric);
        prop_assert_eq!(unpack_ct(&t, q.group_size).unwrap(), q);
    }

    #[test]
    fn ct_weight_packed_transposed_is_gptq_qweight(q in arb_quantized(true)) {
        let ct = pack_ct(&q).unwrap();
        let gptq = pack_gptq(&q, GptqZeros::V2).unwrap();
        prop_assert_eq!(ct_weight_packed_to_gptq_qweight(&ct.weight_packed, q.n, q.k, q.bits).unwrap(), gptq.qweight);
    }

    #[test]
    fn conversions_are_lossless_where_the_target_can_hold_it(q in arb_quantized(true)) {
        let from_gptq = PackedInt::Gptq(pack_gptq(&q, GptqZeros::V2).unwrap());
        let ct = convert(&from_gptq, q.group_size, q.symmetric, IntLayout::CompressedTensors).unwrap();
        prop_assert_eq!(ct, PackedInt::CompressedTensors(pack_ct(&q).unwrap()));
        let back = convert(&PackedInt::CompressedTensors(pack_ct(&q).unwrap()), q.group_size, q.symmetric, IntLayout::Gptq(GptqZeros::V2)).unwrap();
        prop_assert_eq!(back, from_gptq.clone());
        let awq = convert(&from_gptq, q.group_size, q.symmetric, IntLayout::Awq);
        if q.bits == Bits::B4 && q.g_idx.is_none() {
            let awq = awq.unwrap();
            // AWQ forgets "symmetric" but keeps every code, scale and zero.
            let mut again = match convert(&awq, q.group_size, false, IntLayout::Gptq(GptqZeros::V2)).unwrap() {
                PackedInt::Gptq(t) => unpack_gptq(&t, q.group_size, q.symmetric).unwrap(),
                other => panic!("{other:?}"),
            };
            again.symmetric = q.symmetric;
            prop_assert_eq!(again, q);
        } else if q.bits != Bits::B4 {
            prop_assert_eq!(awq.unwrap_err(), IntError::AwqBits { bits: 8 });
        } else {
            prop_assert_eq!(awq.unwrap_err(), IntError::AwqActOrder);
        }
    }
}

fn q4(n: usize, k: usize, codes: Vec<u8>, zeros: Vec<u8>, symmetric: bool) -> QuantizedInt {
    let groups = zeros.len() / n;
    QuantizedInt {
        bits: Bits::B4,
        n,
        k,
        group_size: if groups == 1 { GroupSize::PerChannel } else { GroupSize::Size(k / groups) },
        symmetric,
        codes,
        scales: vec![1.0; zeros.len()],
        zeros,
        g_idx: None,
    }
}

/// codes[n][k] = (k + n) % 16 for an 8 x 8 weight.
fn ramp() -> Vec<u8> {
    (0..8).flat_map(|n| (0..8).map(move |k| ((k + n) % 16) as u8)).collect()
}

#[test]
fn gptq_qweight_packs_k_lsb_first() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    let t = pack_gptq(&q, GptqZeros::V1).unwrap();
    // Column n holds codes (k + n) for k = 0..8, code k at bits 4k.
    let expect: Vec<i32> = (0..8u32)
        .map(|n| (0..8u32).fold(0u32, |w, k| w | (((k + n) % 16) << (4 * k))) as i32)
        .collect();
    assert_eq!(t.qweight, expect);
    assert_eq!(t.qweight[0] as u32, 0x7654_3210);
}

#[test]
fn gptq_sym_qzeros_v1_is_0x77777777_and_v2_is_0x88888888() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    assert_eq!(pack_gptq(&q, GptqZeros::V1).unwrap().qzeros, vec![0x7777_7777]);
    assert_eq!(pack_gptq(&q, GptqZeros::V2).unwrap().qzeros, vec![0x8888_8888u32 as i32]);
}

#[test]
fn gptq_8bit_sym_qzeros_v1_is_0x7f7f7f7f() {
    let mut q = q4(8, 8, vec![0; 64], vec![128; 8], true);
    q.bits = Bits::B8;
    let t = pack_gptq(&q, GptqZeros::V1).unwrap();
    assert_eq!(t.qzeros, vec![0x7f7f_7f7f, 0x7f7f_7f7f]);
    assert_eq!(t.qweight.len(), 2 * 8);
}

#[test]
fn gptq_default_g_idx_is_k_over_group() {
    let q = q4(8, 64, vec![0; 512], vec![8; 16], true);
    let t = pack_gptq(&q, GptqZeros::V2).unwrap();
    assert_eq!(t.g_idx, (0..64).map(|k| k / 32).collect::<Vec<i32>>());
}

#[test]
fn awq_interleaves_columns_0_2_4_6_1_3_5_7() {
    // Row k = 0 holds columns n = 0..8 with codes n: field i holds column [0,2,4,6,1,3,5,7][i].
    let codes: Vec<u8> = (0..8).flat_map(|n| (0..8).map(move |_| n as u8)).collect();
    let zeros: Vec<u8> = (0..8).map(|n| (15 - n) as u8).collect();
    let t = pack_awq(&q4(8, 8, codes, zeros, false)).unwrap();
    assert_eq!(t.qweight, vec![0x7531_6420; 8]);
    // Zeros 15 - n interleaved the same way, no -1.
    assert_eq!(t.qzeros, vec![0x8ace_9bdfu32 as i32]);
}

#[test]
fn ct_weight_packed_stores_signed_plus_8_in_order() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    let t = pack_ct(&q).unwrap();
    // Row n: codes (k + n) % 16 at bits 4k.
    assert_eq!(t.weight_packed[0] as u32, 0x7654_3210);
    assert_eq!(t.weight_packed[1] as u32, 0x8765_4321);
    assert_eq!(t.weight_shape, [8, 8]);
    assert!(t.weight_zero_point.is_none());
}

#[test]
fn ct_zero_point_is_packed_along_n() {
    // 16 rows, 2 groups: zp[g][n] = n % 16 for g = 0, 15 - n % 16 for g = 1.
    let n = 16;
    let zeros: Vec<u8> = (0..n).map(|i| i as u8).chain((0..n).map(|i| 15 - i as u8)).collect();
    let mut q = q4(n, 64, vec![0; n * 64], zeros, false);
    q.group_size = GroupSize::Size(32);
    q.scales = vec![1.0; 2 * n];
    let t = pack_ct(&q).unwrap();
    // Shape [N/8, G] = [2, 2]: word (j, g) holds rows 8j..8j+8 of group g.
    let zp: Vec<u32> = t.weight_zero_point.unwrap().iter().map(|&w| w as u32).collect();
    assert_eq!(zp, vec![0x7654_3210, 0x89ab_cdef, 0xfedc_ba98, 0x0123_4567]);
    // Scale transposed to [N, G].
    assert_eq!(t.weight_scale.len(), 2 * n);
}

#[test]
fn ct_ragged_k_pads_the_last_word_with_zero_bits() {
    let mut q = q4(8, 12, vec![15; 96], vec![8; 8], true);
    q.group_size = GroupSize::PerChannel;
    let t = pack_ct(&q).unwrap();
    assert_eq!(t.weight_packed_shape(), [8, 2]);
    assert_eq!(t.weight_packed[0] as u32, 0xffff_ffff);
    assert_eq!(t.weight_packed[1] as u32, 0x0000_ffff);
    assert_eq!(unpack_ct(&t, GroupSize::PerChannel).unwrap(), q);
}

#[test]
fn v1_to_v2_adds_0x11111111_per_word() {
    let mut w = vec![0x7777_7777, 0x0123_4567];
    qzeros_v1_to_v2(&mut w, Bits::B4).unwrap();
    assert_eq!(w, vec![0x8888_8888u32 as i32, 0x1234_5678]);
    qzeros_v2_to_v1(&mut w, Bits::B4).unwrap();
    assert_eq!(w, vec![0x7777_7777, 0x0123_4567]);
    let mut w8 = vec![0x7f7f_7f7f];
    qzeros_v1_to_v2(&mut w8, Bits::B8).unwrap();
    assert_eq!(w8, vec![0x8080_8080u32 as i32]);
}

#[test]
fn bad_input_v1_zero_point_zero() {
    let mut zeros = vec![8u8; 16];
    zeros[9] = 0;
    let q = q4(8, 64, vec![0; 512], zeros, false);
    assert_eq!(
        pack_gptq(&q, GptqZeros::V1).unwrap_err(),
        IntError::GptqV1ZeroUnrepresentable { group: 1, col: 1 }
    );
}

#[test]
fn bad_input_v1_to_v2_would_carry() {
    let mut w = vec![0x7777_7777, 0x7f77_7777];
    let err = qzeros_v1_to_v2(&mut w, Bits::B4).unwrap_err();
    assert_eq!(
        err,
        IntError::ZeroConversionCarry { word: 1, field: 6, value: 15, direction: "v1 -> v2" }
    );
    assert_eq!(w, vec![0x7777_7777, 0x7f77_7777], "nothing is changed on error");
}

#[test]
fn bad_input_v2_to_v1_would_borrow() {
    let mut w = vec![0x8888_8880u32 as i32];
    let err = qzeros_v2_to_v1(&mut w, Bits::B4).unwrap_err();
    assert_eq!(
        err,
        IntError::ZeroConversionCarry { word: 0, field: 0, value: 0, direction: "v2 -> v1" }
    );
}

#[test]
fn bad_input_v1_stored_field_all_ones() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    let mut t = pack_gptq(&q, GptqZeros::V1).unwrap();
    t.qzeros[0] = 0x7777_77f7;
    let err = unpack_gptq(&t, GroupSize::PerChannel, false).unwrap_err();
    assert!(matches!(err, IntError::CodeOutOfRange { index: 1, value: 16, .. }), "{err}");
}

#[test]
fn bad_input_gptq_qweight_length() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    let mut t = pack_gptq(&q, GptqZeros::V2).unwrap();
    t.qweight.pop();
    let err = unpack_gptq(&t, GroupSize::PerChannel, true).unwrap_err();
    assert!(
        matches!(err, IntError::LengthMismatch { what: "qweight", expected: 8, got: 7, .. }),
        "{err}"
    );
}

#[test]
fn bad_input_gptq_negative_g_idx() {
    let q = q4(8, 64, vec![0; 512], vec![8; 16], true);
    let mut t = pack_gptq(&q, GptqZeros::V2).unwrap();
    t.g_idx[3] = -1;
    let err = unpack_gptq(&t, GroupSize::Size(32), true).unwrap_err();
    assert_eq!(err, IntError::GIdxOutOfRange { index: 3, value: -1, groups: 2 });
}

#[test]
fn bad_input_gptq_sym_flag_but_asym_zeros() {
    let q = q4(8, 8, ramp(), vec![3; 8], false);
    let t = pack_gptq(&q, GptqZeros::V2).unwrap();
    let err = unpack_gptq(&t, GroupSize::PerChannel, true).unwrap_err();
    assert_eq!(err, IntError::NotSymmetric { group: 0, col: 0, value: 3, mid: 8 });
}

#[test]
fn bad_input_gptq_k_not_multiple_of_8() {
    let q = q4(8, 12, vec![0; 96], vec![8; 8], true);
    let err = pack_gptq(&q, GptqZeros::V2).unwrap_err();
    assert_eq!(
        err,
        IntError::NotMultiple { format: "GPTQ qweight", dim: "K", value: 12, multiple: 8 }
    );
}

#[test]
fn bad_input_awq_n_not_multiple_of_8() {
    let t = AwqTensors { n: 12, k: 8, qweight: vec![], qzeros: vec![], scales: vec![] };
    let err = unpack_awq(&t, GroupSize::PerChannel).unwrap_err();
    assert_eq!(
        err,
        IntError::NotMultiple { format: "AWQ qweight", dim: "N", value: 12, multiple: 8 }
    );
}

#[test]
fn bad_input_awq_8bit() {
    let mut q = q4(8, 8, vec![0; 64], vec![128; 8], true);
    q.bits = Bits::B8;
    assert_eq!(pack_awq(&q).unwrap_err(), IntError::AwqBits { bits: 8 });
}

#[test]
fn bad_input_awq_act_order() {
    let mut q = q4(8, 64, vec![0; 512], vec![8; 16], true);
    q.g_idx = Some((0..64).map(|k| (k % 2) as u32).collect());
    assert_eq!(pack_awq(&q).unwrap_err(), IntError::AwqActOrder);
}

#[test]
fn bad_input_ct_weight_shape_mismatch() {
    let q = q4(8, 8, ramp(), vec![8; 8], true);
    let mut t = pack_ct(&q).unwrap();
    t.weight_shape = [8, 16];
    assert_eq!(
        unpack_ct(&t, GroupSize::PerChannel).unwrap_err(),
        IntError::WeightShape { got: [8, 16], n: 8, k: 8 }
    );
}

#[test]
fn bad_input_ct_zero_point_length() {
    let q = q4(8, 8, ramp(), vec![3; 8], false);
    let mut t = pack_ct(&q).unwrap();
    t.weight_zero_point.as_mut().unwrap().push(0);
    let err = unpack_ct(&t, GroupSize::PerChannel).unwrap_err();
    assert!(matches!(err, IntError::LengthMismatch { what: "weight_zero_point", .. }), "{err}");
}

#[test]
fn bad_input_code_out_of_range() {
    let mut q = q4(8, 8, ramp(), vec![8; 8], true);
    q.codes[10] = 16;
    assert!(matches!(
        pack_ct(&q).unwrap_err(),
        IntError::CodeOutOfRange { what: "codes", index: 10, value: 16, bits: 4, max: 15 }
    ));
}
