//! The diff driver on in-memory checkpoints: matching, decoding by scheme, metrics, accounting.

mod diff_support;

use diff_support::{bf16_round, close, reference_metrics, values, Builder};
use qtool_formats::{DType, GgmlType, TensorDType};
use qtool_quantizers::diff::{
    diff, DiffError, DiffOptions, Input, QkHeads, Registry, RowStatus, DIFF_CHUNK,
};

fn run(
    r: &dyn qtool_formats::TensorSource,
    c: &dyn qtool_formats::TensorSource,
) -> Result<qtool_quantizers::diff::DiffReport, DiffError> {
    diff(&Input::new(r), &Input::new(c), &Registry::standard(), &DiffOptions::default(), None)
}

#[test]
fn identical_checkpoints_give_infinite_sqnr_everywhere() {
    let w = values(64 * 32, 1);
    let src = Builder::safetensors()
        .bf16("model.layers.0.self_attn.q_proj.weight", &[64, 32], &w)
        .f32("model.norm.weight", &[32], &w[..32])
        .build();
    let rep = run(&src, &src).unwrap();
    assert_eq!(rep.summary.compared, 2);
    assert_eq!(rep.summary.identical, 2);
    for row in &rep.rows {
        let m = row.metrics.unwrap();
        assert_eq!((m.sqnr_db, m.cosine, m.mse, m.max_abs), (f64::INFINITY, 1.0, 0.0, 0.0));
    }
    assert_eq!(rep.summary.worst_sqnr_db, Some(f64::INFINITY));
    assert_eq!(rep.summary.mean_sqnr_db, None, "no finite SQNR to average");
    assert_eq!(rep.summary.size_ratio, Some(1.0));
}

#[test]
fn comfy_fp8_current_layout_is_one_tensor_decoded_by_its_scale() {
    let w = bf16_round(&values(48 * 40, 2));
    let r = Builder::safetensors().bf16("blocks.0.attn.q.weight", &[48, 40], &w).build();
    let (b, deq) = Builder::safetensors().comfy_fp8("blocks.0.attn.q", &[48, 40], &w, false);
    let c = b.build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1, "scale, comfy_quant and input_scale are parts, not tensors");
    let row = &rep.rows[0];
    assert_eq!(row.status, RowStatus::Compared);
    assert_eq!(row.scheme.as_deref(), Some("fp8_e4m3fn_scaled/comfy"));
    assert_eq!(row.ref_scheme.as_deref(), Some("BF16"));
    // Weight bytes + the 4-byte scale; comfy_quant and input_scale encode no weight.
    assert_eq!(row.cand_bytes, Some(48 * 40 + 4));
    assert_eq!(row.bits_per_weight, Some((48.0 * 40.0 + 4.0) * 8.0 / (48.0 * 40.0)));
    assert_eq!(row.ref_bits_per_weight, Some(16.0));
    let m = row.metrics.unwrap();
    let (mse, max_abs, rel, sqnr, cos) = reference_metrics(&w, &deq);
    assert!(close(m.mse, mse, 1e-12), "{} vs {mse}", m.mse);
    assert!(close(m.max_abs, max_abs, 0.0));
    assert!(close(m.rel_fro, rel, 1e-12));
    assert!(close(m.sqnr_db, sqnr, 1e-12));
    assert!(close(m.cosine, cos, 1e-12));
    assert!(m.sqnr_db > 25.0 && m.sqnr_db < 45.0, "fp8 e4m3 SQNR is ~30 dB: {}", m.sqnr_db);
}

#[test]
fn comfy_fp8_legacy_layout_with_marker() {
    let w = bf16_round(&values(16 * 16, 3));
    let r = Builder::safetensors().bf16("x.weight", &[16, 16], &w).build();
    let (b, deq) = Builder::safetensors().comfy_fp8("x", &[16, 16], &w, true);
    let c = b.raw("scaled_fp8", TensorDType::St(DType::F8E4M3), &[0], &[]).build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.cand_markers, ["scaled_fp8"]);
    assert_eq!(rep.rows[0].scheme.as_deref(), Some("fp8_e4m3fn_scaled/legacy"));
    let (mse, ..) = reference_metrics(&w, &deq);
    assert!(close(rep.rows[0].metrics.unwrap().mse, mse, 1e-12));
}

#[test]
fn per_row_fp8_scales_multiply_each_row() {
    per_row_fp8(4, 8);
}

#[test]
fn per_row_fp8_scales_across_chunk_boundaries() {
    // 3000 × 100 elements: the first chunk ends inside row 2621.
    per_row_fp8(3000, 100);
}

fn per_row_fp8(rows: u64, cols: u64) {
    let w = values((rows * cols) as usize, 4);
    let scales: Vec<f32> = (0..rows).map(|r| [0.5f32, 0.25, 2.0, 1.0][r as usize % 4]).collect();
    let mut codes = Vec::new();
    let mut deq = Vec::new();
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            let code = qtool_formats::codec::Fp8Format::E4M3Fn.encode(
                w[r * cols as usize + c] / scales[r],
                qtool_formats::codec::Overflow::Saturate,
            );
            codes.push(code);
            deq.push(qtool_formats::codec::Fp8Format::E4M3Fn.decode(code) * scales[r]);
        }
    }
    let sb: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let r = Builder::safetensors().f32("l.weight", &[rows, cols], &w).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::F8E4M3), &[rows, cols], &codes)
        .raw("l.weight_scale", TensorDType::St(DType::F32), &[rows, 1], &sb)
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows[0].scheme.as_deref(), Some("fp8_e4m3fn_scaled(per-row)/weight_scale"));
    let (mse, max_abs, ..) = reference_metrics(&w, &deq);
    let m = rep.rows[0].metrics.unwrap();
    assert!(close(m.mse, mse, 1e-12) && close(m.max_abs, max_abs, 0.0), "{m:?}");
}

#[test]
fn fp8_scale_of_wrong_size_is_reported_not_compared() {
    let r = Builder::safetensors().f32("l.weight", &[4, 8], &values(32, 5)).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::F8E4M3), &[4, 8], &[0x38; 32])
        .f32("l.weight_scale", &[3], &[1.0, 1.0, 1.0])
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.rows[0].status, RowStatus::NotCompared);
    let why = rep.rows[0].reason.as_deref().unwrap();
    assert!(
        why.starts_with("CAND:") && why.contains("l.weight_scale") && why.contains("[3]"),
        "{why}"
    );
    assert_eq!(rep.summary.not_compared, 1);
}

#[test]
fn pending_comfy_formats_are_claimed_whole_and_not_compared() {
    let json = br#"{"format": "mxfp8"}"#;
    let r = Builder::safetensors().f32("l.weight", &[32, 32], &values(1024, 6)).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::F8E4M3), &[32, 32], &[0; 1024])
        .raw("l.weight_scale", TensorDType::St(DType::U8), &[128, 4], &[0; 512])
        .raw("l.comfy_quant", TensorDType::St(DType::U8), &[json.len() as u64], json)
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1, "{:#?}", rep.rows);
    let row = &rep.rows[0];
    assert_eq!(row.status, RowStatus::NotCompared);
    assert_eq!(row.scheme.as_deref(), Some("mxfp8/comfy"), "not taken for FP8 scaled");
    assert!(row.reason.as_deref().unwrap().contains("mxfp8"));
    assert_eq!(row.cand_bytes, Some(1024 + 512));
}

#[test]
fn tensors_on_one_side_are_listed() {
    let w = values(8, 7);
    let r =
        Builder::safetensors().f32("a.weight", &[8], &w).f32("only_ref.weight", &[8], &w).build();
    let c =
        Builder::safetensors().f32("a.weight", &[8], &w).f32("only_cand.weight", &[8], &w).build();
    let rep = run(&r, &c).unwrap();
    let st: Vec<(&str, RowStatus)> = rep.rows.iter().map(|r| (r.name.as_str(), r.status)).collect();
    assert_eq!(
        st,
        [
            ("a.weight", RowStatus::Compared),
            ("only_ref.weight", RowStatus::OnlyRef),
            ("only_cand.weight", RowStatus::OnlyCand)
        ]
    );
    assert_eq!((rep.summary.only_ref, rep.summary.only_cand), (1, 1));
}

#[test]
fn shape_mismatch_is_an_error_naming_the_tensor() {
    let r = Builder::safetensors().f32("l.weight", &[2, 4], &values(8, 8)).build();
    let c = Builder::safetensors().f32("l.weight", &[4, 2], &values(8, 8)).build();
    let err = run(&r, &c).unwrap_err();
    assert!(matches!(err, DiffError::ShapeMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("'l.weight'") && msg.contains("[2, 4]") && msg.contains("[4, 2]"),
        "{msg}"
    );
}

#[test]
fn gguf_names_and_reversed_shapes_match_hf() {
    // A v projection (not permuted) and a norm, HF [out, in] vs GGUF ne = [in, out].
    let w = values(8 * 16, 9);
    let r = Builder::safetensors()
        .f32("model.layers.0.self_attn.v_proj.weight", &[8, 16], &w)
        .f32("model.norm.weight", &[16], &w[..16])
        .build();
    let c = Builder::gguf()
        .f32("blk.0.attn_v.weight", &[16, 8], &w)
        .f32("output_norm.weight", &[16], &w[..16])
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.summary.compared, 2, "{:#?}", rep.rows);
    assert_eq!(rep.summary.identical, 2);
    assert_eq!(rep.rows[0].cand_name.as_deref(), Some("blk.0.attn_v.weight"));
    assert_eq!(rep.rows[0].shape, [8, 16]);
}

/// HF q rows → GGUF order, as llama.cpp's converter writes them (formats.md §6.7), written here
/// from the reshape/swapaxes description rather than through the library.
fn permute_like_llama_cpp(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; w.len()];
    // reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): out[h][i][j] = in[h][j][i]
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + j * (hd / 2) + i;
                let dst = h * hd + i * 2 + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn gguf_q_and_k_rows_are_unpermuted_with_head_counts() {
    let (n_head, n_kv, hd, cols) = (4usize, 2usize, 8usize, 32usize);
    let wq = values(n_head * hd * cols, 10);
    let wk = values(n_kv * hd * cols, 11);
    let r = Builder::safetensors()
        .f32("model.layers.0.self_attn.q_proj.weight", &[(n_head * hd) as u64, cols as u64], &wq)
        .f32("model.layers.0.self_attn.k_proj.weight", &[(n_kv * hd) as u64, cols as u64], &wk)
        .build();
    let c = Builder::gguf()
        .f32(
            "blk.0.attn_q.weight",
            &[cols as u64, (n_head * hd) as u64],
            &permute_like_llama_cpp(&wq, n_head * hd, cols, n_head),
        )
        .f32(
            "blk.0.attn_k.weight",
            &[cols as u64, (n_kv * hd) as u64],
            &permute_like_llama_cpp(&wk, n_kv * hd, cols, n_kv),
        )
        .build();
    let heads = QkHeads { n_head, n_head_kv: n_kv, permute: true };
    let ri = Input::new(&r);
    let ci = Input { heads: Some(heads), ..Input::new(&c) };
    let rep = diff(&ri, &ci, &Registry::standard(), &DiffOptions::default(), None).unwrap();
    for row in &rep.rows {
        assert!(row.qk_permuted, "{}", row.name);
        assert_eq!(row.sqnr_db(), Some(f64::INFINITY), "{}", row.name);
    }
    // Without head counts the rows are compared as stored: different, but not an error.
    let rep = run(&r, &c).unwrap();
    assert!(rep.rows.iter().all(|r| !r.qk_permuted && r.sqnr_db().unwrap().is_finite()));
    // Head counts that do not divide the rows are an error naming the tensor.
    let bad =
        Input { heads: Some(QkHeads { n_head: 3, n_head_kv: 2, permute: true }), ..Input::new(&c) };
    let err = diff(&ri, &bad, &Registry::standard(), &DiffOptions::default(), None).unwrap_err();
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn gguf_block_types_decode_and_count_their_bits() {
    // One Q8_0 row of 64 elements: two blocks, scale 1/64 (f16 0x2400), quants -32..31.
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for _ in 0..2 {
        bytes.extend_from_slice(&0x2400u16.to_le_bytes());
        for i in 0..32i32 {
            bytes.push((i * 2 - 32) as i8 as u8);
            deq.push((i * 2 - 32) as f32 / 64.0);
        }
    }
    let w: Vec<f32> = deq.iter().enumerate().map(|(i, x)| x + (i % 3) as f32 * 0.001).collect();
    let r = Builder::safetensors().f32("model.layers.0.mlp.up_proj.weight", &[1, 64], &w).build();
    let c = Builder::gguf()
        .raw("blk.0.ffn_up.weight", TensorDType::Ggml(GgmlType::Q8_0), &[64, 1], &bytes)
        .build();
    let rep = run(&r, &c).unwrap();
    let row = &rep.rows[0];
    assert_eq!(row.scheme.as_deref(), Some("Q8_0"));
    assert_eq!(row.bits_per_weight, Some(8.5));
    let (mse, ..) = reference_metrics(&w, &deq);
    assert!(close(row.metrics.unwrap().mse, mse, 1e-12));
}

#[test]
fn result_is_identical_for_any_thread_count() {
    // Three chunks and a ragged end, with values whose sums round.
    let n = DIFF_CHUNK as usize * 2 + 12_345;
    let w = values(n, 12);
    let q: Vec<f32> = w.iter().map(|x| x + 1e-3 * (x * 7.0).sin()).collect();
    let r = Builder::safetensors().f32("big.weight", &[n as u64], &w).build();
    let c = Builder::safetensors().f32("big.weight", &[n as u64], &q).build();
    let at = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&r, &c).unwrap())
    };
    let one = at(1);
    let many = at(4);
    let (a, b) = (one.rows[0].metrics.unwrap(), many.rows[0].metrics.unwrap());
    assert_eq!(a.sum_bits(), b.sum_bits());
    assert_eq!(serde_json::to_string(&one).unwrap(), serde_json::to_string(&many).unwrap());
    let (mse, max_abs, _, sqnr, cos) = reference_metrics(&w, &q);
    assert!(close(a.mse, mse, 1e-9) && close(a.max_abs, max_abs, 0.0));
    assert!(close(a.sqnr_db, sqnr, 1e-9) && close(a.cosine, cos, 1e-12));
}

trait Bits {
    fn sum_bits(&self) -> [u64; 6];
}
impl Bits for qtool_quantizers::diff::Metrics {
    fn sum_bits(&self) -> [u64; 6] {
        [self.mse, self.rmse, self.max_abs, self.rel_fro, self.sqnr_db, self.cosine]
            .map(f64::to_bits)
    }
}

#[test]
fn nan_in_candidate_gives_nan_metrics_and_counts() {
    let w = values(16, 13);
    let mut q = w.clone();
    q[3] = f32::NAN;
    let r = Builder::safetensors().f32("l.weight", &[16], &w).build();
    let c = Builder::safetensors().f32("l.weight", &[16], &q).build();
    let rep = run(&r, &c).unwrap();
    let m = rep.rows[0].metrics.unwrap();
    assert!(m.sqnr_db.is_nan() && m.mse.is_nan());
    assert_eq!(m.nonfinite_cand, 1);
    assert_eq!(rep.summary.nan, 1);
    assert_eq!(rep.summary.worst_sqnr_db, None, "NaN rows are not a worst SQNR");
    assert!(rep.any_below(-1000.0), "NaN fails any threshold");
}

#[test]
fn filter_keeps_matching_tensors_and_worst_sorts_by_sqnr() {
    let w = values(256, 14);
    let noisy = |amp: f32| -> Vec<f32> {
        w.iter().enumerate().map(|(i, x)| x + amp * ((i % 5) as f32 - 2.0)).collect()
    };
    let r = Builder::safetensors()
        .f32("model.layers.0.mlp.up_proj.weight", &[256], &w)
        .f32("model.layers.1.mlp.up_proj.weight", &[256], &w)
        .f32("model.layers.1.self_attn.q_proj.weight", &[256], &w)
        .build();
    let c = Builder::safetensors()
        .f32("model.layers.0.mlp.up_proj.weight", &[256], &noisy(1e-3))
        .f32("model.layers.1.mlp.up_proj.weight", &[256], &noisy(1e-1))
        .f32("model.layers.1.self_attn.q_proj.weight", &[256], &noisy(1e-2))
        .build();
    let rep = run(&r, &c).unwrap();
    // Model order: layer 0, then layer 1 with q before up.
    let names: Vec<&str> = rep.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.mlp.up_proj.weight"
        ]
    );
    let worst: Vec<&str> = rep.worst(2).iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        worst,
        ["model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]
    );
    assert_eq!(rep.summary.worst_tensor.as_deref(), Some("model.layers.1.mlp.up_proj.weight"));
    let opts = DiffOptions { filter: Some(regex::Regex::new("up_proj").unwrap()) };
    let rep = diff(&Input::new(&r), &Input::new(&c), &Registry::standard(), &opts, None).unwrap();
    assert_eq!(rep.rows.len(), 2);
    assert!(rep.rows.iter().all(|r| r.name.contains("up_proj")));
}

#[test]
fn progress_reports_every_element_once() {
    let n = DIFF_CHUNK as usize + 100;
    let w = values(n, 15);
    let r = Builder::safetensors()
        .f32("a.weight", &[n as u64], &w)
        .f32("b.weight", &[3], &w[..3])
        .build();
    let total = std::sync::atomic::AtomicU64::new(0);
    let cb = |k: u64| {
        total.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
    };
    diff(
        &Input::new(&r),
        &Input::new(&r),
        &Registry::standard(),
        &DiffOptions::default(),
        Some(&cb),
    )
    .unwrap();
    assert_eq!(total.into_inner(), n as u64 + 3);
    let plan = qtool_quantizers::diff::plan(
        &Input::new(&r),
        &Input::new(&r),
        &Registry::standard(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(plan.total_elements(), n as u64 + 3);
    assert!(plan.rows().iter().all(|row| row.metrics.is_none()), "nothing is read before run");
}

#[test]
fn json_report_has_the_contract_fields() {
    let w = values(32, 16);
    let r = Builder::safetensors().f32("l.weight", &[4, 8], &w).build();
    let c = Builder::safetensors().bf16("l.weight", &[4, 8], &w).build();
    let rep = run(&r, &c).unwrap();
    let v = serde_json::to_value(&rep).unwrap();
    assert_eq!(v["schema_version"], 1);
    let row = &v["rows"][0];
    for k in [
        "name",
        "status",
        "shape",
        "mse",
        "rmse",
        "max_abs",
        "rel_fro",
        "sqnr_db",
        "cosine",
        "bits_per_weight",
        "scheme",
    ] {
        assert!(row.get(k).is_some(), "missing {k} in {row}");
    }
    assert_eq!(row["scheme"], "BF16");
    assert_eq!(row["bits_per_weight"], 16.0);
    for k in ["mean_sqnr_db", "worst_sqnr_db", "bits_per_weight", "size_ratio"] {
        assert!(v["summary"].get(k).is_some(), "missing summary.{k}");
    }
    assert_eq!(v["summary"]["size_ratio"], 0.5);
    let back: qtool_quantizers::diff::DiffReport = serde_json::from_value(v).unwrap();
    assert_eq!(back.rows[0].metrics, rep.rows[0].metrics);
}

#[test]
fn comfy_float8_layer_without_its_scale_is_not_compared_with_the_reason() {
    let json = br#"{"format": "float8_e4m3fn"}"#;
    let r = Builder::safetensors().f32("l.weight", &[4, 8], &values(32, 17)).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::F8E4M3), &[4, 8], &[0x38; 32])
        .raw("l.comfy_quant", TensorDType::St(DType::U8), &[json.len() as u64], json)
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.rows[0].status, RowStatus::NotCompared);
    let why = rep.rows[0].reason.as_deref().unwrap();
    assert!(why.contains("'l.weight_scale'"), "{why}");
}

#[test]
fn unreadable_comfy_quant_json_is_named_in_the_scheme() {
    let junk = b"{not json";
    let r = Builder::safetensors().f32("l.weight", &[4, 8], &values(32, 18)).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::U8), &[4, 8], &[0; 32])
        .f32("l.weight_scale", &[], &[1.0])
        .raw("l.comfy_quant", TensorDType::St(DType::U8), &[junk.len() as u64], junk)
        .build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.rows[0].scheme.as_deref(), Some("unreadable comfy_quant/comfy"));
    assert_eq!(rep.rows[0].status, RowStatus::NotCompared);
}

#[test]
fn fp8_scale_with_integer_dtype_is_not_compared() {
    let r = Builder::safetensors().f32("l.weight", &[4, 8], &values(32, 19)).build();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::F8E4M3), &[4, 8], &[0x38; 32])
        .raw("l.weight_scale", TensorDType::St(DType::I32), &[], &1i32.to_le_bytes())
        .build();
    let rep = run(&r, &c).unwrap();
    let why = rep.rows[0].reason.as_deref().unwrap();
    assert!(why.contains("I32") && why.contains("l.weight_scale"), "{why}");
}

#[test]
fn undecodable_dtype_is_not_compared_naming_the_dtype() {
    let r =
        Builder::safetensors().raw("freqs", TensorDType::St(DType::C64), &[2], &[0; 16]).build();
    let rep = run(&r, &r).unwrap();
    assert_eq!(rep.rows[0].status, RowStatus::NotCompared);
    let why = rep.rows[0].reason.as_deref().unwrap();
    assert!(why.contains("REF:") && why.contains("CAND:") && why.contains("C64"), "{why}");
}

#[test]
fn runtime_prefix_does_not_prevent_a_match() {
    let w = values(16, 20);
    let r = Builder::safetensors()
        .f32("model.diffusion_model.blocks.0.attn.q.weight", &[16], &w)
        .build();
    let c = Builder::safetensors().f32("blocks.0.attn.q.weight", &[16], &w).build();
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.rows[0].cand_name.as_deref(), Some("blocks.0.attn.q.weight"));
    assert_eq!(rep.rows[0].sqnr_db(), Some(f64::INFINITY));
}

/// A scheme registered from outside: INT8 weights with one F32 scale per row in `L.scales`.
#[derive(Debug)]
struct Int8PerRow;

#[derive(Debug)]
struct Int8View<'a> {
    data: &'a [u8],
    scales: Vec<f32>,
    cols: u64,
}

impl qtool_quantizers::diff::Dequantize for Int8View<'_> {
    fn granule(&self) -> u64 {
        1
    }
    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        for (k, o) in out.iter_mut().enumerate() {
            let i = start as usize + k;
            *o = self.data[i] as i8 as f32 * self.scales[i / self.cols as usize];
        }
        Ok(())
    }
}

impl qtool_quantizers::diff::SchemeDecoder for Int8PerRow {
    fn name(&self) -> &'static str {
        "int8 per-row"
    }
    fn claim<'a>(
        &self,
        cx: &mut qtool_quantizers::diff::registry::ClaimContext<'a>,
    ) -> Result<Vec<qtool_quantizers::diff::LogicalTensor<'a>>, DiffError> {
        let mut out = Vec::new();
        let found: Vec<_> = cx
            .unclaimed()
            .filter(|(_, t)| t.dtype == TensorDType::St(DType::I8) && t.name.ends_with(".weight"))
            .collect();
        for (wi, w) in found {
            let layer = w.name.trim_end_matches(".weight");
            let Some((si, s)) = cx.free(&format!("{layer}.scales")) else { continue };
            cx.claim(wi);
            cx.claim(si);
            let scales = qtool_quantizers::decode::decode_all(cx.tensor_ref(s)).unwrap();
            let view = Int8View { data: cx.tensor_ref(w).data, scales, cols: w.shape[1] };
            out.push(qtool_quantizers::diff::LogicalTensor {
                name: w.name.clone(),
                index: wi,
                shape: w.shape.clone(),
                scheme: "int8/per-row".into(),
                parts: vec![w, s],
                extras: Vec::new(),
                decoder: Ok(Box::new(view)),
            });
        }
        Ok(out)
    }
}

#[test]
fn registered_scheme_decodes_before_the_catch_all() {
    let w: Vec<f32> = (0..8).map(|i| i as f32 - 4.0).collect();
    let r = Builder::safetensors().f32("l.weight", &[2, 4], &w).build();
    let q: Vec<u8> = w.iter().map(|x| (*x * 2.0) as i8 as u8).collect();
    let c = Builder::safetensors()
        .raw("l.weight", TensorDType::St(DType::I8), &[2, 4], &q)
        .f32("l.scales", &[2], &[0.5, 0.5])
        .build();
    let registry = Registry::standard().with(Box::new(Int8PerRow));
    let rep =
        diff(&Input::new(&r), &Input::new(&c), &registry, &DiffOptions::default(), None).unwrap();
    assert_eq!(rep.rows.len(), 1);
    assert_eq!(rep.rows[0].scheme.as_deref(), Some("int8/per-row"));
    assert_eq!(rep.rows[0].sqnr_db(), Some(f64::INFINITY));
    assert_eq!(rep.rows[0].bits_per_weight, Some((8.0 + 8.0) * 8.0 / 8.0));
    // Without it the I8 weight is read as plain integers and the scales are a stray tensor.
    let rep = run(&r, &c).unwrap();
    assert_eq!(rep.rows.len(), 2);
    assert!(rep.rows[0].sqnr_db().unwrap().is_finite());
    assert_eq!(rep.rows[1].status, RowStatus::OnlyCand);
}
