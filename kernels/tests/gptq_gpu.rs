//! GPU GPTQ (`qtool_kernels::gptq`) against the CPU reference (`qtool_quantizers::ptq::gptq`)
//! on random correlated activations: the Hessian, then codes (≥ 99.9 % identical: the two
//! differ only in summation order, which can flip a value sitting on a rounding tie), identical
//! group parameters, and the output-space error within 1e-3 relative. Without a GPU each test
//! prints `skipped: <reason>`; with `QTOOL_REQUIRE_GPU=1` a missing GPU is a failure.

mod common;

use common::{gpu, values};
use qtool_kernels::gptq::{gptq_quantize, GptqGpu, GpuFactor, GpuHessian};
use qtool_kernels::{Gpu, KernelError};
use qtool_quantizers::int::dequantize;
use qtool_quantizers::int::rtn::{Bits, Convention, GroupSize, RtnConfig, ScaleDtype};
use qtool_quantizers::ptq::gptq::quantize as cpu_gptq;
use qtool_quantizers::ptq::{output_error, GptqConfig, Hessian};

/// `[t, k]` activations with correlated channels (a rank-`k/4` mix plus noise), channel scales
/// spread over 30× (so act-order reorders), and channel 5 never excited (a dead input).
fn activations(t: usize, k: usize, seed: u64) -> Vec<f32> {
    let r = (k / 4).max(1);
    let z = values(seed, t * r);
    let mix = values(seed + 1, r * k);
    let noise = values(seed + 2, t * k);
    let mut x = vec![0.0f32; t * k];
    for i in 0..t {
        for c in 0..k {
            let mut s = 0.3 * noise[i * k + c];
            for j in 0..r {
                s += z[i * r + j] * mix[j * k + c];
            }
            let scale = 0.2 + 6.0 * ((c * 37 % k) as f32 / k as f32);
            x[i * k + c] = if c == 5 { 0.0 } else { s * scale };
        }
    }
    x
}

fn config(group: i64, sym: bool, act_order: bool) -> GptqConfig {
    let rtn = RtnConfig {
        bits: Bits::B4,
        group_size: if group < 0 { GroupSize::PerChannel } else { GroupSize::Size(group as usize) },
        symmetric: sym,
        convention: Convention::Gptq,
    };
    let mut c = GptqConfig::new(rtn, ScaleDtype::F16);
    c.act_order = act_order;
    c.static_groups = true;
    c
}

struct Case {
    n: usize,
    k: usize,
    t: usize,
}

/// Runs CPU and GPU GPTQ on one problem for every configuration in `cfgs`.
fn compare(g: &Gpu, case: &Case, cfgs: &[GptqConfig], seed: u64) {
    let Case { n, k, t } = *case;
    let x = activations(t, k, seed);
    let w = values(seed + 9, n * k);
    let mut hc = Hessian::new(k);
    hc.add(&x).unwrap();
    let h = hc.hessian().unwrap();
    let gram = hc.gram().unwrap();
    let gg = GptqGpu::new(g).unwrap();

    // The GPU Hessian (two batches) against the CPU's.
    let mut hg = GpuHessian::new(&gg, k).unwrap();
    hg.add(&gg, &x[..(t / 3) * k]).unwrap();
    hg.add(&gg, &x[(t / 3) * k..]).unwrap();
    assert_eq!(hg.tokens(), t as u64);
    let h_gpu = g.download(&hg.hessian(&gg).unwrap()).unwrap();
    let hmax = h.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = h.iter().zip(&h_gpu).map(|(a, b)| (a - b).abs()).fold(0.0f64, f64::max);
    assert!(worst <= 1e-5 * hmax, "Hessian differs by {worst} (max |H| {hmax})");

    for cfg in cfgs {
        let what = format!(
            "n={n} k={k} group={:?} sym={} act_order={} {:?} {:?}",
            cfg.rtn.group_size,
            cfg.rtn.symmetric,
            cfg.act_order,
            cfg.rtn.convention,
            cfg.scale_dtype
        );
        let cpu = cpu_gptq(&w, n, k, &h, cfg).unwrap();
        let f = GpuFactor::from_host(&gg, &h, k, cfg).unwrap();
        assert_eq!(f.damp(), cpu.damp, "{what}: dampening");
        let (gpu, _) = gptq_quantize(&gg, &w, n, k, &f, cfg).unwrap();
        assert_eq!(gpu.fallback, cpu.fallback, "{what}");
        assert_eq!(gpu.q.scales, cpu.q.scales, "{what}: scales");
        assert_eq!(gpu.q.zeros, cpu.q.zeros, "{what}: zeros");
        assert_eq!(gpu.q.g_idx, cpu.q.g_idx, "{what}: g_idx");
        let same = gpu.q.codes.iter().zip(&cpu.q.codes).filter(|(a, b)| a == b).count();
        let frac = same as f64 / (n * k) as f64;
        let e_cpu = output_error(&w, &dequantize(&cpu.q).unwrap(), n, k, &gram).unwrap();
        let e_gpu = output_error(&w, &dequantize(&gpu.q).unwrap(), n, k, &gram).unwrap();
        let rel = (e_gpu - e_cpu).abs() / e_cpu;
        println!(
            "{what}: codes identical {:.5}, output error cpu {e_cpu:.6e} gpu {e_gpu:.6e} (rel {rel:.1e}), loss cpu {:.4e} gpu {:.4e}",
            frac, cpu.loss, gpu.loss
        );
        assert!(frac >= 0.999, "{what}: only {frac} of the codes agree");
        assert!(rel <= 1e-3, "{what}: output error {e_gpu} vs CPU {e_cpu}");
        assert!((gpu.loss - cpu.loss).abs() <= 1e-3 * cpu.loss.max(1e-30), "{what}: loss");
    }
}

#[test]
fn gptq_gpu_matches_cpu_for_groups_symmetry_and_act_order() {
    let Some(g) = gpu() else { return };
    let mut cfgs = Vec::new();
    for act_order in [false, true] {
        for group in [32, 64, 128, -1] {
            for sym in [true, false] {
                cfgs.push(config(group, sym, act_order));
            }
        }
    }
    compare(&g, &Case { n: 96, k: 256, t: 1024 }, &cfgs, 1);
}

#[test]
fn gptq_gpu_matches_cpu_on_ragged_blocks() {
    // K = 1000: the last lazy block (104 columns) and the last Cholesky block (40) are partial.
    let Some(g) = gpu() else { return };
    let cfgs = [config(-1, false, true), config(-1, true, false), config(8, false, true)];
    compare(&g, &Case { n: 200, k: 1000, t: 2048 }, &cfgs, 2);
}

#[test]
fn gptq_gpu_matches_cpu_at_a_model_like_shape() {
    let Some(g) = gpu() else { return };
    let cfgs = [config(128, false, true), config(128, true, true)];
    compare(&g, &Case { n: 512, k: 2048, t: 4096 }, &cfgs, 3);
}

#[test]
fn gptq_gpu_matches_cpu_for_every_convention_and_scale_dtype() {
    // Group parameters: on the device for GPTQ/AWQ, on the host for compressed-tensors.
    let Some(g) = gpu() else { return };
    let mut cfgs = Vec::new();
    for conv in [Convention::Gptq, Convention::Awq, Convention::CompressedTensors] {
        for (sd, sym) in
            [(ScaleDtype::F32, false), (ScaleDtype::BF16, true), (ScaleDtype::F16, false)]
        {
            for group in [32, -1] {
                // AWQ's layout is asymmetric only.
                let mut c = config(group, sym && conv != Convention::Awq, true);
                c.rtn.convention = conv;
                c.scale_dtype = sd;
                cfgs.push(c);
            }
        }
    }
    compare(&g, &Case { n: 64, k: 256, t: 512 }, &cfgs, 4);
}

#[test]
fn gptq_gpu_falls_back_to_rtn_like_cpu_on_an_indefinite_hessian() {
    let Some(g) = gpu() else { return };
    let (n, k) = (8, 64);
    let mut h = vec![0.0f64; k * k];
    for i in 0..k {
        h[i * k + i] = if i == 10 { -50.0 } else { 1.0 };
    }
    let w = values(7, n * k);
    let cfg = config(32, false, true);
    let cpu = cpu_gptq(&w, n, k, &h, &cfg).unwrap();
    let gg = GptqGpu::new(&g).unwrap();
    let f = GpuFactor::from_host(&gg, &h, k, &cfg).unwrap();
    let (gpu, _) = gptq_quantize(&gg, &w, n, k, &f, &cfg).unwrap();
    assert!(cpu.fallback.is_some());
    assert_eq!(gpu, cpu);
}

#[test]
fn gptq_gpu_reports_a_non_finite_weight_like_cpu() {
    let Some(g) = gpu() else { return };
    let (n, k) = (4, 64);
    let h: Vec<f64> = (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let mut w = values(8, n * k);
    w[2 * k + 7] = f32::NAN;
    let gg = GptqGpu::new(&g).unwrap();
    let cfg = config(32, false, false);
    let f = GpuFactor::from_host(&gg, &h, k, &cfg).unwrap();
    let err = gptq_quantize(&gg, &w, n, k, &f, &cfg).unwrap_err().to_string();
    assert!(err.contains("weight[2, 7] is not finite"), "{err}");
}

#[test]
fn gptq_gpu_refuses_dynamic_groups_and_wide_blocks() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let h: Vec<f64> = (0..64 * 64).map(|i| if i % 65 == 0 { 1.0 } else { 0.0 }).collect();
    let mut cfg = config(32, false, false);
    cfg.static_groups = false;
    assert!(matches!(GpuFactor::from_host(&gg, &h, 64, &cfg), Err(KernelError::Unsupported(_))));
    let mut cfg = config(32, false, false);
    cfg.block_size = 256;
    assert!(matches!(GpuFactor::from_host(&gg, &h, 64, &cfg), Err(KernelError::Unsupported(_))));
    assert!(matches!(
        GpuFactor::from_host(&gg, &h[..100], 64, &config(32, false, false)),
        Err(KernelError::Shape(_))
    ));
}

#[test]
fn output_errors_on_the_gpu_equal_the_cpu_quadratic_form() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let (n, k, t) = (48, 96, 300);
    let x = activations(t, k, 21);
    let mut cpu_h = Hessian::new(k);
    cpu_h.add(&x).unwrap();
    let gram = cpu_h.gram().unwrap();
    let mut gh = GpuHessian::new(&gg, k).unwrap();
    gh.add(&gg, &x).unwrap();
    let h_dev = gh.hessian(&gg).unwrap(); // 2·XᵀX/T: a positive multiple of the gram
    let w = values(22, n * k);
    let noisy: Vec<f32> = w.iter().zip(values(23, n * k)).map(|(a, e)| a + 0.01 * e).collect();
    let coarse: Vec<f32> = w.iter().map(|a| (a * 4.0).round() / 4.0).collect();
    let got =
        qtool_kernels::gptq::output_errors(&gg, &w, &[&noisy, &coarse, &w], n, k, &h_dev).unwrap();
    let want = [
        output_error(&w, &noisy, n, k, &gram).unwrap(),
        output_error(&w, &coarse, n, k, &gram).unwrap(),
    ];
    for (gv, wv) in got.iter().zip(want) {
        // The CPU forms G·d in f32 (sgemm), the GPU in f64.
        assert!((gv - wv).abs() <= 1e-4 * wv.abs().max(1e-12), "{gv} vs {wv}");
    }
    assert!(got[0] > 0.0 && got[1] > got[0], "{got:?}");
    assert_eq!(got[2], 0.0);
    assert!(qtool_kernels::gptq::output_errors(&gg, &w, &[&w[1..]], n, k, &h_dev).is_err());
}

#[test]
fn all_finite_finds_a_nan_or_infinity_anywhere() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let base: Vec<f64> = values(31, 5000).into_iter().map(|v| f64::from(v) * 1e300).collect();
    assert!(qtool_kernels::gptq::all_finite(&gg, &g.upload(&base).unwrap()).unwrap());
    for (at, bad) in [(0, f64::NAN), (2500, f64::INFINITY), (4999, f64::NEG_INFINITY)] {
        let mut v = base.clone();
        v[at] = bad;
        let d = g.upload(&v).unwrap();
        assert!(!qtool_kernels::gptq::all_finite(&gg, &d).unwrap(), "{bad} at {at}");
    }
}
