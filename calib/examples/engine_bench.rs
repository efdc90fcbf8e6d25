use qtool_calib::engine::{Matrix, Model};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (m, k, n) = (512usize, 576usize, 1536usize);
    let x = Matrix::from_vec(m, k, (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect());
    let w = Matrix::from_vec(n, k, (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect());
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut best = f64::MAX;
        for _ in 0..10 {
            let t = Instant::now();
            pool.install(|| x.matmul_t(&w));
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("gemm {m}x{k}x{n} threads {threads}: {:.2} ms, {:.1} GFLOP/s", best * 1e3, 2.0 * (m * k * n) as f64 / best / 1e9);
    }
    if let Some(p) = args.get(1) {
        let model = Model::open(p).unwrap();
        let toks: Vec<u32> = (0..512).map(|i| (i * 31 % 40000) as u32).collect();
        let pos: Vec<usize> = (0..512).collect();
        let t = Instant::now();
        let block = model.load_block(3).unwrap();
        println!("load_block {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let mut h = model.embed(&toks).unwrap();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            block.forward(&mut h, &pos, None).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("block forward t=512: {:.1} ms", best * 1e3);
        let t = Instant::now();
        let head = model.load_head().unwrap();
        println!("load_head {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = head.logits(&h);
        println!("head logits t=512 {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}
