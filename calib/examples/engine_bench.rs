//! Timing of the engine's pieces on the CPU, for docs/PERFORMANCE.md:
//! `engine_bench [MODEL]` prints the GEMM rate of a SmolLM-sized linear (512 tokens × 576 →
//! 1536) on 1 and 2 threads and, given a model, the time to decode a block, run it on 512
//! tokens, decode the head and compute 512 rows of logits.

use std::time::Instant;

use qtool_calib::engine::{Matrix, Model};

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (m, k, n) = (512usize, 576usize, 1536usize);
    let x = Matrix::from_vec(m, k, (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect());
    let w = Matrix::from_vec(n, k, (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect());
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let s = best_of(10, || {
            pool.install(|| x.matmul_t(&w));
        });
        let gflops = 2.0 * (m * k * n) as f64 / s / 1e9;
        println!("gemm {m}x{k}x{n}, {threads} thread(s): {:.2} ms, {gflops:.1} GFLOP/s", s * 1e3);
    }
    let Some(path) = std::env::args().nth(1) else { return Ok(()) };
    let model = Model::open(path)?;
    let vocab = model.config().vocab as u32;
    let tokens: Vec<u32> = (0..512u32).map(|i| i * 31 % vocab).collect();
    let positions: Vec<usize> = (0..512).collect();
    let t = Instant::now();
    let block = model.load_block(model.config().n_layers / 2)?;
    println!("load_block: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut hidden = model.embed(&tokens)?;
    let s = best_of(5, || block.forward(&mut hidden, &positions, None).expect("forward"));
    println!("block forward, 512 tokens: {:.1} ms", s * 1e3);
    let t = Instant::now();
    let head = model.load_head()?;
    println!("load_head: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let s = best_of(2, || {
        head.logits(&hidden);
    });
    println!("head logits, 512 tokens: {:.1} ms", s * 1e3);
    Ok(())
}
