//! Marlin W4A16 GEMM vs cuBLAS BF16 on the layer shapes of docs/PERFORMANCE.md.
//!
//! `cargo run --release -p qtool-kernels --example bench_marlin [-- --sweep] [--sweep-small]
//! [--reps N] [--batches 1,16] [--shapes 4096x11008,...]` (`-- --precompile sm_90a` only fills
//! the NVRTC cache).
//!
//! The default plan runs the small-batch kernel for m ≤ 16 and the stream kernel above; for
//! m ≤ 16 the other kernel's default is timed too: `stream us` where the small kernel is the
//! default, `[small …]` (its chosen launch shape) where the stream kernel is (wide n).
//! `--sweep` times every compiled stream configuration, `--sweep-small` the small kernel's warp
//! counts × split counts.
//!
//! Both GEMMs run on device-resident operands and are timed the same way: a long cuBLAS GEMM
//! is queued first so the GPU is busy while the host enqueues `reps` launches, then the launches
//! run back to back between two CUDA events (time / reps = kernel time without host launch gaps,
//! as under CUDA graphs). `ev` is the per-launch event median of `timing::median_micros` (what
//! `verify` reports), which includes host launch overhead when that exceeds the kernel.
//! Weights are random Marlin words with random f16 group-128 scales (the work does not depend on
//! the values). Each launch reads another copy of the weights, with enough copies to exceed
//! twice the L2 cache, so weights stream from HBM rather than L2 — on both sides.

use cudarc::driver::sys::{CUdevice_attribute as A, CUevent_flags};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use qtool_kernels::marlin::{
    cublas_bf16_device, MarlinChoice, MarlinConfig, MarlinKernel, MarlinPlan, MarlinWeights,
    MarlinWorkspace, SmallConfig, SMALL_MAX_M, SMALL_VARIANTS,
};
use qtool_kernels::timing::median_micros;
use qtool_kernels::{Gpu, KResult};

const SHAPES: [(usize, usize); 4] = [(8192, 8192), (4096, 11008), (11008, 4096), (8192, 28672)];
const BATCHES: [usize; 4] = [1, 16, 64, 128];
const GROUP: usize = 128;

struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
    /// Uniform in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

/// HBM peak in GB/s: the figures of the issue for H200/H100 SXM, else bus width × clock.
fn hbm_peak_gbs(gpu: &Gpu) -> KResult<f64> {
    let name = gpu.device().name.to_ascii_uppercase();
    if name.contains("H200") {
        return Ok(4800.0);
    }
    if name.contains("H100") && !name.contains("PCIE") {
        return Ok(3350.0);
    }
    let khz = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? as f64;
    let bits = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)? as f64;
    Ok(2.0 * khz * 1e3 * bits / 8.0 / 1e9)
}

/// Keeps the GPU busy for a few ms (an 8192³ BF16 GEMM, twice) while launches are enqueued.
struct Blocker {
    x: CudaSlice<u16>,
    w: CudaSlice<u16>,
    out: CudaSlice<u8>,
}

impl Blocker {
    const N: usize = 8192;
    fn new(gpu: &Gpu) -> KResult<Blocker> {
        let n = Self::N;
        Ok(Blocker { x: gpu.zeros(n * n)?, w: gpu.zeros(n * n)?, out: gpu.zeros(n * n * 2)? })
    }
    fn run(&mut self, gpu: &Gpu) -> KResult<()> {
        let n = Self::N;
        for _ in 0..2 {
            cublas_bf16_device(gpu, &self.x, &self.w, &mut self.out, (n, n, n))?;
        }
        Ok(())
    }
}

/// Back-to-back time of one `f()` in µs (see the module docs).
fn queued_micros(
    gpu: &Gpu,
    blocker: &mut Blocker,
    reps: usize,
    mut f: impl FnMut() -> KResult<()>,
) -> KResult<f64> {
    for _ in 0..3 {
        f()?;
    }
    blocker.run(gpu)?;
    let ctx = gpu.stream().context().clone();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(gpu.stream())?;
    for _ in 0..reps {
        f()?;
    }
    end.record(gpu.stream())?;
    gpu.synchronize()?;
    Ok(start.elapsed_ms(&end)? as f64 * 1000.0 / reps as f64)
}

fn main() -> KResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(arch) = args.iter().position(|a| a == "--precompile").and_then(|i| args.get(i + 1))
    {
        // Fills the kernel cache ($QTOOL_KERNEL_CACHE) without a GPU, so a device run can skip
        // NVRTC when its NVRTC version matches.
        let cubin =
            qtool_kernels::nvrtc::compile_cached(&qtool_kernels::marlin::MARLIN_SOURCE, arch)?;
        println!("marlin.cu for {arch}: {} bytes cached", cubin.len());
        return Ok(());
    }
    let sweep = args.iter().any(|a| a == "--sweep");
    let sweep_small = args.iter().any(|a| a == "--sweep-small");
    let batches: Vec<usize> = args
        .iter()
        .position(|a| a == "--batches")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| BATCHES.to_vec());
    // `--shapes 4096x11008,128x64` (k x n) replaces the default shapes.
    let shapes: Vec<(usize, usize)> = args
        .iter()
        .position(|a| a == "--shapes")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.split(',')
                .filter_map(|kn| {
                    let (a, b) = kn.split_once('x')?;
                    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| SHAPES.to_vec());
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize);
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) if e.is_no_gpu() => {
            println!("skipped: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let l2 = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize;
    let clock = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000;
    let peak = hbm_peak_gbs(&gpu)?;
    println!(
        "device: {} ({}), {} SMs, max SM clock {} MHz, L2 {} MiB, HBM peak {:.0} GB/s; reps {reps}, group {GROUP}",
        gpu.device().name,
        gpu.arch(),
        gpu.sm_count()?,
        clock,
        l2 >> 20,
        peak
    );
    println!(
        "{:>11} {:>4} {:>9} {:>9} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9}  config",
        "k x n",
        "m",
        "marlin us",
        "cublas us",
        "speedup",
        "GB/s",
        "%HBM",
        "marlin ev",
        "cublas ev",
        "stream us"
    );
    let mut blocker = Blocker::new(&gpu)?;
    let mut rng = Rng(0x5eed);
    for &(k, n) in &shapes {
        let b: Vec<i32> = (0..k / 16 * 2 * n).map(|_| rng.next_u32() as i32).collect();
        let scales: Vec<f16> =
            (0..k / GROUP * n).map(|_| f16::from_f32(0.002 + 0.001 * rng.next_f32())).collect();
        let wbytes = k * n / 2;
        let copies = (0..(2 * l2).div_ceil(wbytes).max(1))
            .map(|_| MarlinWeights::upload(&gpu, n, k, &b, &scales, Some(GROUP)))
            .collect::<KResult<Vec<_>>>()?;
        drop(b);
        let wb: Vec<u16> =
            (0..n * k).map(|_| bf16::from_f32(0.02 * rng.next_f32()).to_bits()).collect();
        let wb_copies = (0..(2 * l2).div_ceil(n * k * 2).max(1))
            .map(|_| gpu.upload(&wb))
            .collect::<KResult<Vec<_>>>()?;
        drop(wb);
        for &m in &batches {
            let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.next_f32())).collect();
            let xd = gpu.upload::<u16>(bytemuck::cast_slice(&x))?;
            let xb: Vec<u16> = x.iter().map(|v| bf16::from_f32(v.to_f32()).to_bits()).collect();
            let xbd = gpu.upload(&xb)?;
            let mut out = gpu.zeros::<f32>(m * n)?;
            let mut outb = gpu.zeros::<u8>(m * n * 2)?;
            let mut ws = MarlinWorkspace::new(&gpu, m, n)?;
            let plan = MarlinPlan::new(&gpu, &copies[0], m, None)?;
            let mut marlin_for = |p: &MarlinPlan, blocker: Option<&mut Blocker>| -> KResult<f64> {
                let mut i = 0;
                let f = || {
                    i = (i + 1) % copies.len();
                    p.launch(&gpu, &copies[i], &mut ws, &xd, &mut out, m)
                };
                match blocker {
                    Some(b) => queued_micros(&gpu, b, reps, f),
                    None => median_micros(&gpu, reps, f),
                }
            };
            let us = marlin_for(&plan, Some(&mut blocker))?;
            let us_ev = marlin_for(&plan, None)?;
            let mut cublas_for = |blocker: Option<&mut Blocker>| -> KResult<f64> {
                let mut i = 0;
                let f = || {
                    i = (i + 1) % wb_copies.len();
                    cublas_bf16_device(&gpu, &xbd, &wb_copies[i], &mut outb, (m, n, k))
                };
                match blocker {
                    Some(b) => queued_micros(&gpu, b, reps, f),
                    None => median_micros(&gpu, reps, f),
                }
            };
            let cublas = cublas_for(Some(&mut blocker))?;
            let cublas_ev = cublas_for(None)?;
            // m ≤ 16: the other kernel's default too (stream where the small kernel is the
            // default, the small kernel's chosen shape where the stream kernel is).
            let mut other = String::new();
            let stream_us = if matches!(plan.kernel, MarlinKernel::Small(_)) {
                let p = MarlinPlan::choose(&gpu, &copies[0], m, MarlinChoice::Stream(None))?;
                format!("{:.1}", marlin_for(&p, Some(&mut blocker))?)
            } else if m <= SMALL_MAX_M {
                let p = MarlinPlan::choose(&gpu, &copies[0], m, MarlinChoice::Small(None))?;
                let t = marlin_for(&p, Some(&mut blocker))?;
                other = format!(" [small {t:.1} us: {}]", p.label());
                "-".to_string()
            } else {
                "-".to_string()
            };
            let gbs = wbytes as f64 / (us * 1e-6) / 1e9;
            println!(
                "{:>11} {:>4} {:>9.1} {:>9.1} {:>7.2}x {:>6.0} {:>5.0}% {:>9.1} {:>9.1} {:>9}  {} ({} CTAs){}",
                format!("{k}x{n}"),
                m,
                us,
                cublas,
                cublas / us,
                gbs,
                100.0 * gbs / peak,
                us_ev,
                cublas_ev,
                stream_us,
                plan.label().trim_start_matches("marlin_w4a16_"),
                plan.grid,
                other
            );
            if sweep_small && m <= SMALL_MAX_M {
                for (warps, depth) in SMALL_VARIANTS {
                    for spc in [1, 2, 4] {
                        let mut line = format!("   small w{warps} d{depth} s{spc}:");
                        for splits in [1, 2, 3, 4, 6, 8, 12, 16] {
                            let c = SmallConfig { warps, depth, spc, splits };
                            if !c.valid(n, k) {
                                continue;
                            }
                            let choice = MarlinChoice::Small(Some(c));
                            let Ok(p) = MarlinPlan::choose(&gpu, &copies[0], m, choice) else {
                                continue;
                            };
                            let t = marlin_for(&p, Some(&mut blocker))?;
                            line += &format!(" x{splits}:{t:.1}");
                        }
                        println!("{line}");
                    }
                }
            }
            if sweep {
                let mut line = String::from("   sweep:");
                for cfg in MarlinConfig::all() {
                    // m ≤ 8 compares the swapped (m_blocks 0) and 16-row kernels
                    let comparable = match plan.kernel {
                        MarlinKernel::Stream(c) => {
                            cfg.m_blocks == c.m_blocks || (m <= 8 && cfg.m_blocks <= 1)
                        }
                        MarlinKernel::Small(_) => cfg.m_blocks <= 1,
                    };
                    if !comparable || !cfg.fits(n, k) {
                        continue;
                    }
                    let Ok(p) = MarlinPlan::new(&gpu, &copies[0], m, Some(cfg)) else { continue };
                    let t = marlin_for(&p, Some(&mut blocker))?;
                    line += &format!(
                        " {}:{:.1}",
                        cfg.kernel_name().trim_start_matches("marlin_w4a16_"),
                        t
                    );
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
