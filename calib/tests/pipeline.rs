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
    match qtool_kernels::Gpu::open(0) {
        Ok(_) => {}
        Err(e) => {
            if std::env::var("QTOOL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("QTOOL_REQUIRE_GPU=1 but {e}");
            }
            println!("skipped: {e}");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_with_tokenizer(tmp.path());
    let calib = calib_file(tmp.path());
    let go = |name: &str, device| {
        let out = tmp.path().join(name);
        run_on(&model, &calib, &out, Method::Gptq, Layout::Gptq, false, None, device).unwrap()
    };
    let cpu = go("cpu", Device::Cpu);
    let gpu = go("gpu", Device::Cuda);
    assert_eq!((cpu.log.device.as_str(), gpu.log.device.as_str()), ("cpu", "cuda"));
    assert_eq!(gpu.log.block_seconds.len(), cpu.log.block_seconds.len());
    assert_eq!(cpu.log.layers.len(), gpu.log.layers.len());
    for (c, g) in cpu.log.layers.iter().zip(&gpu.log.layers) {
        assert_eq!(c.name, g.name);
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
        assert!(
            rel(c.rtn_error, g.rtn_error) < 1e-3,
            "{}: rtn {} vs {}",
            c.name,
            c.rtn_error,
            g.rtn_error
        );
        assert!(rel(c.error, g.error) < 5e-2, "{}: gptq {} vs {}", c.name, c.error, g.error);
        assert_eq!(c.damp, g.damp, "{}", c.name);
    }
    assert_eq!(cpu.files.len(), gpu.files.len());
    let differ = cpu.files.iter().zip(&gpu.files).filter(|(a, b)| a != b).count();
    assert!(differ * 100 <= cpu.files.len(), "{differ} of {} bytes differ", cpu.files.len());
    // Same device, same bytes.
    let again = go("gpu-again", Device::Cuda);
    assert!(again.files == gpu.files, "GPU pipeline is not deterministic");
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
