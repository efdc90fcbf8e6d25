//! GPU GPTQ of one linear at model shapes: Hessian accumulation over 128 × 2048 = 262144
//! calibration tokens, the factorization (dampening, Cholesky, `H⁻¹` upper factor, f64) and the
//! column loop (act-order, static groups of 128, 4-bit asymmetric), timed separately.
//!
//! `cargo run --release -p qtool-kernels --example bench_gptq [-- --quick]`
//! The activations are one 2048-token batch of correlated values uploaded once and accumulated
//! 128 times (host→device copies excluded, as the reference holds its activations on the GPU);
//! each phase is synchronized wall time, second run reported (the first compiles the kernels).

use std::time::Instant;

use qtool_kernels::gptq::{gptq_quantize, GptqGpu, GpuFactor, GpuHessian};
use qtool_kernels::seeded::values;
use qtool_kernels::{Gpu, KResult};
use qtool_quantizers::int::rtn::{Bits, Convention, GroupSize, RtnConfig, ScaleDtype};
use qtool_quantizers::ptq::GptqConfig;

const SEQ: usize = 2048;
const SEQS: usize = 128;

/// `[SEQ, k]`: noise plus a rank-8 common part, channel scales over 10×.
fn batch(k: usize) -> Vec<f32> {
    let r = 8;
    let z = values(1, SEQ * r);
    let mix = values(2, r * k);
    let mut x = values(3, SEQ * k);
    for i in 0..SEQ {
        for c in 0..k {
            let mut s = 0.0;
            for j in 0..r {
                s += z[i * r + j] * mix[j * k + c];
            }
            x[i * k + c] = (x[i * k + c] + s) * (0.5 + 5.0 * (c % 97) as f32 / 97.0);
        }
    }
    x
}

struct Row {
    n: usize,
    k: usize,
    hessian_s: f64,
    factor_s: f64,
    prepare_s: f64,
    loop_s: f64,
    finish_s: f64,
    damp: Option<f64>,
}

fn one(g: &GptqGpu<'_>, n: usize, k: usize) -> KResult<Row> {
    let gpu = g.gpu();
    let xd = gpu.upload(&batch(k))?;
    let w = values(4, n * k);
    let rtn = RtnConfig {
        bits: Bits::B4,
        group_size: GroupSize::Size(128),
        symmetric: false,
        convention: Convention::Gptq,
    };
    let mut cfg = GptqConfig::new(rtn, ScaleDtype::F16);
    cfg.act_order = true;
    let mut row = None;
    for _run in 0..2 {
        gpu.synchronize()?;
        let t = Instant::now();
        let mut h = GpuHessian::new(g, k)?;
        for _ in 0..SEQS {
            h.add_device(g, &xd, SEQ)?;
        }
        let hd = h.hessian(g)?;
        gpu.synchronize()?;
        let hessian_s = t.elapsed().as_secs_f64();
        drop(h);
        let t = Instant::now();
        let f = GpuFactor::new(g, &hd, k, &cfg)?;
        gpu.synchronize()?;
        let factor_s = t.elapsed().as_secs_f64();
        drop(hd);
        let (out, times) = gptq_quantize(g, &w, n, k, &f, &cfg)?;
        let sum: u64 = out.q.codes.iter().map(|&c| u64::from(c)).sum();
        eprintln!("  {n}x{k}: codes sum {sum}, loss {:.4e}", out.loss);
        row = Some(Row {
            n,
            k,
            hessian_s,
            factor_s,
            prepare_s: times.prepare_s,
            loop_s: times.loop_s,
            finish_s: times.finish_s,
            damp: f.damp(),
        });
    }
    Ok(row.expect("two runs"))
}

fn main() -> KResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = Gpu::open(0)?;
    let g = GptqGpu::new(&gpu)?;
    println!("device: {} ({})", gpu.device().name, gpu.arch());
    println!(
        "GPTQ one linear, act-order, g128, 4-bit asym, {} tokens; seconds (wall, synchronized)",
        SEQ * SEQS
    );
    println!(
        "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "N x K", "hessian", "factor", "prepare", "loop", "finish", "solve", "damp"
    );
    let shapes: &[(usize, usize)] =
        if quick { &[(4096, 4096)] } else { &[(4096, 4096), (11008, 4096), (4096, 11008)] };
    for &(n, k) in shapes {
        let r = one(&g, n, k)?;
        let solve = r.factor_s + r.prepare_s + r.loop_s + r.finish_s;
        println!(
            "{:>12} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6}",
            format!("{}x{}", r.n, r.k),
            r.hessian_s,
            r.factor_s,
            r.prepare_s,
            r.loop_s,
            r.finish_s,
            solve,
            r.damp.map_or("rtn".into(), |d| format!("{d}"))
        );
    }
    Ok(())
}
