//! GPTQ and AWQ against direct dense references on small matrices.

use super::*;
use crate::int::{
    dequantize, quantize_for_storage, Bits, Convention, GroupSize, RtnConfig, ScaleDtype,
};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// `X = Z·A` plus a few loud channels: correlated inputs, as real activations are.
fn correlated_x(t: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let a: Vec<f32> = (0..k * k).map(|_| r.f()).collect();
    let z: Vec<f32> = (0..t * k).map(|_| r.f()).collect();
    let mut x = vec![0.0f32; t * k];
    for i in 0..t {
        for j in 0..k {
            let mut s = 0.0;
            for p in 0..k {
                s += z[i * k + p] * a[p * k + j];
            }
            let loud = if j % 7 == 3 { 6.0 } else { 1.0 };
            x[i * k + j] = s * loud;
        }
    }
    x
}

fn weight(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..n * k).map(|_| r.f() * 0.2).collect()
}

fn stats(x: &[f32], k: usize) -> Hessian {
    let mut h = Hessian::new(k);
    h.add(x).unwrap();
    h
}

fn rtn(bits: Bits, group: GroupSize, symmetric: bool) -> RtnConfig {
    RtnConfig { bits, group_size: group, symmetric, convention: Convention::Gptq }
}

/// Textbook GPTQ in f64: one column at a time, the error applied to *all* remaining columns at
/// once, `U` from an explicit inverse and a plain upper Cholesky — no lazy blocks, no reversal
/// trick. Per-channel or static groups (where the reference quirk does not apply).
fn dense_gptq(w: &[f32], n: usize, k: usize, h: &[f64], cfg: &GptqConfig) -> Vec<f32> {
    let mut h = h.to_vec();
    let mut w: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let rc = cfg.rtn;
    let gs = rc.group_size.columns(k);
    // Params on the original weights (static groups / per channel).
    let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let params = quantize_for_storage(&wf, n, k, &rc, None, cfg.scale_dtype).unwrap();
    for i in 0..k {
        if h[i * k + i] == 0.0 {
            h[i * k + i] = 1.0;
        }
    }
    let mut perm: Vec<usize> = (0..k).collect();
    if cfg.act_order {
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
    }
    let mut hp = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            hp[a * k + b] = h[perm[a] * k + perm[b]];
        }
    }
    let md = (0..k).map(|i| hp[i * k + i]).sum::<f64>() / k as f64;
    for i in 0..k {
        hp[i * k + i] += cfg.damp * md;
    }
    // Explicit inverse (Gauss-Jordan), then upper Cholesky Hinv = UᵀU row by row.
    let mut a = hp.clone();
    let mut inv: Vec<f64> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
    for c in 0..k {
        let d = a[c * k + c];
        for j in 0..k {
            a[c * k + j] /= d;
            inv[c * k + j] /= d;
        }
        for r in 0..k {
            if r != c {
                let f = a[r * k + c];
                for j in 0..k {
                    a[r * k + j] -= f * a[c * k + j];
                    inv[r * k + j] -= f * inv[c * k + j];
                }
            }
        }
    }
    let mut u = vec![0.0f64; k * k];
    for i in 0..k {
        let s: f64 = (0..i).map(|p| u[p * k + i] * u[p * k + i]).sum();
        u[i * k + i] = (inv[i * k + i] - s).sqrt();
        for j in i + 1..k {
            let s: f64 = (0..i).map(|p| u[p * k + i] * u[p * k + j]).sum();
            u[i * k + j] = (inv[i * k + j] - s) / u[i * k + i];
        }
    }
    let mut q = vec![0.0f32; n * k];
    for r in 0..n {
        let mut row: Vec<f64> = perm.iter().map(|&c| w[r * k + c]).collect();
        for j in 0..k {
            let c = perm[j];
            let g = c / gs;
            let s = params.scales[g * n + r];
            let z = f32::from(params.zeros[g * n + r]);
            let x = row[j] as f32;
            let code = ((x / s).round_ties_even() + z).clamp(0.0, rc.bits.max_code() as f32);
            let deq = s * (code - z);
            q[r * k + c] = deq;
            let e = (row[j] - f64::from(deq)) / u[j * k + j];
            for l in j..k {
                row[l] -= e * u[j * k + l];
            }
        }
        w[r * k..(r + 1) * k].iter_mut().for_each(|v| *v = 0.0);
    }
    q
}

fn frac_equal(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn gptq_matches_dense_textbook_version() {
    let (n, k, t) = (24, 96, 400);
    let x = correlated_x(t, k, 1);
    let w = weight(n, k, 2);
    let h = stats(&x, k).hessian().unwrap();
    for (group, act_order, block) in [
        (GroupSize::PerChannel, false, 128),
        (GroupSize::PerChannel, false, 16),
        (GroupSize::Size(32), false, 32),
        (GroupSize::Size(32), true, 128),
        (GroupSize::Size(16), true, 5),
    ] {
        let mut cfg = GptqConfig::new(rtn(Bits::B4, group, true), ScaleDtype::F32);
        cfg.act_order = act_order;
        cfg.block_size = block;
        let got = gptq::quantize(&w, n, k, &h, &cfg).unwrap();
        assert!(got.fallback.is_none());
        let deq = dequantize(&got.q).unwrap();
        let want = dense_gptq(&w, n, k, &h, &cfg);
        let same = frac_equal(&deq, &want);
        // f32 lazy updates vs f64 textbook: only rounding ties may flip.
        assert!(same > 0.995, "{group:?} act_order={act_order} block={block}: {same}");
    }
}

#[test]
fn lazy_block_width_does_not_change_the_result() {
    let (n, k, t) = (20, 80, 300);
    let x = correlated_x(t, k, 3);
    let w = weight(n, k, 4);
    let h = stats(&x, k).hessian().unwrap();
    let mut cfg = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(16), false), ScaleDtype::F32);
    cfg.block_size = 16;
    let a = dequantize(&gptq::quantize(&w, n, k, &h, &cfg).unwrap().q).unwrap();
    cfg.block_size = 1;
    let b = dequantize(&gptq::quantize(&w, n, k, &h, &cfg).unwrap().q).unwrap();
    assert!(frac_equal(&a, &b) > 0.995);
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (n, k, t) = (32, 128, 600);
    let x = correlated_x(t, k, 5);
    let w = weight(n, k, 6);
    let st = stats(&x, k);
    let (h, gram) = (st.hessian().unwrap(), st.gram().unwrap());
    for (bits, group, sym) in [
        (Bits::B4, GroupSize::Size(32), true),
        (Bits::B4, GroupSize::Size(64), false),
        (Bits::B4, GroupSize::PerChannel, true),
        (Bits::B8, GroupSize::Size(128), true),
    ] {
        for act_order in [false, true] {
            let rc = rtn(bits, group, sym);
            let mut cfg = GptqConfig::new(rc, ScaleDtype::F16);
            cfg.act_order = act_order;
            let g = gptq::quantize(&w, n, k, &h, &cfg).unwrap();
            let r = quantize_for_storage(&w, n, k, &rc, None, ScaleDtype::F16).unwrap();
            let eg = output_error(&w, &dequantize(&g.q).unwrap(), n, k, &gram).unwrap();
            let er = output_error(&w, &dequantize(&r).unwrap(), n, k, &gram).unwrap();
            assert!(
                eg < 0.8 * er,
                "{bits:?} {group:?} sym={sym} act={act_order}: gptq {eg} rtn {er}"
            );
        }
    }
}

#[test]
fn act_order_with_static_groups_keeps_rtn_group_params_and_no_g_idx() {
    let (n, k, t) = (16, 64, 300);
    let x = correlated_x(t, k, 7);
    let w = weight(n, k, 8);
    let h = stats(&x, k).hessian().unwrap();
    let rc = rtn(Bits::B4, GroupSize::Size(16), true);
    let mut cfg = GptqConfig::new(rc, ScaleDtype::F16);
    cfg.act_order = true;
    let g = gptq::quantize(&w, n, k, &h, &cfg).unwrap();
    let r = quantize_for_storage(&w, n, k, &rc, None, ScaleDtype::F16).unwrap();
    assert_eq!(g.q.g_idx, None);
    assert_eq!(g.q.scales, r.scales);
    assert_eq!(g.q.zeros, r.zeros);
    assert_ne!(g.q.codes, r.codes);

    // Without static groups the groups follow the visiting order and g_idx records them.
    cfg.static_groups = false;
    let d = gptq::quantize(&w, n, k, &h, &cfg).unwrap();
    let g_idx = d.q.g_idx.as_ref().expect("act-order without static groups writes g_idx");
    let mut count = [0usize; 4];
    for &gi in g_idx {
        count[gi as usize] += 1;
    }
    assert_eq!(count, [16; 4]);
    let diag: Vec<f64> = (0..k).map(|i| h[i * k + i]).collect();
    let first = (0..k).max_by(|&a, &b| diag[a].total_cmp(&diag[b]).then(b.cmp(&a))).unwrap();
    assert_eq!(g_idx[first], 0, "the column with the largest H_ii is visited first");
}

#[test]
fn gptq_is_thread_count_independent() {
    let (n, k, t) = (50, 64, 200);
    let x = correlated_x(t, k, 9);
    let w = weight(n, k, 10);
    let h = stats(&x, k).hessian().unwrap();
    let mut cfg = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(32), true), ScaleDtype::F16);
    cfg.act_order = true;
    let run = |th| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(th)
            .build()
            .unwrap()
            .install(|| gptq::quantize(&w, n, k, &h, &cfg).unwrap())
    };
    assert_eq!(run(1), run(4));
}

#[test]
fn dead_input_columns_quantize_to_zero() {
    let (n, k, t) = (8, 32, 100);
    let mut x = correlated_x(t, k, 11);
    for r in 0..t {
        x[r * k + 5] = 0.0;
    }
    let w = weight(n, k, 12);
    let h = stats(&x, k).hessian().unwrap();
    assert_eq!(h[5 * k + 5], 0.0);
    let cfg = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(16), true), ScaleDtype::F32);
    let deq = dequantize(&gptq::quantize(&w, n, k, &h, &cfg).unwrap().q).unwrap();
    for r in 0..n {
        assert_eq!(deq[r * k + 5], 0.0);
    }
}

fn diag_h(k: usize, first: f64) -> Vec<f64> {
    let mut h = vec![0.0; k * k];
    for i in 0..k {
        h[i * k + i] = if i == 0 { first } else { 1.0 };
    }
    h
}

#[test]
fn non_positive_definite_hessian_increases_damp_then_falls_back_to_rtn() {
    let k = 8;
    let cfg = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(8), true), ScaleDtype::F16);
    // mean diag ≈ 0.87: damp 0.01 leaves H_00 < 0, 0.02 makes it positive.
    let p = Prepared::new(&diag_h(k, -0.015), k, &cfg).unwrap();
    assert_eq!(p.damp(), Some(0.02));
    assert!(p.fallback().is_none());

    // Far from definite: even damp 1.0 cannot fix it.
    let w = weight(4, k, 13);
    let out = gptq::quantize(&w, 4, k, &diag_h(k, -3.0), &cfg).unwrap();
    let reason = out.fallback.expect("falls back");
    assert!(
        reason.contains("not positive definite")
            && reason.contains("RTN")
            && reason.contains("0.64"),
        "{reason}"
    );
    assert_eq!(out.damp, None);
    assert_eq!(out.q, quantize_for_storage(&w, 4, k, &cfg.rtn, None, ScaleDtype::F16).unwrap());
}

#[test]
fn gptq_bad_inputs_are_named_errors() {
    let k = 8;
    let cfg = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(8), true), ScaleDtype::F32);
    let w = weight(2, k, 1);
    let h = diag_h(k, 1.0);
    assert!(matches!(
        gptq::quantize(&w, 2, k, &h[..10], &cfg),
        Err(PtqError::Length { what: "hessian", .. })
    ));
    let mut hn = h.clone();
    hn[9] = f64::NAN;
    assert!(matches!(
        gptq::quantize(&w, 2, k, &hn, &cfg),
        Err(PtqError::NonFinite { what: "hessian", index: 9, .. })
    ));
    let mut wn = w.clone();
    wn[3] = f32::INFINITY;
    assert!(matches!(
        gptq::quantize(&wn, 2, k, &h, &cfg),
        Err(PtqError::Int(crate::int::IntError::NonFiniteWeight { row: 0, col: 3, .. }))
    ));
    let bad = GptqConfig::new(rtn(Bits::B4, GroupSize::Size(3), true), ScaleDtype::F32);
    assert!(matches!(
        gptq::quantize(&w, 2, k, &h, &bad),
        Err(PtqError::Int(crate::int::IntError::GroupDoesNotDivide { .. }))
    ));
    let mut neg = cfg;
    neg.damp = -1.0;
    assert!(matches!(gptq::quantize(&w, 2, k, &h, &neg), Err(PtqError::Config(_))));
}

fn awq_cfg(group: GroupSize) -> AwqConfig {
    let rc = RtnConfig {
        bits: Bits::B4,
        group_size: group,
        symmetric: false,
        convention: Convention::Awq,
    };
    AwqConfig::new(rc, ScaleDtype::F16)
}

#[test]
fn awq_scales_beat_rtn_when_some_channels_are_loud() {
    let (k, t) = (64, 400);
    let x = correlated_x(t, k, 21);
    let st = stats(&x, k);
    let (gram, am) = (st.gram().unwrap(), st.abs_mean().unwrap());
    let (w1, w2) = (weight(32, k, 22), weight(16, k, 23));
    let cfg = awq_cfg(GroupSize::Size(32));
    let s = search_scales(&[(&w1, 32), (&w2, 16)], k, &gram, &am, &cfg).unwrap();
    assert!(
        s.alpha > 0.0 && s.error < 0.95 * s.rtn_error,
        "alpha {} err {} rtn {}",
        s.alpha,
        s.error,
        s.rtn_error
    );
    // The normalisation: max·min of the scales is 1.
    let mx = s.scales.iter().copied().fold(0.0f32, f32::max);
    let mn = s.scales.iter().copied().fold(f32::INFINITY, f32::min);
    assert!((mx * mn - 1.0).abs() < 1e-4);
    // The error reported for α = 0 is exactly plain RTN's output error.
    let r = quantize_for_storage(&w1, 32, k, &cfg.rtn, None, ScaleDtype::F16).unwrap();
    let r2 = quantize_for_storage(&w2, 16, k, &cfg.rtn, None, ScaleDtype::F16).unwrap();
    let e1 = hessian::quad_form_sum(
        &w1.iter().zip(dequantize(&r).unwrap()).map(|(a, b)| a - b).collect::<Vec<_>>(),
        &w1.iter().zip(dequantize(&r).unwrap()).map(|(a, b)| a - b).collect::<Vec<_>>(),
        k,
        &gram,
    );
    let d2: Vec<f32> = w2.iter().zip(dequantize(&r2).unwrap()).map(|(a, b)| a - b).collect();
    let e2 = hessian::quad_form_sum(&d2, &d2, k, &gram);
    assert!(((e1 + e2) - s.rtn_error).abs() < 1e-9 * s.rtn_error.max(1e-30));
}

#[test]
fn awq_error_through_gram_equals_the_error_on_activations() {
    let (k, t, n) = (32, 120, 8);
    let x = correlated_x(t, k, 31);
    let w = weight(n, k, 32);
    let st = stats(&x, k);
    let cfg = awq_cfg(GroupSize::Size(16));
    let s =
        search_scales(&[(&w, n)], k, &st.gram().unwrap(), &st.abs_mean().unwrap(), &cfg).unwrap();
    // Rebuild Ŵ = Q(W·s)/s and measure ‖XWᵀ − XŴᵀ‖²/T directly.
    let ws: Vec<f32> =
        w.chunks(k).flat_map(|r| r.iter().zip(&s.scales).map(|(a, b)| a * b)).collect();
    let q = dequantize(&quantize_for_storage(&ws, n, k, &cfg.rtn, None, ScaleDtype::F16).unwrap())
        .unwrap();
    let mut e = 0.0f64;
    for r in 0..t {
        for o in 0..n {
            let d: f64 = (0..k)
                .map(|c| {
                    f64::from(x[r * k + c])
                        * (f64::from(w[o * k + c]) - f64::from(q[o * k + c] / s.scales[c]))
                })
                .sum();
            e += d * d;
        }
    }
    e /= t as f64;
    assert!((e - s.error).abs() < 1e-4 * e, "{e} vs {}", s.error);
}

#[test]
fn awq_clip_only_shrinks_and_never_increases_the_error() {
    let (n, k, t) = (16, 64, 300);
    let x = correlated_x(t, k, 41);
    let mut w = weight(n, k, 42);
    w[5] = 3.0; // an outlier weight a clip can trade off
    let gram = stats(&x, k).gram().unwrap();
    let cfg = awq_cfg(GroupSize::Size(32));
    let c = clip_search(&w, n, k, &gram, &cfg).unwrap();
    assert!(c.error <= c.unclipped_error);
    for (a, b) in c.w.iter().zip(&w) {
        assert!(a.abs() <= b.abs() && a.signum() * b.signum() >= 0.0);
    }
    assert_eq!(c.max_val.len(), n * 2);
    assert!(matches!(
        clip_search(&w[..10], n, k, &gram, &cfg),
        Err(PtqError::Length { what: "weight", .. })
    ));
}

#[test]
fn awq_bad_statistics_are_named_errors() {
    let k = 8;
    let cfg = awq_cfg(GroupSize::Size(8));
    let w = weight(8, k, 1);
    let gram = vec![0.0; k * k];
    let mut am = vec![1.0f32; k];
    am[2] = f32::NAN;
    assert!(matches!(
        search_scales(&[(&w, 8)], k, &gram, &am, &cfg),
        Err(PtqError::NonFinite { what: "activation mean", index: 2, .. })
    ));
    assert!(matches!(
        search_scales(&[(&w, 8)], k, &gram[..3], &am, &cfg),
        Err(PtqError::Length { what: "gram", .. })
    ));
}
