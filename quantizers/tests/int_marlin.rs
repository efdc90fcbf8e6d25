//! Marlin: the documented permutation values, the explicit scale permutation lists, round trips
//! of every layout, the direct Marlin dequantizer against the plain one, and one test per
//! pre-flight rule.

use proptest::prelude::*;
use qtool_quantizers::int::marlin::{
    awq_to_marlin_zero_points, marlin_permute_weights, marlin_unpermute_weights,
    marlin_zero_points, sort_indices,
};
use qtool_quantizers::int::{
    check_marlin_shape, dequantize, marlin_dequantize, marlin_scale_perm, marlin_scale_perm_single,
    marlin_weight_perm, pack_awq, pack_marlin, unpack_marlin, Bits, GroupSize, IntError,
    MarlinKind, MarlinRuleError, MarlinShape, Parallel, QuantizedInt,
};

#[test]
fn weight_perm_4bit_first_values() {
    let p = marlin_weight_perm(Bits::B4);
    assert_eq!(p[..16], [0, 128, 8, 136, 16, 144, 24, 152, 256, 384, 264, 392, 272, 400, 280, 408]);
}

#[test]
fn weight_perm_8bit_first_values() {
    let p = marlin_weight_perm(Bits::B8);
    assert_eq!(p[..8], [0, 128, 16, 144, 8, 136, 24, 152]);
}

#[test]
fn weight_perms_are_permutations_of_1024() {
    for bits in [Bits::B4, Bits::B8] {
        let mut p = marlin_weight_perm(bits);
        assert_eq!(p.len(), 1024);
        p.sort_unstable();
        assert!(p.iter().enumerate().all(|(i, &v)| i == v));
    }
}

#[test]
fn scale_perm_is_the_documented_list() {
    let expect: Vec<usize> = [
        [0, 8, 16, 24, 32, 40, 48, 56],
        [1, 9, 17, 25, 33, 41, 49, 57],
        [2, 10, 18, 26, 34, 42, 50, 58],
        [3, 11, 19, 27, 35, 43, 51, 59],
        [4, 12, 20, 28, 36, 44, 52, 60],
        [5, 13, 21, 29, 37, 45, 53, 61],
        [6, 14, 22, 30, 38, 46, 54, 62],
        [7, 15, 23, 31, 39, 47, 55, 63],
    ]
    .concat();
    assert_eq!(marlin_scale_perm().to_vec(), expect);
}

#[test]
fn scale_perm_single_is_the_documented_list() {
    assert_eq!(
        marlin_scale_perm_single(),
        [
            0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27, 4, 5, 12, 13, 20, 21, 28, 29,
            6, 7, 14, 15, 22, 23, 30, 31
        ]
    );
}

#[test]
fn first_word_of_b_holds_the_permuted_tile_entries() {
    // q_w[k][n] = (k + 3n) % 16 on a 16 x 64 weight: B[0][0] packs w1[perm[0..8]], and
    // w1[t·256 + r·16 + c] = q_w[r][16t + c].
    let (k, n) = (16, 64);
    let q_w: Vec<u8> = (0..k).flat_map(|r| (0..n).map(move |c| ((r + 3 * c) % 16) as u8)).collect();
    let b = marlin_permute_weights(&q_w, k, n, Bits::B4).unwrap();
    assert_eq!(b.len(), 2 * n);
    let perm = marlin_weight_perm(Bits::B4);
    let w1 = |i: usize| {
        let (t, r, c) = (i / 256, (i % 256) / 16, i % 16);
        q_w[r * n + 16 * t + c] as u32
    };
    let expect = (0..8).fold(0u32, |w, i| w | (w1(perm[i]) << (4 * i)));
    assert_eq!(b[0] as u32, expect);
    assert_eq!(marlin_unpermute_weights(&b, k, n, Bits::B4).unwrap(), q_w);
}

fn arb_marlin(kind: MarlinKind) -> impl Strategy<Value = QuantizedInt> {
    (
        prop::sample::select(vec![Bits::B4, Bits::B8]),
        1usize..=3,
        1usize..=2,
        prop::sample::select(vec![
            GroupSize::Size(32),
            GroupSize::Size(64),
            GroupSize::Size(128),
            GroupSize::PerChannel,
        ]),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(bits, n64, k128, group, act, seed)| {
            let (n, k) = (64 * n64, 128 * k128);
            let groups = group.num_groups(k).unwrap();
            let mut x = seed | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let max = bits.max_code() as u64 + 1;
            let symmetric = kind != MarlinKind::Awq;
            let codes = (0..n * k).map(|_| (next() % max) as u8).collect();
            let zeros = if symmetric {
                vec![bits.mid() as u8; groups * n]
            } else {
                (0..groups * n).map(|_| (next() % max) as u8).collect()
            };
            let scales = (0..groups * n).map(|_| ((next() % 997) as f32 + 1.0) / 256.0).collect();
            let g_idx = (kind == MarlinKind::Gptq && act && groups > 1).then(|| {
                let cols = group.columns(k);
                let mut g: Vec<u32> = (0..k).map(|i| (i / cols) as u32).collect();
                for i in (1..k).rev() {
                    g.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                g
            });
            QuantizedInt { bits, n, k, group_size: group, symmetric, codes, scales, zeros, g_idx }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn gptq_marlin_round_trips_and_dequantizes_like_plain(q in arb_marlin(MarlinKind::Gptq)) {
        let t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
        prop_assert_eq!(t.b_shape(), [q.k / 16, 16 * q.n / q.bits.per_word()]);
        prop_assert!(t.zp.is_none());
        prop_assert_eq!(&unpack_marlin(&t).unwrap(), &q);
        prop_assert_eq!(marlin_dequantize(&t).unwrap(), dequantize(&q).unwrap());
    }

    #[test]
    fn awq_marlin_round_trips_and_dequantizes_like_plain(q in arb_marlin(MarlinKind::Awq)) {
        let t = pack_marlin(&q, MarlinKind::Awq).unwrap();
        prop_assert_eq!(&unpack_marlin(&t).unwrap(), &q);
        prop_assert_eq!(marlin_dequantize(&t).unwrap(), dequantize(&q).unwrap());
    }

    #[test]
    fn awq_qzeros_go_straight_to_marlin_zero_points(q in arb_marlin(MarlinKind::Awq)) {
        prop_assume!(q.bits == Bits::B4);
        let awq = pack_awq(&q).unwrap();
        let groups = q.group_size.num_groups(q.k).unwrap();
        prop_assert_eq!(
            awq_to_marlin_zero_points(&awq.qzeros, groups, q.n).unwrap(),
            marlin_zero_points(&q.zeros, groups, q.n, Bits::B4).unwrap()
        );
    }
}

#[test]
fn act_order_rows_are_sorted_by_group_stably() {
    let g_idx = [1u32, 0, 1, 0, 2, 0];
    assert_eq!(sort_indices(&g_idx), vec![1, 3, 5, 0, 2, 4]);
}

#[test]
fn grouped_scales_use_the_64_permutation_and_channel_the_32() {
    let n = 64;
    let mut q = QuantizedInt {
        bits: Bits::B4,
        n,
        k: 128,
        group_size: GroupSize::Size(64),
        symmetric: true,
        codes: vec![8; n * 128],
        scales: (0..2 * n).map(|i| i as f32 + 1.0).collect(),
        zeros: vec![8; 2 * n],
        g_idx: None,
    };
    let t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
    let sp = marlin_scale_perm();
    assert_eq!(t.s[..64], sp.map(|p| p as f32 + 1.0));
    q.group_size = GroupSize::PerChannel;
    q.scales.truncate(n);
    q.zeros.truncate(n);
    let t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
    let single = marlin_scale_perm_single();
    assert_eq!(t.s[..32], single.map(|p| p as f32 + 1.0));
    assert_eq!(t.s[32..64], single.map(|p| p as f32 + 33.0));
}

#[test]
fn group_equal_to_k_uses_the_single_permutation() {
    // vLLM: grouped permutation only when group_size < K.
    let n = 64;
    let q = QuantizedInt {
        bits: Bits::B4,
        n,
        k: 128,
        group_size: GroupSize::Size(128),
        symmetric: true,
        codes: vec![8; n * 128],
        scales: (0..n).map(|i| i as f32 + 1.0).collect(),
        zeros: vec![8; n],
        g_idx: None,
    };
    let t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
    assert_eq!(t.s[..32], marlin_scale_perm_single().map(|p| p as f32 + 1.0));
}

fn shape(n: usize, k: usize, group: i64) -> MarlinShape {
    MarlinShape { n, k, bits: 4, group_size: group, symmetric: true, act_order: false }
}

#[test]
fn preflight_accepts_a_llama_shape_on_every_tp() {
    for tp in [1, 2, 4, 8] {
        for par in [Parallel::Column, Parallel::Row] {
            // Llama-3-8B MLP: 14336 = 112 groups of 128, splits evenly on 8 ranks.
            check_marlin_shape(&shape(4096, 14336, 128), MarlinKind::Gptq, tp, par)
                .unwrap_or_else(|e| panic!("tp {tp} {par:?}: {e}"));
        }
    }
}

#[test]
fn preflight_refuses_llama2_7b_down_proj_on_4_row_ranks() {
    // 11008 / 4 = 2752 = 21.5 groups of 128: each rank would hold half a group.
    assert_eq!(
        check_marlin_shape(&shape(4096, 11008, 128), MarlinKind::Gptq, 4, Parallel::Row),
        Err(MarlinRuleError::GroupSplit {
            k_part: 2752,
            group: 128,
            k: 11008,
            tp: 4,
            parallel: "row"
        })
    );
    assert_eq!(
        check_marlin_shape(&shape(4096, 11008, 128), MarlinKind::Gptq, 2, Parallel::Row),
        Ok(())
    );
}

#[test]
fn preflight_rule_bits() {
    let mut s = shape(128, 128, 128);
    s.bits = 3;
    assert_eq!(
        check_marlin_shape(&s, MarlinKind::Gptq, 1, Parallel::Column),
        Err(MarlinRuleError::Bits { bits: 3 })
    );
}

#[test]
fn preflight_rule_group_size() {
    assert_eq!(
        check_marlin_shape(&shape(128, 256, 256), MarlinKind::Gptq, 1, Parallel::Column),
        Err(MarlinRuleError::GroupSize { group: 256 })
    );
}

#[test]
fn preflight_rule_legacy_group() {
    assert_eq!(
        check_marlin_shape(&shape(128, 256, 64), MarlinKind::Legacy, 1, Parallel::Column),
        Err(MarlinRuleError::Legacy { bits: 4, group: 64 })
    );
}

#[test]
fn preflight_rule_symmetric_only_for_gptq() {
    let mut s = shape(128, 256, 128);
    s.symmetric = false;
    assert_eq!(
        check_marlin_shape(&s, MarlinKind::Gptq, 1, Parallel::Column),
        Err(MarlinRuleError::Asymmetric)
    );
    assert_eq!(check_marlin_shape(&s, MarlinKind::Awq, 1, Parallel::Column), Ok(()));
}

#[test]
fn preflight_rule_no_act_order_for_awq() {
    let mut s = shape(128, 256, 128);
    s.act_order = true;
    assert_eq!(
        check_marlin_shape(&s, MarlinKind::Awq, 1, Parallel::Column),
        Err(MarlinRuleError::ActOrder { kind: "AWQ-Marlin" })
    );
}

#[test]
fn preflight_rule_tp_size() {
    assert_eq!(
        check_marlin_shape(&shape(768, 768, 128), MarlinKind::Gptq, 3, Parallel::Column),
        Err(MarlinRuleError::TpSize { tp: 3 })
    );
}

#[test]
fn preflight_rule_tp_split_divides() {
    assert_eq!(
        check_marlin_shape(&shape(128, 580, -1), MarlinKind::Gptq, 8, Parallel::Row),
        Err(MarlinRuleError::TpSplit { dim: "K", value: 580, tp: 8, parallel: "row" })
    );
    assert_eq!(
        check_marlin_shape(&shape(196, 128, -1), MarlinKind::Gptq, 8, Parallel::Column),
        Err(MarlinRuleError::TpSplit { dim: "N", value: 196, tp: 8, parallel: "column" })
    );
}

#[test]
fn preflight_rule_n_partition_64() {
    assert_eq!(
        check_marlin_shape(&shape(96, 128, 128), MarlinKind::Gptq, 1, Parallel::Column),
        Err(MarlinRuleError::NPartition { n_part: 96, n: 96, tp: 1, parallel: "column" })
    );
    // 256 is fine alone but not split 8 ways (32 per rank).
    assert_eq!(
        check_marlin_shape(&shape(256, 128, 128), MarlinKind::Gptq, 8, Parallel::Column),
        Err(MarlinRuleError::NPartition { n_part: 32, n: 256, tp: 8, parallel: "column" })
    );
}

#[test]
fn preflight_rule_k_partition_128() {
    assert_eq!(
        check_marlin_shape(&shape(128, 160, 32), MarlinKind::Gptq, 1, Parallel::Column),
        Err(MarlinRuleError::KPartition { k_part: 160, k: 160, tp: 1, parallel: "column" })
    );
    assert_eq!(
        check_marlin_shape(&shape(128, 256, -1), MarlinKind::Gptq, 4, Parallel::Row),
        Err(MarlinRuleError::KPartition { k_part: 64, k: 256, tp: 4, parallel: "row" })
    );
}

#[test]
fn preflight_rule_rank_slice_splits_a_group() {
    // K = 384 over 2 ranks: 192 columns each, which cuts the second 128-group in half.
    assert_eq!(
        check_marlin_shape(&shape(128, 384, 128), MarlinKind::Gptq, 2, Parallel::Row),
        Err(MarlinRuleError::GroupSplit {
            k_part: 192,
            group: 128,
            k: 384,
            tp: 2,
            parallel: "row"
        })
    );
}

#[test]
fn pack_marlin_refuses_shapes_and_names_the_rule() {
    let q = QuantizedInt {
        bits: Bits::B4,
        n: 96,
        k: 128,
        group_size: GroupSize::PerChannel,
        symmetric: true,
        codes: vec![8; 96 * 128],
        scales: vec![1.0; 96],
        zeros: vec![8; 96],
        g_idx: None,
    };
    let err = pack_marlin(&q, MarlinKind::Gptq).unwrap_err();
    assert!(matches!(err, IntError::Marlin(MarlinRuleError::NPartition { n_part: 96, .. })));
    assert!(err.to_string().contains("N_partition % 64 == 0"), "{err}");
}

#[test]
fn bad_input_marlin_b_length() {
    let q = QuantizedInt {
        bits: Bits::B4,
        n: 64,
        k: 128,
        group_size: GroupSize::PerChannel,
        symmetric: true,
        codes: vec![8; 64 * 128],
        scales: vec![1.0; 64],
        zeros: vec![8; 64],
        g_idx: None,
    };
    let mut t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
    t.b.truncate(10);
    assert!(matches!(unpack_marlin(&t).unwrap_err(), IntError::LengthMismatch { what: "B", .. }));
    assert!(matches!(
        marlin_dequantize(&t).unwrap_err(),
        IntError::LengthMismatch { what: "B", .. }
    ));
}

#[test]
fn bad_input_marlin_sort_indices_not_a_permutation() {
    let mut g_idx: Vec<u32> = (0..128).map(|k| (k % 2) as u32).collect();
    g_idx[0] = 1;
    g_idx[1] = 0;
    let q = QuantizedInt {
        bits: Bits::B4,
        n: 64,
        k: 128,
        group_size: GroupSize::Size(64),
        symmetric: true,
        codes: vec![8; 64 * 128],
        scales: vec![1.0; 128],
        zeros: vec![8; 128],
        g_idx: Some(g_idx),
    };
    let mut t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
    t.sort_indices.as_mut().unwrap()[5] = t.sort_indices.as_ref().unwrap()[6];
    assert!(matches!(
        marlin_dequantize(&t).unwrap_err(),
        IntError::SortIndicesNotPermutation { index: 6, k: 128, .. }
    ));
    t.sort_indices = None;
    assert_eq!(unpack_marlin(&t).unwrap_err(), IntError::MissingSortIndices);
}

#[test]
fn bad_input_scale_permutation_needs_n_multiple_of_64() {
    use qtool_quantizers::int::marlin::marlin_permute_scales;
    let err = marlin_permute_scales(&[1.0; 96], 1, 96, 128, GroupSize::PerChannel).unwrap_err();
    assert_eq!(
        err,
        IntError::NotMultiple { format: "Marlin s", dim: "N", value: 96, multiple: 64 }
    );
    let err = marlin_zero_points(&[8; 100], 1, 128, Bits::B4).unwrap_err();
    assert!(matches!(err, IntError::LengthMismatch { what: "zp", expected: 128, got: 100, .. }));
}

#[test]
fn supported_tp_lists_the_splits_that_pass() {
    use qtool_quantizers::int::marlin_supported_tp;
    // Llama-2-7B down_proj (K = 11008 = 86 groups of 128): row-parallel on 1 or 2 ranks only.
    let s = shape(4096, 11008, 128);
    assert_eq!(marlin_supported_tp(&s, MarlinKind::Gptq, Parallel::Row), vec![1, 2]);
    assert_eq!(marlin_supported_tp(&s, MarlinKind::Gptq, Parallel::Column), vec![1, 2, 4, 8]);
}
