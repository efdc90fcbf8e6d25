//! The GPU engine against the CPU engine on random blocks of real shapes. Skipped (with
//! `skipped: <reason>`) without a GPU, unless `QTOOL_REQUIRE_GPU=1`.
//!
//! Tolerance: every row of every compared matrix (block output and each site's capture) must
//! satisfy `‖gpu − cpu‖₂ ≤ 1e-5 · ‖cpu‖₂` (`ROW_TOL`). The two engines differ only in the
//! summation order of their f32 GEMMs (and expf's last bit), which moves a row by a few 1e-7.

use std::time::Instant;

use qtool_kernels::seeded::values;
use qtool_kernels::Gpu;

use super::*;
use crate::engine::block::BlockShape;
use crate::engine::config::{Rope, RopeKind};
use crate::engine::matrix::Matrix;

const ROW_TOL: f64 = 1e-5;

fn gpu() -> Option<Gpu> {
    Gpu::for_tests()
}

#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    inter: usize,
    bias: bool,
    qk_norm: bool,
}

const SMOLLM2: Shape =
    Shape { hidden: 576, heads: 9, kv: 3, hd: 64, inter: 1536, bias: false, qk_norm: false };
const QWEN2: Shape =
    Shape { hidden: 256, heads: 4, kv: 2, hd: 64, inter: 512, bias: true, qk_norm: false };
const QWEN3: Shape =
    Shape { hidden: 256, heads: 4, kv: 1, hd: 128, inter: 384, bias: false, qk_norm: true };

/// A block of `s` with weights scaled like a trained model's (`1/sqrt(in)`), so activations stay
/// of order one through attention and the MLP.
fn random_block(s: Shape, seed: u64) -> Block {
    let mut n = seed * 100;
    let mut next = |len: usize, scale: f32, offset: f32| {
        n += 1;
        values(n, len).into_iter().map(|v| v * scale + offset).collect::<Vec<f32>>()
    };
    let mut linear = |out: usize, inp: usize, bias: bool| Linear {
        weight: Matrix::from_vec(out, inp, next(out * inp, 1.0 / (inp as f32).sqrt(), 0.0)),
        bias: bias.then(|| next(out, 0.5, 0.0)),
    };
    let (qd, kvd) = (s.heads * s.hd, s.kv * s.hd);
    let q = linear(qd, s.hidden, s.bias);
    let k = linear(kvd, s.hidden, s.bias);
    let v = linear(kvd, s.hidden, s.bias);
    let o = linear(s.hidden, qd, false);
    let gate = linear(s.inter, s.hidden, false);
    let up = linear(s.inter, s.hidden, false);
    let down = linear(s.hidden, s.inter, false);
    let mut norm = |len: usize| next(len, 0.2, 1.0);
    Block {
        index: 0,
        input_norm: norm(s.hidden),
        post_attn_norm: norm(s.hidden),
        q_norm: s.qk_norm.then(|| norm(s.hd)),
        k_norm: s.qk_norm.then(|| norm(s.hd)),
        q,
        k,
        v,
        o,
        gate,
        up,
        down,
        cfg: BlockShape {
            hidden: s.hidden,
            n_heads: s.heads,
            n_kv_heads: s.kv,
            head_dim: s.hd,
            eps: 1e-6,
            rope: Rope::new(10000.0, s.hd, RopeKind::None),
            sliding_window: None,
        },
    }
}

/// Largest `‖a − b‖ / ‖b‖` over rows of `cols`.
fn worst_row(a: &[f32], b: &[f32], cols: usize) -> f64 {
    assert_eq!(a.len(), b.len());
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let d: f64 = x.iter().zip(y).map(|(&p, &q)| ((p - q) as f64).powi(2)).sum();
            let n: f64 = y.iter().map(|&q| (q as f64).powi(2)).sum();
            (d / n.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// What one forward pass produced: the output and each site's captured input, all windows.
struct Run {
    out: Vec<f32>,
    sites: [Vec<f32>; 4],
}

fn cpu_run(block: &Block, input: &[f32], windows: usize, t: usize) -> Run {
    let h = block.cfg.hidden;
    let positions: Vec<usize> = (0..t).collect();
    let mut run = Run { out: Vec::new(), sites: Default::default() };
    for w in 0..windows {
        let mut m = Matrix::from_vec(t, h, input[w * t * h..(w + 1) * t * h].to_vec());
        block
            .forward(
                &mut m,
                &positions,
                Some(&mut |site: Site, x: &Matrix| {
                    run.sites[site as usize].extend_from_slice(&x.data);
                }),
            )
            .unwrap();
        run.out.extend_from_slice(&m.data);
    }
    run
}

fn gpu_run(
    ops: &LlamaGpu<'_>,
    block: &GpuBlock,
    input: &[f32],
    windows: usize,
    t: usize,
    widths: [usize; 4],
) -> Run {
    let gpu = ops.gpu();
    let mut hidden = gpu.upload(input).unwrap();
    let mut sites: [Vec<f32>; 4] = Default::default();
    let mut order = Vec::new();
    block
        .forward(
            ops,
            &mut hidden,
            windows,
            t,
            Some(&mut |site: Site, x: &CudaSlice<f32>, rows: usize| {
                order.push(site);
                let v = gpu.download(x)?;
                sites[site as usize].extend_from_slice(&v[..rows * widths[site as usize]]);
                Ok(())
            }),
        )
        .unwrap();
    for chunk in order.chunks(4) {
        assert_eq!(chunk, Site::ALL, "sites come in order per chunk");
    }
    Run { out: gpu.download(&hidden).unwrap(), sites }
}

fn widths(s: Shape) -> [usize; 4] {
    [s.hidden, s.heads * s.hd, s.hidden, s.inter]
}

/// GPU vs CPU for `windows` windows of each `t`, with the default scratch budget and with one
/// small enough to force a chunk per window.
fn check_shape(name: &str, s: Shape, cases: &[(usize, usize)]) {
    let Some(gpu) = gpu() else { return };
    let ops = LlamaGpu::new(&gpu).unwrap();
    let block = random_block(s, 7);
    let mut dev = GpuBlock::upload(&ops, &block).unwrap();
    for &(windows, t) in cases {
        let input = values(1000 + t as u64, windows * t * s.hidden);
        let cpu = cpu_run(&block, &input, windows, t);
        for budget in [None, Some(1)] {
            if let Some(b) = budget {
                dev.set_scratch_budget(b);
            }
            let got = gpu_run(&ops, &dev, &input, windows, t, widths(s));
            let mut worst = worst_row(&got.out, &cpu.out, s.hidden);
            for (i, site) in Site::ALL.iter().enumerate() {
                let e = worst_row(&got.sites[i], &cpu.sites[i], widths(s)[i]);
                assert!(e <= ROW_TOL, "{name} t={t} {site:?} budget {budget:?}: row error {e:.3e}");
                worst = worst.max(e);
            }
            println!(
                "{name}: {windows} windows of {t}, budget {budget:?}: worst row error {worst:.2e}"
            );
            assert!(worst <= ROW_TOL, "{name} t={t} budget {budget:?}: row error {worst:.3e}");
        }
        dev.set_scratch_budget(usize::MAX);
    }
}

#[test]
fn smollm2_block_matches_cpu() {
    check_shape("smollm2", SMOLLM2, &[(3, 1), (3, 7), (3, 128), (2, 512)]);
}

#[test]
fn qwen2_block_with_biases_matches_cpu() {
    check_shape("qwen2", QWEN2, &[(4, 1), (3, 7), (2, 128), (2, 512)]);
}

#[test]
fn qwen3_block_with_qk_norms_matches_cpu() {
    check_shape("qwen3", QWEN3, &[(4, 1), (3, 7), (2, 128), (2, 512)]);
}

#[test]
fn set_weight_swaps_a_linear() {
    let Some(gpu) = gpu() else { return };
    let ops = LlamaGpu::new(&gpu).unwrap();
    let s = QWEN2;
    let mut block = random_block(s, 3);
    let mut dev = GpuBlock::upload(&ops, &block).unwrap();
    let (windows, t) = (2, 16);
    let input = values(5, windows * t * s.hidden);
    for slot in [0, 3, 6] {
        let w = values(40 + slot as u64, block.linears()[slot].2.weight.data.len());
        let w: Vec<f32> = w.iter().map(|v| v * 0.05).collect();
        dev.set_weight(&ops, slot, &w).unwrap();
        block.linears_mut()[slot].2.weight.data.copy_from_slice(&w);
    }
    let cpu = cpu_run(&block, &input, windows, t);
    let got = gpu_run(&ops, &dev, &input, windows, t, widths(s));
    let e = worst_row(&got.out, &cpu.out, s.hidden);
    assert!(e <= ROW_TOL, "row error {e:.3e}");
    assert!(dev.set_weight(&ops, 7, &[]).is_err());
    assert!(dev.set_weight(&ops, 1, &[0.0; 3]).is_err());
}

#[test]
fn head_nll_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let ops = LlamaGpu::new(&gpu).unwrap();
    let (rows, hidden, vocab) = (37, 96, 1000);
    let head = Head {
        norm: values(1, hidden).iter().map(|v| 1.0 + 0.2 * v).collect(),
        weight: Matrix::from_vec(vocab, hidden, values(2, vocab * hidden)),
        eps: 1e-5,
    };
    let x = Matrix::from_vec(rows, hidden, values(3, rows * hidden));
    let targets: Vec<i32> =
        (0..rows).map(|r| if r == 5 { -1 } else { (r * 131 % vocab) as i32 }).collect();
    let dev = GpuHead::upload(&ops, &head).unwrap();
    let xd = gpu.upload(&x.data).unwrap();
    let got = dev.nll(&ops, &xd, &targets).unwrap();
    let logits = head.logits(&x);
    let glog = gpu.download(&dev.logits(&ops, &xd, rows).unwrap()).unwrap();
    assert!(worst_row(&glog, &logits.data, vocab) <= ROW_TOL);
    for (r, &tg) in targets.iter().enumerate() {
        let want = if tg < 0 { 0.0 } else { crate::eval::nll_of(logits.row(r), tg as usize) };
        assert!(
            (got[r] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {r}: {} vs {want}",
            got[r]
        );
    }
    assert!(dev.nll(&ops, &xd, &[vocab as i32]).is_err());
}

/// Time of one 7B-shaped block (Llama-2-7B: hidden 4096, 32 heads, inter 11008) over 128
/// windows of 512 tokens. `cargo test --release -p qtool-calib --lib -- --ignored --nocapture
/// seven_b`.
#[test]
#[ignore = "timing; needs a GPU with ~8 GB free"]
fn seven_b_block_timing() {
    let Some(gpu) = gpu() else { return };
    let ops = LlamaGpu::new(&gpu).unwrap();
    let s = Shape {
        hidden: 4096,
        heads: 32,
        kv: 32,
        hd: 128,
        inter: 11008,
        bias: false,
        qk_norm: false,
    };
    let block = random_block(s, 11);
    let dev = GpuBlock::upload(&ops, &block).unwrap();
    drop(block);
    let (windows, t) = (128, 512);
    let input = values(9, windows * t * s.hidden);
    let mut hidden = gpu.upload(&input).unwrap();
    let mut times = Vec::new();
    for _ in 0..3 {
        hidden = gpu.upload(&input).unwrap();
        gpu.synchronize().unwrap();
        let t0 = Instant::now();
        dev.forward(&ops, &mut hidden, windows, t, None).unwrap();
        gpu.synchronize().unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let flops = 2.0 * (windows * t) as f64 * (4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0);
    let best = times.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "7B block, {windows}x{t} tokens: {:?} ms per pass (linears {:.1} TFLOP/s at best)",
        times.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>(),
        flops / best * 1e-9
    );
    // With capture of every site (the calibration pass): downloads nothing, just observes.
    let mut seen = 0usize;
    let t0 = Instant::now();
    dev.forward(
        &ops,
        &mut hidden,
        windows,
        t,
        Some(&mut |_s: Site, _x: &CudaSlice<f32>, rows: usize| {
            seen += rows;
            Ok(())
        }),
    )
    .unwrap();
    gpu.synchronize().unwrap();
    println!("with capture: {:.0} ms, {seen} rows seen", t0.elapsed().as_secs_f64() * 1e3);
    let out = gpu.download(&hidden).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}
