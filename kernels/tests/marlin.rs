//! The Marlin W4A16 kernel against an f64-accumulated CPU GEMM of the CPU-dequantized Marlin
//! weights (`marlin_dequantize`, which reads the packed words directly). Weights are random,
//! quantized with qtool's RTN and packed with qtool's Marlin packer; scales are rounded to f16
//! as `qtool repack --target marlin` stores them.
//!
//! Error bound per output element: the kernel rounds each dequantized weight `(q − 8)·s` to f16
//! (relative error ≤ 2⁻¹¹) and accumulates in f32, so |out − ref| ≤ 2⁻¹¹·Σ|x·w| + f32 rounding;
//! the test allows 1e-3·Σ|x·w| + 1e-5, which any layout or scale mistake exceeds by orders of
//! magnitude. Without a GPU every test prints `skipped: <reason>` (fails under
//! `QTOOL_REQUIRE_GPU=1`).

use half::f16;
use qtool_kernels::marlin::{MarlinConfig, MarlinPlan, MarlinWeights, MarlinWorkspace};
use qtool_kernels::{Gpu, KernelError};
use qtool_quantizers::int::marlin::{marlin_dequantize, pack_marlin, MarlinTensors};
use qtool_quantizers::int::marlin_check::MarlinKind;
use qtool_quantizers::int::rtn::{quantize, Bits, Convention, GroupSize, RtnConfig};

fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e @ KernelError::NoGpu(_)) => {
            let required = std::env::var("QTOOL_REQUIRE_GPU")
                .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
                .unwrap_or(false);
            assert!(!required, "{test}: QTOOL_REQUIRE_GPU=1 but {e}");
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: opening the GPU failed: {e}"),
    }
}

struct Lcg(u64);

impl Lcg {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A packed Marlin layer with f16 scales, and its CPU-dequantized `W [n, k]`.
struct Layer {
    n: usize,
    k: usize,
    group: Option<usize>,
    b: Vec<i32>,
    scales: Vec<f16>,
    w: Vec<f32>,
}

fn layer(n: usize, k: usize, group: Option<usize>, seed: u64) -> Layer {
    let mut rng = Lcg(seed);
    // Rows with different magnitudes so a wrong scale column shows.
    let w: Vec<f32> =
        (0..n * k).map(|i| rng.next() * (0.02 + 0.01 * ((i / k) % 7) as f32)).collect();
    let gs = group.map_or(GroupSize::PerChannel, GroupSize::Size);
    let cfg =
        RtnConfig { bits: Bits::B4, group_size: gs, symmetric: true, convention: Convention::Gptq };
    let q = quantize(&w, n, k, &cfg, None).expect("quantize");
    let mut t: MarlinTensors = pack_marlin(&q, MarlinKind::Gptq).expect("pack");
    let scales: Vec<f16> = t.s.iter().map(|&s| f16::from_f32(s)).collect();
    t.s = scales.iter().map(|s| s.to_f32()).collect();
    let w = marlin_dequantize(&t).expect("dequantize");
    Layer { n, k, group, b: t.b, scales, w }
}

fn activations(m: usize, k: usize, seed: u64) -> Vec<f16> {
    let mut rng = Lcg(seed ^ 0x9e3779b97f4a7c15);
    (0..m * k).map(|_| f16::from_f32(rng.next())).collect()
}

/// Checks `out` against the CPU GEMM; returns the largest error relative to its bound.
fn check(l: &Layer, x: &[f16], m: usize, out: &[f32], what: &str) -> f64 {
    assert_eq!(out.len(), m * l.n, "{what}: output length");
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut worst = 0.0f64;
    for i in 0..m {
        let xr = &xf[i * l.k..][..l.k];
        for j in 0..l.n {
            let wr = &l.w[j * l.k..][..l.k];
            let (mut acc, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in xr.iter().zip(wr) {
                let p = *a as f64 * *b as f64;
                acc += p;
                mag += p.abs();
            }
            let got = out[i * l.n + j] as f64;
            let bound = 1e-3 * mag + 1e-5;
            let err = (got - acc).abs();
            assert!(
                got.is_finite() && err <= bound,
                "{what}: out[{i}, {j}] = {got}, reference {acc} (error {err:e} > bound {bound:e})"
            );
            worst = worst.max(err / bound);
        }
    }
    worst
}

fn run_case(gpu: &Gpu, m: usize, n: usize, k: usize, group: Option<usize>, seed: u64) {
    let l = layer(n, k, group, seed);
    let x = activations(m, k, seed);
    let r = gpu.marlin_w4a16(&x, m, n, k, &l.b, &l.scales, l.group, 0).expect("marlin_w4a16");
    let what = format!("m={m} n={n} k={k} group={group:?} [{}]", r.backend);
    let worst = check(&l, &x, m, &r.out, &what);
    println!("ok {what}: worst error {:.3} of bound", worst);
}

#[test]
fn marlin_matches_cpu_gemm_grouped_128() {
    let Some(gpu) = gpu_or_skip("marlin_matches_cpu_gemm_grouped_128") else { return };
    for &(k, n) in &[(256, 128), (1024, 512), (4096, 256), (512, 1024)] {
        for m in [1, 7, 16, 33, 64, 128] {
            run_case(&gpu, m, n, k, Some(128), (k * 31 + n * 7 + m) as u64);
        }
    }
}

#[test]
fn marlin_matches_cpu_gemm_grouped_64_and_32() {
    let Some(gpu) = gpu_or_skip("marlin_matches_cpu_gemm_grouped_64_and_32") else { return };
    for g in [64, 32] {
        for &(k, n) in &[(384, 256), (2048, 192)] {
            for m in [1, 7, 16, 33, 64, 128] {
                run_case(&gpu, m, n, k, Some(g), (g * 1000 + k + n + m) as u64);
            }
        }
    }
}

#[test]
fn marlin_matches_cpu_gemm_per_channel() {
    let Some(gpu) = gpu_or_skip("marlin_matches_cpu_gemm_per_channel") else { return };
    for &(k, n) in &[(256, 64), (1024, 768), (3072, 320)] {
        for m in [1, 7, 16, 33, 64, 128] {
            run_case(&gpu, m, n, k, None, (k + 3 * n + m) as u64);
        }
    }
    // group == k is stored with the per-channel permutation
    run_case(&gpu, 5, 256, 128, Some(128), 11);
}

/// Every compiled tile configuration, on a shape that each divides, with several stripes per
/// tile column (k = 4096 over few columns makes every column a chain of locked slices).
#[test]
fn marlin_every_config_matches_and_is_deterministic() {
    let Some(gpu) = gpu_or_skip("marlin_every_config_matches_and_is_deterministic") else { return };
    for &(k, n, group) in &[(1024, 512, Some(64)), (4096, 256, None)] {
        let l = layer(n, k, group, 99);
        let w = MarlinWeights::upload(&gpu, n, k, &l.b, &l.scales, group).expect("upload");
        for m in [1, 40, 100] {
            let x = activations(m, k, 5 + m as u64);
            let xd = gpu.upload::<u16>(bytemuck::cast_slice(&x)).unwrap();
            let mut ws = MarlinWorkspace::new(&gpu, m, n).unwrap();
            for cfg in MarlinConfig::all() {
                if !cfg.fits(n, k) {
                    continue;
                }
                let plan = match MarlinPlan::new(&gpu, &w, m, Some(cfg)) {
                    Ok(p) => p,
                    Err(KernelError::Shape(_) | KernelError::Unsupported(_)) => continue,
                    Err(e) => panic!("{cfg:?}: {e}"),
                };
                let mut out = gpu.zeros::<f32>(m * n).unwrap();
                plan.launch(&gpu, &w, &mut ws, &xd, &mut out, m).expect("launch");
                let first = gpu.download(&out).unwrap();
                plan.launch(&gpu, &w, &mut ws, &xd, &mut out, m).expect("launch");
                let second = gpu.download(&out).unwrap();
                let what = format!("{} m={m} n={n} k={k} group={group:?}", cfg.kernel_name());
                check(&l, &x, m, &first, &what);
                assert!(
                    first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: two launches differ"
                );
            }
        }
    }
}

#[test]
fn marlin_rejects_bad_shapes() {
    let Some(gpu) = gpu_or_skip("marlin_rejects_bad_shapes") else { return };
    let x = vec![f16::ZERO; 64];
    let b = vec![0i32; 8 * 128];
    let s = vec![f16::ONE; 64];
    // k not a multiple of 128
    assert!(matches!(gpu.marlin_w4a16(&x, 1, 64, 64, &b, &s, None, 0), Err(KernelError::Shape(_))));
    // n not a multiple of 64
    let x = vec![f16::ZERO; 128];
    assert!(matches!(
        gpu.marlin_w4a16(&x, 1, 32, 128, &b, &s, None, 0),
        Err(KernelError::Shape(_))
    ));
    // B of the wrong length
    assert!(matches!(
        gpu.marlin_w4a16(&x, 1, 64, 128, &b[..10], &s, None, 0),
        Err(KernelError::Shape(_))
    ));
    // unsupported group
    assert!(matches!(
        gpu.marlin_w4a16(&x, 1, 64, 128, &b, &s, Some(16), 0),
        Err(KernelError::Unsupported(_))
    ));
}
