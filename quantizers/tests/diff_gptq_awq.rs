//! GPTQ (v1 zeros) and AWQ candidates written by `int::pack_gptq` / `int::pack_awq` and read
//! back by the diff's range decoder: the diff must see exactly `int::rtn::dequantize`'s values.

mod diff_support;

use diff_support::{close, reference_metrics, values, Builder};
use qtool_formats::{DType, TensorDType};
use qtool_quantizers::diff::{diff, DiffOptions, Input, Registry, RowStatus};
use qtool_quantizers::int::pack::i32_le_bytes;
use qtool_quantizers::int::rtn::{self, Bits, Convention, GroupSize, RtnConfig};
use qtool_quantizers::int::{pack_awq, pack_gptq, GptqZeros};

const I32: TensorDType = TensorDType::St(DType::I32);

fn run_one(
    r: &diff_support::MemSource,
    c: &diff_support::MemSource,
) -> qtool_quantizers::diff::DiffRow {
    let rep =
        diff(&Input::new(r), &Input::new(c), &Registry::standard(), &DiffOptions::default(), None)
            .unwrap();
    assert_eq!(rep.rows.len(), 1, "{:#?}", rep.rows);
    rep.rows[0].clone()
}

fn gptq(bits: Bits, group: GroupSize, act_order: bool, scheme: &str) {
    gptq_shape(32, 64, bits, group, act_order, scheme);
}

fn gptq_shape(n: usize, k: usize, bits: Bits, group: GroupSize, act_order: bool, scheme: &str) {
    let w = values(n * k, 50 + bits.get() as u64);
    let cfg = RtnConfig { bits, group_size: group, symmetric: false, convention: Convention::Gptq };
    let groups = group.num_groups(k).unwrap();
    let g_idx: Option<Vec<u32>> =
        act_order.then(|| (0..k as u32).map(|c| (c * 5 % k as u32) % groups as u32).collect());
    let q = rtn::quantize(&w, n, k, &cfg, g_idx.as_deref()).unwrap();
    let deq = rtn::dequantize(&q).unwrap();
    let t = pack_gptq(&q, GptqZeros::V1).unwrap();
    let [qr, qc] = t.qweight_shape();
    let [zr, zc] = t.qzeros_shape();
    let [sr, sc] = t.scales_shape();
    let c = Builder::safetensors()
        .raw("m.qweight", I32, &[qr as u64, qc as u64], &i32_le_bytes(&t.qweight))
        .raw("m.qzeros", I32, &[zr as u64, zc as u64], &i32_le_bytes(&t.qzeros))
        .bf16("m.scales", &[sr as u64, sc as u64], &t.scales)
        .raw("m.g_idx", I32, &[k as u64], &i32_le_bytes(&t.g_idx))
        .build();
    // Scales go through bf16 in the file, so the expected values use the stored scales.
    let mut q16 = q.clone();
    q16.scales = diff_support::bf16_round(&q.scales);
    let deq16 = rtn::dequantize(&q16).unwrap();
    let r = Builder::safetensors().f32("m.weight", &[n as u64, k as u64], &w).build();
    let row = run_one(&r, &c);
    assert_eq!(row.status, RowStatus::Compared, "{scheme}: {:?}", row.reason);
    assert_eq!(row.scheme.as_deref(), Some(scheme));
    let m = row.metrics.unwrap();
    let (mse, max_abs, _, sqnr, _) = reference_metrics(&w, &deq16);
    assert!(
        close(m.mse, mse, 1e-12) && close(m.max_abs, max_abs, 0.0) && close(m.sqnr_db, sqnr, 1e-12),
        "{scheme}"
    );
    // And bf16 scales are what separates it from the f32 dequantization, not a decoding error.
    assert!(reference_metrics(&deq, &deq16).0 < 1e-4);
}

#[test]
fn gptq_int4_groups() {
    gptq(Bits::B4, GroupSize::Size(32), false, "int4_g32/gptq(v1)");
}

#[test]
fn gptq_int8_per_channel() {
    gptq(Bits::B8, GroupSize::PerChannel, false, "int8_channel/gptq(v1)");
}

#[test]
fn gptq_act_order() {
    gptq(Bits::B4, GroupSize::Size(16), true, "int4_actorder/gptq(v1)");
}

#[test]
fn awq_int4_groups_with_interleave() {
    let (n, k) = (32usize, 64usize);
    let w = values(n * k, 60);
    let cfg = RtnConfig {
        bits: Bits::B4,
        group_size: GroupSize::Size(32),
        symmetric: false,
        convention: Convention::Awq,
    };
    let q = rtn::quantize(&w, n, k, &cfg, None).unwrap();
    let deq = rtn::dequantize(&q).unwrap();
    let t = pack_awq(&q).unwrap();
    let [qr, qc] = t.qweight_shape();
    let [zr, zc] = t.qzeros_shape();
    let c = Builder::safetensors()
        .raw("m.qweight", I32, &[qr as u64, qc as u64], &i32_le_bytes(&t.qweight))
        .raw("m.qzeros", I32, &[zr as u64, zc as u64], &i32_le_bytes(&t.qzeros))
        .f32("m.scales", &[zr as u64, n as u64], &t.scales)
        .build();
    let r = Builder::safetensors().f32("m.weight", &[n as u64, k as u64], &w).build();
    let row = run_one(&r, &c);
    assert_eq!(row.scheme.as_deref(), Some("int4_g32/awq"));
    let m = row.metrics.unwrap();
    let (mse, max_abs, _, sqnr, cos) = reference_metrics(&w, &deq);
    assert!(close(m.mse, mse, 1e-12) && close(m.max_abs, max_abs, 0.0));
    assert!(close(m.sqnr_db, sqnr, 1e-12) && close(m.cosine, cos, 1e-12));
}

#[test]
fn shapes_that_fit_neither_layout_are_not_compared() {
    let c = Builder::safetensors()
        .raw("m.qweight", I32, &[8, 7], &[0; 224])
        .raw("m.qzeros", I32, &[1, 1], &[0; 4])
        .f32("m.scales", &[1, 32], &[1.0; 32])
        .build();
    let r = Builder::safetensors().f32("m.weight", &[32, 64], &values(2048, 1)).build();
    let row = run_one(&r, &c);
    assert_eq!(row.status, RowStatus::NotCompared);
    assert!(row.reason.as_deref().unwrap().contains("fit neither GPTQ nor AWQ"));
}

#[test]
fn gptq_chunk_boundaries_inside_rows_read_the_right_scales() {
    // 1024 × 320 = 327,680 elements: the chunk boundary falls inside row 819.
    gptq_shape(1024, 320, Bits::B4, GroupSize::Size(64), true, "int4_actorder/gptq(v1)");
}
