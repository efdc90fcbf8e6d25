//! The streaming pipeline: output in plan order, the same bytes for any thread count, the first
//! failing tensor in plan order reported, and nothing but what the plan promised written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qtool_formats::safetensors::{SafetensorsSource, SafetensorsWriter};
use qtool_formats::tensor::check_next;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};
use qtool_quantizers::export::{self, pipeline, ExportError, Layout, Request};

/// Collects what the pipeline writes, checking order against the plan as a real sink does.
struct MemorySink {
    plan: Vec<PlannedTensor>,
    out: Vec<(String, Vec<u8>)>,
}

impl TensorSink for MemorySink {
    fn write(&mut self, name: &str, data: &[u8]) -> qtool_formats::Result<()> {
        check_next(&self.plan, self.out.len(), name, data.len(), std::path::Path::new("<memory>"))?;
        self.out.push((name.to_string(), data.to_vec()));
        Ok(())
    }

    fn finish(self: Box<Self>) -> qtool_formats::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

/// A model with `layers` linear weights of varying shapes and one NaN at `nan_in` (if any).
fn model(dir: &std::path::Path, layers: usize, nan_in: &[usize]) -> SafetensorsSource {
    let mut plan = Vec::new();
    let mut data = Vec::new();
    for i in 0..layers {
        let (n, k) = (16 + 8 * (i % 3), 32 + 16 * (i % 2));
        let mut v: Vec<f32> =
            (0..n * k).map(|j| ((j * 31 + i * 17) % 97) as f32 * 0.013 - 0.6).collect();
        if nan_in.contains(&i) {
            v[3] = f32::NAN;
        }
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        plan.push(PlannedTensor {
            name: format!("layers.{i}.proj.weight"),
            dtype: TensorDType::St(DType::F32),
            shape: vec![n as u64, k as u64],
            nbytes: b.len() as u64,
        });
        data.push(b);
    }
    let path = dir.join("m.safetensors");
    let mut w = SafetensorsWriter::create(&path, plan.clone(), BTreeMap::new(), None).unwrap();
    for (t, b) in plan.iter().zip(&data) {
        w.write(&t.name, b).unwrap();
    }
    w.finish().unwrap();
    SafetensorsSource::open_file(&path).unwrap()
}

fn run_with_threads(
    source: &SafetensorsSource,
    fmt: &str,
    layout: Layout,
    threads: usize,
) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
    let req = Request::new(export::lookup(fmt).unwrap(), Some(layout), &[], &[], false).unwrap();
    let plan = export::plan(source, &req).unwrap();
    let mut sink = MemorySink { plan: plan.planned_tensors(), out: Vec::new() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut seen = Vec::new();
    pool.install(|| pipeline::run(source, &plan, &mut sink, &mut |e| seen.push(e.name.clone())))?;
    let order: Vec<String> = plan.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(seen, order, "progress reports entries in plan order");
    assert_eq!(sink.out.len(), sink.plan.len(), "every planned tensor written");
    Ok(sink.out)
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let source = model(dir.path(), 40, &[]);
    for (fmt, layout) in [
        ("fp8_e4m3fn_scaled", Layout::Comfy),
        ("fp8_e5m2", Layout::Comfy),
        ("fp4_scaled", Layout::Comfy),
        ("fp4_scaled", Layout::ModelOpt),
        ("nvfp4", Layout::CompressedTensors),
        ("fp8_e4m3fn_scaled", Layout::CompressedTensors),
    ] {
        let one = run_with_threads(&source, fmt, layout, 1).unwrap();
        for threads in [2, 5] {
            let many = run_with_threads(&source, fmt, layout, threads).unwrap();
            assert!(one == many, "{fmt} {layout}: {threads} threads differ from 1");
        }
    }
}

#[test]
fn the_first_bad_tensor_in_plan_order_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let source = model(dir.path(), 12, &[7, 3, 9]);
    for threads in [1, 4] {
        let err =
            run_with_threads(&source, "fp8_e4m3fn_scaled", Layout::Comfy, threads).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("layers.3.proj.weight"), "{threads} threads: {msg}");
        assert!(msg.contains("m.safetensors"), "{msg}");
    }
}
