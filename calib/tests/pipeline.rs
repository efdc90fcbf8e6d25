//! The calibrated pipeline on the tiny llama fixture with a byte-level tokenizer: GPTQ and AWQ
//! beat RTN on held-out output error, an interrupted run resumes from its last block and
//! writes exactly what an uninterrupted run writes, and results do not depend on threads.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use qtool_calib::calibration::{CalibSource, CalibSpec};
use qtool_calib::engine::Model;
use qtool_calib::pipeline::{self, Device, Method, Options, PipelineError};
use qtool_quantizers::export::{self, output, IntOptions, Layout, Request};

fn fixture_with_tokenizer(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
    let d = dir.join("tiny");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    // Byte-level BPE without merges: one token per byte, ids 0..255 (GPT-2's byte alphabet).
    let mut bs: Vec<u32> =
        (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = bs
        .iter()
        .zip(&cs)
        .map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), serde_json::json!(b)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    d
}

fn calib_file(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let text = "Sphinx of black quartz, judge my vow; pack my box with five dozen liquor jugs. \
                fn main() { let x = [1, 2, 3]; println!(\"{x:?}\"); }\n";
    std::fs::write(&p, text.repeat(60)).unwrap();
    p
}

struct Run {
    files: Vec<u8>,
    log: pipeline::CalibLog,
    started_at: usize,
}

fn run(
    model_dir: &Path,
    calib: &Path,
    out: &Path,
    method: Method,
    layout: Layout,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Run, PipelineError> {
    run_on(model_dir, calib, out, method, layout, resume, stop_after, Device::Auto)
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    model_dir: &Path,
    calib: &Path,
    out: &Path,
    method: Method,
    layout: Layout,
    resume: bool,
    stop_after: Option<usize>,
    device: Device,
) -> Result<Run, PipelineError> {
    let model = Model::open(model_dir).unwrap();
    let spec = export::lookup("w4a16").unwrap();
    let req = Request::new(spec, Some(layout), &[], &[], false)
        .unwrap()
        .with_int_options(&IntOptions { group_size: Some(32), symmetric: None, gptq_v2: false })
        .unwrap();
    let plan = export::plan(model.checkpoint().source(), &req).unwrap();
    let opts = Options {
        method,
        damp: 0.01,
        act_order: true,
        calib: CalibSpec {
            source: CalibSource::File(calib.to_path_buf()),
            samples: 16,
            seqlen: 64,
        },
        output: out.to_path_buf(),
        resume,
    };
    let outcome = pipeline::run_on(&model, &plan, &opts, device, &mut |b| {
        if stop_after == Some(b.block) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    output::write_with(model.checkpoint(), &plan, out, &mut |_| {}, Some(&outcome.store)).unwrap();
    let files = std::fs::read(out.join("model.safetensors")).unwrap();
    Ok(Run { files, log: outcome.log, started_at: outcome.started_at })
}

#[test]
fn gptq_and_awq_beat_rtn_on_held_out_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    for (method, layout) in [
        (Method::Gptq, Layout::Gptq),
        (Method::Awq, Layout::Awq),
        (Method::Gptq, Layout::CompressedTensors),
    ] {
        let out = tmp.path().join(format!("{}-{}", method.name(), layout.name()));
        let r = run(&model, &calib, &out, method, layout, false, None).unwrap();
        let s = &r.log.summary;
        assert_eq!(s.layers, 14);
        assert_eq!(s.fallbacks, 0);
        assert!(s.mean_error < s.mean_rtn_error, "{method:?}: {s:?}");
        assert!(s.better_than_rtn >= 10, "{method:?}: {s:?}");
    }
}

#[test]
fn an_interrupted_run_resumes_and_writes_the_same_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    let full =
        run(&model, &calib, &tmp.path().join("full"), Method::Gptq, Layout::Gptq, false, None)
            .unwrap();

    let out = tmp.path().join("again");
    let err = run(&model, &calib, &out, Method::Gptq, Layout::Gptq, false, Some(0)).err().unwrap();
    assert!(matches!(err, PipelineError::Interrupted { block: 0 }), "{err}");
    assert!(!out.exists(), "nothing is written at the output before the run finishes");
    let resumed = run(&model, &calib, &out, Method::Gptq, Layout::Gptq, true, None).unwrap();
    assert_eq!(resumed.started_at, 1, "block 0 is taken from the state");
    // The resumed blocks' log entries went through state.json (last-digit float rounding).
    assert_eq!(resumed.log.layers.len(), full.log.layers.len());
    for (a, b) in resumed.log.layers.iter().zip(&full.log.layers) {
        assert_eq!((&a.name, a.damp), (&b.name, b.damp));
        assert!(
            (a.error - b.error).abs() <= 1e-12 * b.error
                && (a.rtn_error - b.rtn_error).abs() <= 1e-12 * b.rtn_error
        );
    }
    assert!(resumed.files == full.files, "the resumed checkpoint differs");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    let with = |threads: usize, name: &str| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let out = tmp.path().join(name);
        pool.install(|| {
            run(&model, &calib, &out, Method::Awq, Layout::Awq, false, None).unwrap().files
        })
    };
    assert!(with(1, "t1") == with(3, "t3"));
}

/// The GPU pipeline (forward passes, device Hessians, GPU GPTQ, device error log) against the
/// CPU pipeline on the same model and calibration text. The two forward passes differ by f32
/// rounding (cuBLAS vs the CPU SGEMM), which moves Hessians by ~1e-6 relative and can flip
/// GPTQ's rounding ties, so codes are compared by share, errors by a relative bound.
#[test]
fn gptq_on_the_gpu_matches_the_cpu_pipeline() {
    let Some((cpu, gpu)) = on_cpu_and_gpu(Method::Gptq, Layout::Gptq) else { return };
    assert_eq!(gpu.log.block_seconds.len(), cpu.log.block_seconds.len());
    for (c, g) in cpu.log.layers.iter().zip(&gpu.log.layers) {
        assert_eq!(c.name, g.name);
        assert_errors_close(c, g);
        assert_eq!(c.damp, g.damp, "{}", c.name);
    }
    let differ = cpu.files.iter().zip(&gpu.files).filter(|(a, b)| a != b).count();
    assert!(differ * 100 <= cpu.files.len(), "{differ} of {} bytes differ", cpu.files.len());
}

/// One layer's CPU and GPU log errors: RTN's within 1e-3 (it sees only the forward passes'
/// f32-level differences), the method's within 5e-2 (a few codes may flip at rounding ties).
fn assert_errors_close(c: &pipeline::LayerLog, g: &pipeline::LayerLog) {
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    assert!(
        rel(c.rtn_error, g.rtn_error) < 1e-3,
        "{}: rtn {} vs {}",
        c.name,
        c.rtn_error,
        g.rtn_error
    );
    assert!(rel(c.error, g.error) < 5e-2, "{}: method {} vs {}", c.name, c.error, g.error);
}

/// The same calibrated quantization of the tiny fixture on the CPU and on the GPU (`None`, the
/// test skipping, without a GPU). Checks what holds for every method: the logged devices, the
/// same layers and checkpoint size, and that a second GPU run writes the same bytes.
fn on_cpu_and_gpu(method: Method, layout: Layout) -> Option<(Run, Run)> {
    if !gpu_or_skip() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    let go = |name: &str, device| {
        let out = tmp.path().join(name);
        run_on(&model, &calib, &out, method, layout, false, None, device).unwrap()
    };
    let cpu = go("cpu", Device::Cpu);
    let gpu = go("gpu", Device::Cuda);
    assert_eq!((cpu.log.device.as_str(), gpu.log.device.as_str()), ("cpu", "cuda"));
    assert_eq!(cpu.log.layers.len(), gpu.log.layers.len());
    assert_eq!(cpu.files.len(), gpu.files.len());
    let again = go("gpu-again", Device::Cuda);
    assert!(again.files == gpu.files, "the GPU {method:?} pipeline is not deterministic");
    Some((cpu, gpu))
}

#[test]
fn device_cuda_without_a_gpu_is_an_error_and_cpu_is_logged() {
    if qtool_kernels::Gpu::open(0).is_ok() {
        println!("skipped: a GPU is present");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    let out = tmp.path().join("q");
    let err = run_on(&model, &calib, &out, Method::Gptq, Layout::Gptq, false, None, Device::Cuda)
        .err()
        .expect("--device cuda without a GPU must fail");
    assert!(err.to_string().contains("--device cuda"), "{err}");
    let r = run_on(&model, &calib, &out, Method::Gptq, Layout::Gptq, false, None, Device::Auto)
        .unwrap();
    assert_eq!(r.log.device, "cpu");
}

/// Whether a usable GPU is present; without one the GPU tests skip (or fail under
/// `QTOOL_REQUIRE_GPU=1`, as on the device).
fn gpu_or_skip() -> bool {
    qtool_kernels::Gpu::for_tests().is_some()
}

/// AWQ with the GPU pipeline (device forward passes, `Σxxᵀ` and `Σ|x|` on the device, the
/// scale search's quadratic forms in f64 DGEMMs, the device error log) against the CPU pipeline.
/// The forward passes differ by f32 rounding, so activations, and with them `mean|x|`, the scales
/// and the statistics, differ by ~1e-6 relative; the f64 quadratic forms differ from the CPU's
/// f32 ones by ~1e-6 relative as well. An α wins by far more than that except in near-ties, so
/// the searches pick the same α on (nearly) every group; scaled weights then differ only in
/// their last bits, which moves a few codes at rounding ties (hence a small share of bytes, and
/// errors within a few percent, as GPTQ's bound).
#[test]
fn awq_on_the_gpu_matches_the_cpu_pipeline() {
    let Some((cpu, gpu)) = on_cpu_and_gpu(Method::Awq, Layout::Awq) else { return };
    let mut alpha_differs = 0;
    for (c, g) in cpu.log.layers.iter().zip(&gpu.log.layers) {
        println!(
            "{}: alpha {:?}/{:?} rtn {:.6e}/{:.6e} awq {:.6e}/{:.6e}",
            c.name, c.alpha, g.alpha, c.rtn_error, g.rtn_error, c.error, g.error
        );
        assert_eq!(c.name, g.name);
        assert_eq!(c.alpha.is_some(), g.alpha.is_some(), "{}", c.name);
        if c.alpha != g.alpha {
            alpha_differs += 1;
            continue;
        }
        assert_errors_close(c, g);
    }
    let differ = cpu.files.iter().zip(&gpu.files).filter(|(a, b)| a != b).count();
    println!(
        "alpha differs on {alpha_differs} layers; {differ} of {} bytes differ",
        cpu.files.len()
    );
    // At most one group (q/k/v: three layers) may land on another α in a near-tie.
    assert!(alpha_differs <= 3, "{alpha_differs} layers chose another alpha");
    assert!(differ * 50 <= cpu.files.len(), "{differ} of {} bytes differ", cpu.files.len());
    let s = &gpu.log.summary;
    assert!(s.mean_error < s.mean_rtn_error, "{s:?}");
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// The device statistics AWQ downloads and the device quadratic form, against the CPU's
/// `Hessian` and `GramQuadForm` on the same activations (two batches; K not a multiple of the
/// kernels' widths): `Σ|x|` sums in the CPU's order, so it is bit-equal; `Σxxᵀ` comes from SSYRK
/// instead of the CPU's chunked SGEMM (f32 rounding, 1e-5 relative); the f64 quadratic form is
/// checked against an f64 host sum (1e-10) and the CPU's f32 one (1e-4).
#[test]
fn gpu_abs_sums_and_quad_forms_match_the_cpu() {
    use qtool_kernels::gptq::{quad_form, GptqGpu, GpuAbsSum, GpuHessian};
    use qtool_quantizers::ptq::{GramQuadForm, Hessian, QuadForm};
    if !gpu_or_skip() {
        return;
    }
    let gpu = qtool_kernels::Gpu::open(0).unwrap();
    let gg = GptqGpu::new(&gpu).unwrap();
    let (k, t1, t2, rows) = (301, 700, 333, 19);
    let mut seed = 5;
    let x: Vec<f32> =
        (0..(t1 + t2) * k).map(|i| lcg(&mut seed) * (1.0 + (i % k) as f32 / 50.0)).collect();
    let mut cpu = Hessian::new(k);
    let (mut gh, mut ga) = (GpuHessian::new(&gg, k).unwrap(), GpuAbsSum::new(&gg, k).unwrap());
    for part in [&x[..t1 * k], &x[t1 * k..]] {
        cpu.add(part).unwrap();
        let xd = gpu.upload(part).unwrap();
        gh.add_device(&gg, &xd, part.len() / k).unwrap();
        ga.add_device(&gg, &xd, part.len() / k).unwrap();
    }
    assert_eq!((gh.tokens(), ga.tokens()), ((t1 + t2) as u64, (t1 + t2) as u64));
    let host = Hessian::from_parts(
        k,
        gh.download_upper(&gg).unwrap(),
        ga.download(&gg).unwrap(),
        gh.tokens(),
    )
    .unwrap();
    let (am_c, am_g) = (cpu.abs_mean().unwrap(), host.abs_mean().unwrap());
    assert!(am_c.iter().zip(&am_g).all(|(a, b)| a.to_bits() == b.to_bits()), "abs sums differ");
    let (gc, gh_host) = (cpu.gram().unwrap(), host.gram().unwrap());
    let scale = gc.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in gc.iter().zip(&gh_host).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "gram[{i}] {a} vs {b}");
    }
    // The device gram is the downloaded one, bit for bit.
    let gram_d = gh.gram(&gg).unwrap();
    let gram_dev = gpu.download(&gram_d).unwrap();
    assert!(gram_dev.iter().zip(&gh_host).all(|(a, b)| a.to_bits() == b.to_bits()), "device gram");
    let d: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed)).collect();
    let got = quad_form(&gg, &gram_d, k, &d, rows).unwrap();
    let mut exact = 0.0f64;
    for r in d.chunks_exact(k) {
        for i in 0..k {
            let row: f64 = (0..k).map(|j| gram_dev[i * k + j] * f64::from(r[j])).sum();
            exact += f64::from(r[i]) * row;
        }
    }
    assert!((got - exact).abs() <= 1e-10 * exact.abs(), "{got} vs {exact}");
    let cpu_qf = GramQuadForm::new(&gram_dev, k).unwrap().sum(&d, rows).unwrap();
    assert!((got - cpu_qf).abs() <= 1e-4 * exact.abs(), "{got} vs cpu {cpu_qf}");
    assert!(quad_form(&gg, &gram_d, k, &d[1..], rows).is_err(), "ragged rows are refused");
}
