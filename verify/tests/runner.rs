//! The runner's verdicts, driven through a test double of the GPU backend that returns the CPU
//! reference with a chosen defect: the exact result passes, a 5 % error, a NaN or a kernel
//! failure fails (naming the batch), an unsupported kernel leaves the layer skipped — never
//! passed — and a REF check still runs for it.

use std::collections::BTreeMap;
use std::path::Path;

use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};
use qtool_quantizers::diff::Input;
use qtool_quantizers::float::fp8_scaled::quantize_comfy;
use qtool_quantizers::float::{Fp8Format, Matrix, Options};
use qtool_verify::activations::SplitMix64;
use qtool_verify::discover::{discover, input, Layer};
use qtool_verify::gemm::gemm_xwt;
use qtool_verify::reference::Reference;
use qtool_verify::report::Status;
use qtool_verify::runner::{verify_layer, Backend, BackendError, KernelRun, RefContext};

#[derive(Clone, Copy, Debug)]
enum Defect {
    None,
    Scale(f32),
    Nan,
    Unsupported,
    Fails,
}

struct Fake(Defect);

impl Backend for Fake {
    fn device(&self) -> String {
        "fake".into()
    }

    fn run_layer(&self, layer: &Layer<'_>, x: &[f32], m: usize) -> Result<KernelRun, BackendError> {
        let w = layer.dequantize().unwrap();
        // Like the real FP8 kernel, multiply E4M3-quantized activations.
        let xk = qtool_verify::act_quant::kernel_activations(&layer.format, x, m, layer.k);
        let mut out = gemm_xwt(&xk, &w, m, layer.n, layer.k);
        match self.0 {
            Defect::None => {}
            Defect::Scale(s) => out.iter_mut().for_each(|v| *v *= s),
            Defect::Nan => out[0] = f32::NAN,
            Defect::Unsupported => return Err(BackendError::Unsupported("no such kernel".into())),
            Defect::Fails => return Err(BackendError::Failed("launch failed".into())),
        }
        Ok(KernelRun { out, micros: 10.0 })
    }

    fn gemm_bf16(
        &self,
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<KernelRun, BackendError> {
        Ok(KernelRun { out: Vec::new(), micros: 25.0 })
    }
}

/// `ref.safetensors` (BF16-exact F32 weights) and `fp8.safetensors` (its ComfyUI FP8 copy).
fn write_pair(dir: &Path) {
    let (n, k) = (96usize, 160usize);
    let mut w = vec![0f32; n * k];
    SplitMix64::new(11).fill_normal(&mut w);
    w.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v * 0.02).to_f32());
    let q = quantize_comfy(&Matrix::new(&w, n, k).unwrap(), Fp8Format::E4M3Fn, &Options::default())
        .unwrap();
    let write = |name: &str, tensors: Vec<(&str, DType, Vec<u64>, Vec<u8>)>| {
        let plan = tensors
            .iter()
            .map(|(t, d, s, b)| PlannedTensor {
                name: t.to_string(),
                dtype: TensorDType::St(*d),
                shape: s.clone(),
                nbytes: b.len() as u64,
            })
            .collect();
        let mut sink: Box<dyn TensorSink> = Box::new(
            SafetensorsWriter::create(&dir.join(name), plan, BTreeMap::new(), None).unwrap(),
        );
        for (t, _, _, b) in &tensors {
            sink.write(t, b).unwrap();
        }
        sink.finish().unwrap();
    };
    let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    write("ref.safetensors", vec![("l.weight", DType::F32, vec![n as u64, k as u64], wb)]);
    write(
        "fp8.safetensors",
        vec![
            ("l.weight", DType::F8E4M3, vec![n as u64, k as u64], q.data.clone()),
            ("l.weight_scale", DType::F32, vec![], q.scales[0].to_le_bytes().to_vec()),
        ],
    );
}

#[test]
fn verdicts_of_the_kernel_check() {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path());
    let c = qtool_formats::open(dir.path().join("fp8.safetensors")).unwrap();
    let ci = input(&c);
    let found = discover(&ci, &|_| true).unwrap();
    assert_eq!(found.layers.len(), 1);
    let layer = &found.layers[0];
    let run =
        |d: Defect| verify_layer(layer, &[1, 8], Some(&Fake(d) as &dyn Backend), None).unwrap();

    let ok = run(Defect::None);
    assert_eq!(ok.status, Status::Pass, "{:?}", ok.reason);
    assert_eq!(ok.kernel.as_deref(), Some("fp8_cublaslt"));
    assert_eq!(ok.batches.len(), 2);
    assert_eq!(ok.batches[0].max_rel, Some(0.0));
    assert_eq!(ok.batches[1].speedup, Some(2.5));

    // 10 % off everywhere: far above the FP8 limits (2e-2 max, 3e-3 mean).
    let off = run(Defect::Scale(1.10));
    assert_eq!(off.status, Status::Fail);
    assert!(off.reason.as_deref().unwrap().starts_with("m=1: kernel vs CPU"), "{:?}", off.reason);

    let nan = run(Defect::Nan);
    assert_eq!(nan.status, Status::Fail);
    assert!(nan.batches[0].max_rel.unwrap().is_nan());

    let failed = run(Defect::Fails);
    assert_eq!(failed.status, Status::Fail);
    assert!(failed.reason.as_deref().unwrap().contains("launch failed"));

    let unsupported = run(Defect::Unsupported);
    assert_eq!(unsupported.status, Status::Skipped);
    assert!(unsupported.reason.as_deref().unwrap().contains("no such kernel"));
    assert!(unsupported.batches.iter().all(|b| b.kernel_us.is_none()));
}

#[test]
fn the_ref_check_runs_without_a_kernel_and_uses_the_expected_error() {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path());
    let c = qtool_formats::open(dir.path().join("fp8.safetensors")).unwrap();
    let r = qtool_formats::open(dir.path().join("ref.safetensors")).unwrap();
    let ci = input(&c);
    let reference = Reference::new("ref", Input::from_checkpoint(&r), &ci).unwrap();
    let found = discover(&ci, &|_| true).unwrap();
    let layer = &found.layers[0];
    let cx = RefContext { reference: &reference, candidate: &ci };

    let rep = verify_layer(layer, &[4], Some(&Fake(Defect::Unsupported) as &dyn Backend), Some(cx))
        .unwrap();
    assert_eq!(rep.status, Status::Skipped, "{:?}", rep.reason);
    let rr = rep.batches[0].reference.as_ref().unwrap();
    // qtool's own ComfyUI FP8 quantizer made the file, so the candidate is the expectation.
    assert_eq!(rr.expected_rel, Some(rr.cpu_rel));
    assert!((0.01..0.06).contains(&rr.cpu_rel), "{rr:?}");
    assert_eq!(rr.limit, Some(2.0 * rr.cpu_rel));

    // A kernel 3× as far from REF as the file itself: its distance to REF is reported, and it
    // fails through the kernel check (the file's bytes, judged by the CPU result, are fine).
    let defect = Fake(Defect::Scale(1.0 + 3.0 * rr.cpu_rel as f32));
    let rep = verify_layer(layer, &[4], Some(&defect as &dyn Backend), Some(cx)).unwrap();
    assert_eq!(rep.status, Status::Fail);
    assert!(rep.reason.as_deref().unwrap().contains("kernel vs CPU"), "{:?}", rep.reason);
    let rr = rep.batches[0].reference.as_ref().unwrap();
    assert!(rr.pass && rr.kernel_rel.unwrap() > rr.limit.unwrap(), "{rr:?}");
}
