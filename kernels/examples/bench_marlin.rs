//! Marlin W4A16 GEMM vs cuBLAS BF16 on the layer shapes of docs/PERFORMANCE.md.
//!
//! `cargo run --release -p qtool-kernels --example bench_marlin [-- --sweep] [--reps N]`
//! (`-- --precompile sm_90a` only fills the NVRTC cache.)
//!
//! Weights are random Marlin words with random f16 group-128 scales (the kernel's work does
//! not depend on the values). Each timed Marlin launch reads a different copy of the weights,
//! with enough copies to exceed twice the L2 cache, so a 32 MB int4 matrix is streamed from
//! HBM rather than served from a 50 MB L2 between repetitions. cuBLAS BF16 weights are 4× larger
//! than L2 already. `--sweep` also times every compiled tile configuration per case and prints
//! the fastest, to choose `default_config`.

use half::{bf16, f16};
use qtool_kernels::marlin::{MarlinConfig, MarlinPlan, MarlinWeights, MarlinWorkspace};
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
    use cudarc::driver::sys::CUdevice_attribute as A;
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

/// Times `plan` rotating over the weight copies; median µs.
fn time_marlin(
    gpu: &Gpu,
    plan: &MarlinPlan,
    copies: &[MarlinWeights],
    ws: &mut MarlinWorkspace,
    x: &cudarc::driver::CudaSlice<u16>,
    out: &mut cudarc::driver::CudaSlice<f32>,
    m: usize,
    reps: usize,
) -> KResult<f64> {
    let mut i = 0;
    median_micros(gpu, reps, || {
        i = (i + 1) % copies.len();
        plan.launch(gpu, &copies[i], ws, x, out, m)
    })
}

fn main() -> KResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let sweep = args.iter().any(|a| a == "--sweep");
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize);
    if let Some(arch) = args.iter().position(|a| a == "--precompile").and_then(|i| args.get(i + 1))
    {
        // Fills the kernel cache ($QTOOL_KERNEL_CACHE) without a GPU, so a device run can skip
        // NVRTC when its NVRTC version matches.
        let cubin =
            qtool_kernels::nvrtc::compile_cached(&qtool_kernels::marlin::MARLIN_SOURCE, arch)?;
        println!("marlin.cu for {arch}: {} bytes cached", cubin.len());
        return Ok(());
    }
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) if e.is_no_gpu() => {
            println!("skipped: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    use cudarc::driver::sys::CUdevice_attribute as A;
    let l2 = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize;
    let clock = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000;
    let peak = hbm_peak_gbs(&gpu)?;
    println!(
        "device: {} ({}), {} SMs, SM clock {} MHz, L2 {} MiB, HBM peak {:.0} GB/s; reps {reps} (median), group {GROUP}",
        gpu.device().name,
        gpu.arch(),
        gpu.sm_count()?,
        clock,
        l2 >> 20,
        peak
    );
    println!(
        "{:>13} {:>4} {:>10} {:>10} {:>8} {:>8} {:>6}  {}",
        "k x n", "m", "marlin us", "cublas us", "speedup", "GB/s", "%HBM", "config"
    );
    let mut rng = Rng(0x5eed);
    for &(k, n) in &SHAPES {
        let words = k / 16 * 2 * n;
        let b: Vec<i32> = (0..words).map(|_| rng.next_u32() as i32).collect();
        let scales: Vec<f16> =
            (0..k / GROUP * n).map(|_| f16::from_f32(0.002 + 0.001 * rng.next_f32())).collect();
        let wbytes = k * n / 2;
        let n_copies = (2 * l2).div_ceil(wbytes).max(1);
        let copies = (0..n_copies)
            .map(|_| MarlinWeights::upload(&gpu, n, k, &b, &scales, Some(GROUP)))
            .collect::<KResult<Vec<_>>>()?;
        drop(b);
        let w_bf16: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(0.02 * rng.next_f32())).collect();
        for &m in &BATCHES {
            let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.next_f32())).collect();
            let xd = gpu.upload::<u16>(bytemuck::cast_slice(&x))?;
            let mut out = gpu.zeros::<f32>(m * n)?;
            let mut ws = MarlinWorkspace::new(&gpu, m, n)?;
            let plan = MarlinPlan::new(&gpu, &copies[0], m, None)?;
            let us = time_marlin(&gpu, &plan, &copies, &mut ws, &xd, &mut out, m, reps)?;
            let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
            let cublas = gpu.gemm_bf16(&xb, &w_bf16, m, n, k, reps)?.micros;
            let gbs = wbytes as f64 / (us * 1e-6) / 1e9;
            println!(
                "{:>13} {:>4} {:>10.1} {:>10.1} {:>7.2}x {:>8.0} {:>5.0}%  {}",
                format!("{k}x{n}"),
                m,
                us,
                cublas,
                cublas / us,
                gbs,
                100.0 * gbs / peak,
                plan.config.kernel_name()
            );
            if sweep {
                let mut best: Option<(f64, MarlinConfig)> = None;
                for cfg in MarlinConfig::all() {
                    if cfg.m_blocks > plan.config.m_blocks || !cfg.fits_n(n) {
                        continue;
                    }
                    let Ok(p) = MarlinPlan::new(&gpu, &copies[0], m, Some(cfg)) else { continue };
                    let t = time_marlin(&gpu, &p, &copies, &mut ws, &xd, &mut out, m, reps)?;
                    if best.is_none_or(|(b, _)| t < b) {
                        best = Some((t, cfg));
                    }
                    print!(" {}:{:.1}", cfg.kernel_name().trim_start_matches("marlin_w4a16_"), t);
                }
                println!();
                if let Some((t, c)) = best {
                    println!("   best {} {:.1} us ({:.2}x cublas)", c.kernel_name(), t, cublas / t);
                }
            }
        }
    }
    Ok(())
}
