//! HBM read ceiling at the sizes the Marlin benchmark streams: for each k × n, the int4
//! weights + f16 group-128 scales (what Marlin reads at small m) and the BF16 weights (what
//! cuBLAS reads), each read by the best launch shape of a plain streaming kernel
//! (`kernels/cuda/hbm.cu`), buffers rotated through more than 2× L2 like bench_marlin.
//!
//! `QTOOL_REQUIRE_GPU=1 target/release/examples/bench_hbm [--reps 50]`

use qtool_kernels::hbm::read_probe;
use qtool_kernels::{Gpu, KResult};

const SHAPES: [(usize, usize); 4] = [(8192, 8192), (4096, 11008), (11008, 4096), (8192, 28672)];

fn main() -> KResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    println!("device: {} ({}), reps {reps}", gpu.device().name, gpu.arch());
    println!("      k x n       what        MB      µs     GB/s  shape (CTAs/SM × threads)");
    for (k, n) in SHAPES {
        let int4 = k * n / 2 + (k / 128) * n * 2;
        let bf16 = k * n * 2;
        for (what, bytes) in [("int4+scales", int4), ("bf16", bf16)] {
            let p = read_probe(&gpu, bytes, reps)?;
            println!(
                "{:>6}x{:<6} {:>11} {:>9.1} {:>7.1} {:>8.0}  {} × {}",
                k,
                n,
                what,
                bytes as f64 / 1e6,
                p.micros,
                p.gbps,
                p.shape.0,
                p.shape.1
            );
        }
    }
    Ok(())
}
