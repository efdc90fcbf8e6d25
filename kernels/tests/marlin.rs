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
use qtool_kernels::marlin::{
    max_splits, MarlinChoice, MarlinConfig, MarlinKernel, MarlinPlan, MarlinWeights,
    MarlinWorkspace, SmallConfig, SMALL_VARIANTS, SMALL_WIDE_N,
};
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

fn threads() -> usize {
    std::thread::available_parallelism().map_or(4, |t| t.get())
}

/// Checks `out` against the CPU GEMM; returns the largest error relative to its bound. Output
/// columns are split over threads (the benchmark shapes are 10⁹–10¹⁰ multiply-adds).
fn check(l: &Layer, x: &[f16], m: usize, out: &[f32], what: &str) -> f64 {
    assert_eq!(out.len(), m * l.n, "{what}: output length");
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let cols = l.n.div_ceil(threads());
    let worst: Vec<f64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..l.n)
            .step_by(cols)
            .map(|j0| {
                let xf = &xf;
                sc.spawn(move || {
                    let mut worst = 0.0f64;
                    for j in j0..(j0 + cols).min(l.n) {
                        let wr = &l.w[j * l.k..][..l.k];
                        for i in 0..m {
                            let xr = &xf[i * l.k..][..l.k];
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
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("check thread")).collect()
    });
    worst.into_iter().fold(0.0, f64::max)
}

/// `marlin_dequantize` of 64-column slices in parallel. Each 64-column chunk of a Marlin tensor
/// is itself a valid Marlin tensor (B rows hold 128-word chunks per 64 columns; both scale
/// permutations act inside 64 columns), so the slices are dequantized independently and stacked.
fn dequantize_parallel(t: &MarlinTensors) -> Vec<f32> {
    let (n, k) = (t.n, t.k);
    let groups = t.s.len() / n;
    let chunks = n / 64;
    let per = chunks.div_ceil(threads());
    let parts: Vec<Vec<f32>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..chunks)
            .step_by(per)
            .map(|c0| {
                sc.spawn(move || {
                    let c1 = (c0 + per).min(chunks);
                    let (lo, w) = (c0 * 64, (c1 - c0) * 64);
                    let b: Vec<i32> = (0..k / 16)
                        .flat_map(|kt| t.b[kt * 2 * n + 2 * lo..][..2 * w].to_vec())
                        .collect();
                    let s: Vec<f32> =
                        (0..groups).flat_map(|g| t.s[g * n + lo..][..w].to_vec()).collect();
                    let sub = MarlinTensors {
                        kind: t.kind,
                        bits: t.bits,
                        n: w,
                        k,
                        group_size: t.group_size,
                        b,
                        s,
                        zp: None,
                        g_idx: None,
                        sort_indices: None,
                    };
                    marlin_dequantize(&sub).expect("dequantize slice")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("dequantize thread")).collect()
    });
    parts.concat()
}

/// A benchmark-sized layer built directly in the Marlin layout: random words (every code
/// equally likely) and random f16 scales, dequantized by the CPU reference.
fn random_layer(n: usize, k: usize, group: usize, seed: u64) -> Layer {
    let mut rng = Lcg(seed);
    let mut state = seed | 1;
    let b: Vec<i32> = (0..k / 16 * 2 * n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 32) as i32
        })
        .collect();
    let scales: Vec<f16> =
        (0..k / group * n).map(|_| f16::from_f32(0.002 + 0.001 * rng.next())).collect();
    let t = MarlinTensors {
        kind: MarlinKind::Gptq,
        bits: Bits::B4,
        n,
        k,
        group_size: GroupSize::Size(group),
        b,
        s: scales.iter().map(|v| v.to_f32()).collect(),
        zp: None,
        g_idx: None,
        sort_indices: None,
    };
    let w = dequantize_parallel(&t);
    Layer { n, k, group: Some(group), b: t.b, scales, w }
}

/// Launches `plan` twice into the same buffer; checks the first result against the CPU GEMM and
/// that the second is bit-identical (which also proves the arrival counters were reset).
fn launch_twice(
    gpu: &Gpu,
    l: &Layer,
    w: &MarlinWeights,
    plan: &MarlinPlan,
    x: &[f16],
    m: usize,
    what: &str,
) -> f64 {
    let xd = gpu.upload::<u16>(bytemuck::cast_slice(x)).unwrap();
    let mut ws = MarlinWorkspace::new(gpu, m, l.n).unwrap();
    let mut out = gpu.zeros::<f32>(m * l.n).unwrap();
    plan.launch(gpu, w, &mut ws, &xd, &mut out, m).expect("launch");
    let first = gpu.download(&out).unwrap();
    plan.launch(gpu, w, &mut ws, &xd, &mut out, m).expect("launch");
    let second = gpu.download(&out).unwrap();
    let what = format!("{what} [{}, {} CTAs]", plan.label(), plan.grid);
    let worst = check(l, x, m, &first, &what);
    assert!(
        first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: two launches differ"
    );
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

/// The four benchmark shapes (group 128) at m = 1, 9 and 16 through the small-batch kernel's
/// automatic launch shape; the default plan must pick the small kernel except at m > 8 on wide n.
#[test]
fn marlin_small_matches_cpu_gemm_on_benchmark_shapes() {
    let Some(gpu) = gpu_or_skip("marlin_small_matches_cpu_gemm_on_benchmark_shapes") else {
        return;
    };
    for &(k, n) in &[(8192, 8192), (4096, 11008), (11008, 4096), (8192, 28672)] {
        let l = random_layer(n, k, 128, (k * 3 + n) as u64);
        let w = MarlinWeights::upload(&gpu, n, k, &l.b, &l.scales, l.group).expect("upload");
        for m in [1, 9, 16] {
            let x = activations(m, k, (k + m) as u64);
            let plan = MarlinPlan::new(&gpu, &w, m, None).expect("plan");
            let small = m <= 8 || n < SMALL_WIDE_N;
            assert_eq!(
                matches!(plan.kernel, MarlinKernel::Small(_)),
                small,
                "m = {m}: {}",
                plan.label()
            );
            // the small kernel also where the default is the stream kernel
            let plan = MarlinPlan::choose(&gpu, &w, m, MarlinChoice::Small(None)).expect("plan");
            let what = format!("m={m} k={k} n={n} g128");
            let worst = launch_twice(&gpu, &l, &w, &plan, &x, m, &what);
            println!("ok {what} [{}]: worst error {worst:.3} of bound", plan.label());
        }
    }
}

/// Odd shapes (n a multiple of 64 but not of 256, k blocks not divisible by the split count, CTAs
/// with more warps than k blocks), every group kind, every m class, both warp counts and several
/// split counts, each checked and launched twice.
#[test]
fn marlin_small_every_launch_shape_matches_and_is_deterministic() {
    let Some(gpu) = gpu_or_skip("marlin_small_every_launch_shape_matches_and_is_deterministic")
    else {
        return;
    };
    let cases: [(usize, usize, Option<usize>); 6] = [
        (192, 896, Some(128)),
        (320, 384, Some(32)),
        (64, 1152, Some(64)),
        (192, 640, None),
        (448, 2048, Some(128)),
        (256, 128, Some(128)), // group == k: the per-channel path
    ];
    let mut launches = 0;
    for (ci, &(n, k, group)) in cases.iter().enumerate() {
        let l = layer(n, k, group, 1000 + ci as u64);
        let w = MarlinWeights::upload(&gpu, n, k, &l.b, &l.scales, group).expect("upload");
        let ms = max_splits(n, k);
        let mut splits: Vec<usize> = vec![1, 2, 3, 5, ms];
        splits.retain(|&s| s <= ms);
        splits.dedup();
        for m in [1, 3, 8, 9, 16] {
            let x = activations(m, k, (n + k + m) as u64);
            let what = format!("m={m} n={n} k={k} group={group:?}");
            let auto = MarlinPlan::new(&gpu, &w, m, None).expect("plan");
            launch_twice(&gpu, &l, &w, &auto, &x, m, &what);
            for (warps, depth) in SMALL_VARIANTS {
                for spc in [1, 2, 4] {
                    for &s in &splits {
                        let c = SmallConfig { warps, depth, spc, splits: s };
                        let plan = MarlinPlan::choose(&gpu, &w, m, MarlinChoice::Small(Some(c)))
                            .expect("plan");
                        launch_twice(&gpu, &l, &w, &plan, &x, m, &what);
                        launches += 2;
                    }
                }
            }
        }
    }
    println!("ok: {launches} small-kernel launches matched and repeated bit-identically");
}

#[test]
fn marlin_small_rejects_what_it_cannot_serve() {
    let Some(gpu) = gpu_or_skip("marlin_small_rejects_what_it_cannot_serve") else { return };
    let l = layer(128, 256, Some(128), 3);
    let w = MarlinWeights::upload(&gpu, 128, 256, &l.b, &l.scales, l.group).expect("upload");
    let small = |m, warps, depth, spc, splits| {
        let c = SmallConfig { warps, depth, spc, splits };
        MarlinPlan::choose(&gpu, &w, m, MarlinChoice::Small(Some(c)))
    };
    let unsupported =
        |r: Result<MarlinPlan, KernelError>| matches!(r, Err(KernelError::Unsupported(_)));
    assert!(unsupported(small(17, 4, 1, 1, 1)));
    assert!(unsupported(small(1, 4, 1, 1, 0)));
    assert!(unsupported(small(1, 4, 1, 1, 3))); // k/128 = 2 blocks
    assert!(unsupported(small(1, 6, 1, 1, 1)));
    assert!(unsupported(small(1, 8, 2, 1, 1))); // not compiled
    assert!(unsupported(small(1, 4, 1, 3, 1))); // spc must divide warps
                                                // m = 17 by default goes to the stream kernel
    let plan = MarlinPlan::new(&gpu, &w, 17, None).expect("plan");
    assert!(matches!(plan.kernel, MarlinKernel::Stream(_)));
    // a plan is tied to its m
    let plan = MarlinPlan::new(&gpu, &w, 4, None).expect("plan");
    let x = gpu.zeros::<u16>(2 * 256).unwrap();
    let mut out = gpu.zeros::<f32>(2 * 128).unwrap();
    let mut ws = MarlinWorkspace::new(&gpu, 4, 128).unwrap();
    assert!(matches!(plan.launch(&gpu, &w, &mut ws, &x, &mut out, 2), Err(KernelError::Shape(_))));
}

/// The parallel reference (64-column slices) equals the whole-tensor dequantizer; CPU only.
#[test]
fn sliced_dequantization_equals_the_whole() {
    for group in [Some(128), Some(32), None] {
        let l = layer(320, 256, group, 17);
        let t = MarlinTensors {
            kind: MarlinKind::Gptq,
            bits: Bits::B4,
            n: 320,
            k: 256,
            group_size: group.map_or(GroupSize::PerChannel, GroupSize::Size),
            b: l.b.clone(),
            s: l.scales.iter().map(|v| v.to_f32()).collect(),
            zp: None,
            g_idx: None,
            sort_indices: None,
        };
        let whole = marlin_dequantize(&t).unwrap();
        let sliced = dequantize_parallel(&t);
        assert_eq!(whole.len(), sliced.len());
        assert!(whole.iter().zip(&sliced).all(|(a, b)| a.to_bits() == b.to_bits()), "{group:?}");
        assert!(whole.iter().zip(&l.w).all(|(a, b)| a.to_bits() == b.to_bits()), "{group:?}");
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
