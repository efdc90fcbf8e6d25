//! Perplexity on the GPU equals the CPU's on the tiny fixture (≤ 1e-5 relative), for one group
//! of windows and for one window per group. Skipped (`skipped: <reason>`) without a GPU unless
//! `QTOOL_REQUIRE_GPU=1`.

use qtool_calib::engine::Model;
use qtool_calib::eval::{perplexity, perplexity_gpu, PplOptions};
use qtool_kernels::Gpu;

fn gpu() -> Option<Gpu> {
    Gpu::for_tests()
}

fn tiny() -> Model {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
    // A test binary copied to another machine runs from the repository root.
    let path = if built.exists() { built } else { "fixtures/tiny-llama".into() };
    Model::open(path).unwrap()
}

#[test]
fn gpu_perplexity_equals_cpu_on_the_tiny_fixture() {
    let Some(gpu) = gpu() else { return };
    let m = tiny();
    let tokens: Vec<u32> = (0..1000).map(|i| ((i * 29 + i / 7) % 256) as u32).collect();
    for ctx in [2, 20, 128] {
        let cpu =
            perplexity(&m, &tokens, &PplOptions { ctx, ..PplOptions::default() }, &mut |_, _| {})
                .unwrap();
        for device_budget in [usize::MAX, 1] {
            let opts = PplOptions { ctx, device_budget, ..PplOptions::default() };
            let mut steps = Vec::new();
            let got =
                perplexity_gpu(&m, &tokens, &opts, &gpu, &mut |d, n| steps.push((d, n))).unwrap();
            let rel = (got.ppl - cpu.ppl).abs() / cpu.ppl;
            println!(
                "ctx {ctx}, budget {device_budget}: gpu {} cpu {} (rel {rel:.2e})",
                got.ppl, cpu.ppl
            );
            assert!(rel <= 1e-5, "ctx {ctx}: gpu {} vs cpu {}", got.ppl, cpu.ppl);
            assert_eq!((got.tokens, got.windows, got.ctx), (cpu.tokens, cpu.windows, cpu.ctx));
            let groups = if device_budget == 1 { cpu.windows } else { 1 };
            assert_eq!(steps.last(), Some(&(groups * 3, groups * 3)), "groups x (2 blocks + head)");
        }
    }
}

#[test]
fn gpu_perplexity_refuses_what_the_cpu_refuses() {
    let Some(gpu) = gpu() else { return };
    let m = tiny();
    let opts = PplOptions { ctx: 16, ..PplOptions::default() };
    let msg = perplexity_gpu(&m, &[1; 10], &opts, &gpu, &mut |_, _| {}).unwrap_err().to_string();
    assert!(msg.contains("10 tokens") && msg.contains("--ctx 16"), "{msg}");
    let opts = PplOptions { ctx: 4, ..PplOptions::default() };
    let msg =
        perplexity_gpu(&m, &[1, 2, 300, 4], &opts, &gpu, &mut |_, _| {}).unwrap_err().to_string();
    assert!(msg.contains("token id 300"), "{msg}");
}
