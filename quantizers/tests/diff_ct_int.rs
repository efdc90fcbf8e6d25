//! compressed-tensors pack-quantized candidates written by `int::pack_ct` (from
//! `int::rtn::quantize`) and read back by the diff's range decoder: the diff must see exactly
//! `int::rtn::dequantize`'s values.

mod diff_support;

use diff_support::{close, reference_metrics, values, Builder};
use qtool_formats::{DType, TensorDType};
use qtool_quantizers::diff::{diff, DiffOptions, Input, Registry, RowStatus};
use qtool_quantizers::int::pack::i32_le_bytes;
use qtool_quantizers::int::rtn::{self, Bits, Convention, GroupSize, RtnConfig};
use qtool_quantizers::int::{pack_ct, CtPackedTensors};

fn cand(layer: &str, t: &CtPackedTensors) -> Builder {
    let i32t = TensorDType::St(DType::I32);
    let [pn, pw] = t.weight_packed_shape();
    let [sn, sg] = t.weight_scale_shape();
    let scales: Vec<f32> = t.weight_scale.clone();
    let shape: Vec<u8> = t.weight_shape.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut b = Builder::safetensors()
        .raw(
            &format!("{layer}.weight_packed"),
            i32t,
            &[pn as u64, pw as u64],
            &i32_le_bytes(&t.weight_packed),
        )
        .f32(&format!("{layer}.weight_scale"), &[sn as u64, sg as u64], &scales)
        .raw(&format!("{layer}.weight_shape"), TensorDType::St(DType::I64), &[2], &shape);
    if let Some(zp) = &t.weight_zero_point {
        let [zr, zc] = t.weight_zero_point_shape();
        b = b.raw(
            &format!("{layer}.weight_zero_point"),
            i32t,
            &[zr as u64, zc as u64],
            &i32_le_bytes(zp),
        );
    }
    if let Some(g) = &t.weight_g_idx {
        b = b.raw(&format!("{layer}.weight_g_idx"), i32t, &[g.len() as u64], &i32_le_bytes(g));
    }
    b
}

fn check(bits: Bits, group: GroupSize, symmetric: bool, act_order: bool, scheme: &str) {
    check_shape(24, 64, bits, group, symmetric, act_order, scheme);
}

fn check_shape(
    n: usize,
    k: usize,
    bits: Bits,
    group: GroupSize,
    symmetric: bool,
    act_order: bool,
    scheme: &str,
) {
    let w = values(n * k, 40 + k as u64);
    let cfg =
        RtnConfig { bits, group_size: group, symmetric, convention: Convention::CompressedTensors };
    let groups = group.num_groups(k).unwrap();
    let g_idx: Option<Vec<u32>> =
        act_order.then(|| (0..k as u32).map(|c| (c * 7 % k as u32) % groups as u32).collect());
    let q = rtn::quantize(&w, n, k, &cfg, g_idx.as_deref()).unwrap();
    let deq = rtn::dequantize(&q).unwrap();
    let t = pack_ct(&q).unwrap();
    let r = Builder::safetensors().f32("m.proj.weight", &[n as u64, k as u64], &w).build();
    let c = cand("m.proj", &t).build();
    let rep = diff(
        &Input::new(&r),
        &Input::new(&c),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(rep.rows.len(), 1, "{scheme}: {:#?}", rep.rows);
    let row = &rep.rows[0];
    assert_eq!(row.status, RowStatus::Compared, "{scheme}: {:?}", row.reason);
    assert_eq!(row.scheme.as_deref(), Some(scheme));
    assert_eq!(row.cand_name, None, "matched as the logical m.proj.weight");
    let m = row.metrics.unwrap();
    let (mse, max_abs, _, sqnr, cos) = reference_metrics(&w, &deq);
    assert!(close(m.mse, mse, 1e-12), "{scheme}: {} vs {mse}", m.mse);
    assert!(
        close(m.max_abs, max_abs, 0.0)
            && close(m.sqnr_db, sqnr, 1e-12)
            && close(m.cosine, cos, 1e-12)
    );
    let stored = t.weight_packed.len() * 4
        + t.weight_scale.len() * 4
        + t.weight_zero_point.as_ref().map_or(0, |z| z.len() * 4)
        + t.weight_g_idx.as_ref().map_or(0, |g| g.len() * 4);
    assert_eq!(row.bits_per_weight, Some(stored as f64 * 8.0 / (n * k) as f64), "{scheme}");
}

#[test]
fn int4_symmetric_groups() {
    check(Bits::B4, GroupSize::Size(32), true, false, "int4_g32/compressed-tensors");
}

#[test]
fn int4_asymmetric_with_zero_points() {
    check(Bits::B4, GroupSize::Size(16), false, false, "int4_g16/compressed-tensors");
}

#[test]
fn int8_per_channel() {
    check(Bits::B8, GroupSize::PerChannel, true, false, "int8_channel/compressed-tensors");
}

#[test]
fn int4_act_order_g_idx() {
    check(Bits::B4, GroupSize::Size(16), true, true, "int4_actorder/compressed-tensors");
}

#[test]
fn g_idx_naming_a_missing_group_is_not_compared() {
    let (n, k) = (8usize, 32usize);
    let w = values(n * k, 1);
    let cfg = RtnConfig {
        bits: Bits::B4,
        group_size: GroupSize::Size(16),
        symmetric: true,
        convention: Convention::CompressedTensors,
    };
    let mut t = pack_ct(&rtn::quantize(&w, n, k, &cfg, None).unwrap()).unwrap();
    t.weight_g_idx = Some(vec![5; k]);
    let r = Builder::safetensors().f32("m.weight", &[n as u64, k as u64], &w).build();
    let c = cand("m", &t).build();
    let rep = diff(
        &Input::new(&r),
        &Input::new(&c),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(rep.rows[0].status, RowStatus::NotCompared);
    let why = rep.rows[0].reason.as_deref().unwrap();
    assert!(why.contains("m.weight_g_idx") && why.contains("group 5"), "{why}");
}

#[test]
fn chunk_boundaries_inside_rows_read_the_right_scales() {
    // 2048 × 160 = 327,680 elements: two chunks, the boundary in the middle of row 1638.
    check_shape(
        2048,
        160,
        Bits::B4,
        GroupSize::Size(32),
        false,
        false,
        "int4_g32/compressed-tensors",
    );
}
