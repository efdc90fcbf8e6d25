//! The quantize plan: which tensors are selected, what each layout writes for them, and that the
//! bytes every scheme produces match the sizes the plan promised the writer — for odd shapes
//! (ComfyUI NVFP4 pads), every dtype, every name in every layout it supports.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use qtool_formats::safetensors::{SafetensorsSource, SafetensorsWriter};
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};
use qtool_quantizers::export::plan::{layer_outputs, LayerPlan};
use qtool_quantizers::export::{self, layer, Action, Layout, Request, FORMATS};
use qtool_quantizers::float::ComputeDType;

fn weights(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32 ^ seed).wrapping_mul(2654435761) % 2001) as f32 / 100.0 - 10.0)
        .collect()
}

fn bytes_of(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        DType::F64 => v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
        DType::I64 => v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
        other => panic!("{other:?}"),
    }
}

/// Writes `(name, dtype, shape)` tensors with deterministic values as one safetensors file.
fn write_model(path: &Path, tensors: &[(&str, DType, Vec<u64>)]) {
    let mut plan = Vec::new();
    let mut data = Vec::new();
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        let n: u64 = shape.iter().product();
        let vals: Vec<f32> = weights(n as usize, i as u32).iter().map(|x| x.round()).collect();
        let b = bytes_of(*dtype, &vals);
        plan.push(PlannedTensor {
            name: name.to_string(),
            dtype: TensorDType::St(*dtype),
            shape: shape.clone(),
            nbytes: b.len() as u64,
        });
        data.push(b);
    }
    let mut w = SafetensorsWriter::create(path, plan.clone(), BTreeMap::new(), None).unwrap();
    for (t, b) in plan.iter().zip(&data) {
        w.write(&t.name, b).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn planned_part_sizes_match_encoded_bytes_for_every_fmt_layout_and_shape() {
    let shapes = [(16, 32), (33, 40), (130, 48), (1, 16)];
    let dtypes = [
        (DType::F32, ComputeDType::F32),
        (DType::BF16, ComputeDType::BF16),
        (DType::F16, ComputeDType::F16),
    ];
    let mut checked = 0;
    // The integer names have their own shape rules and I32 parts (tests/export_int.rs).
    let float_names = FORMATS.iter().filter(|f| {
        f.scheme != export::Scheme::Passthrough
            && !matches!(f.scheme, export::Scheme::IntWeight { .. })
    });
    for fmt in float_names {
        for &layout in fmt.layouts {
            for (rows, cols) in shapes {
                let block = match fmt.scheme {
                    export::Scheme::Nvfp4 | export::Scheme::Nvfp4Experimental => 16,
                    export::Scheme::Mxfp4 | export::Scheme::Mxfp8 => 32,
                    _ => 1,
                };
                if layout != Layout::Comfy && cols % block != 0 {
                    continue; // refused by the plan (tested below)
                }
                for (dtype, compute) in dtypes {
                    let l = LayerPlan { prefix: "m.l".into(), rows, cols, dtype, compute };
                    let planned = layer_outputs(fmt, layout, &l);
                    let w = weights(rows * cols, 7);
                    let parts = layer::encode(fmt, layout, &l, &w, false)
                        .unwrap_or_else(|e| panic!("{} {layout} {rows}x{cols}: {e}", fmt.name));
                    assert_eq!(parts.len(), planned.len(), "{} {layout}", fmt.name);
                    for (p, b) in planned.iter().zip(&parts) {
                        assert_eq!(
                            p.nbytes,
                            b.len() as u64,
                            "{} {layout} {rows}x{cols} {}",
                            fmt.name,
                            p.name
                        );
                        let numel: u64 = p.shape.iter().product();
                        let width = match p.dtype {
                            TensorDType::St(DType::F32) => 4,
                            TensorDType::St(DType::F16 | DType::BF16) => 2,
                            _ => 1,
                        };
                        assert_eq!(numel * width, p.nbytes, "{}: shape and bytes agree", p.name);
                        assert!(p.name.starts_with("m.l."), "{}", p.name);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn selection_follows_the_documented_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_model(
        &path,
        &[
            ("model.embed_tokens.weight", DType::BF16, vec![32, 16]),
            ("model.layers.0.q_proj.weight", DType::BF16, vec![16, 16]),
            ("model.layers.0.q_proj.bias", DType::BF16, vec![16]),
            ("model.layers.0.odd.weight", DType::BF16, vec![8, 24]),
            ("model.layers.0.input_layernorm.weight", DType::BF16, vec![16]),
            ("model.layers.0.adaLN_norm.weight", DType::BF16, vec![16, 16]),
            ("model.layers.0.f64.weight", DType::F64, vec![16, 16]),
            ("model.layers.0.ids.weight", DType::I64, vec![2, 2]),
            ("model.conv.weight", DType::BF16, vec![4, 4, 3]),
            ("lm_head.weight", DType::BF16, vec![32, 16]),
        ],
    );
    let source = SafetensorsSource::open_file(&path).unwrap();
    let quantized = |fmt: &str, layout: Option<Layout>, ignore: &[&str], include: &[&str]| {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        let include: Vec<String> = include.iter().map(|s| s.to_string()).collect();
        let req =
            Request::new(export::lookup(fmt).unwrap(), layout, &ignore, &include, false).unwrap();
        let plan = export::plan(&source, &req).unwrap();
        let names: Vec<String> = plan.quantized_layers().into_iter().map(String::from).collect();
        (names, plan)
    };

    let (q, plan) = quantized("fp8_e4m3fn_scaled", None, &[], &[]);
    assert_eq!(q, ["model.layers.0.q_proj", "model.layers.0.odd"]);
    let note = |name: &str| {
        plan.entries.iter().find(|e| e.name == name).unwrap().note.clone().unwrap_or_default()
    };
    assert!(note("model.embed_tokens.weight").contains("embedding"));
    assert!(note("lm_head.weight").contains("lm_head"));
    assert!(note("model.layers.0.adaLN_norm.weight").contains("norm"));
    assert!(note("model.layers.0.f64.weight").contains("F64"));
    assert_eq!(note("model.layers.0.q_proj.bias"), "", "1-D tensors are not candidates");
    assert_eq!(note("model.layers.0.ids.weight"), "", "integer tensors are not candidates");

    // NVFP4 without padding: in_features 24 is refused and reported, not quantized.
    let (q, plan) = quantized("fp4_scaled", Some(Layout::ModelOpt), &[], &[]);
    assert_eq!(q, ["model.layers.0.q_proj"]);
    let odd = plan.entries.iter().find(|e| e.name == "model.layers.0.odd.weight").unwrap();
    assert_eq!(odd.action, Action::Copy);
    assert!(odd.note.as_deref().unwrap().contains("not a multiple of 16"), "{:?}", odd.note);
    assert!(plan.unquantized_layers().contains(&"model.layers.0.odd"));
    // ComfyUI pads, so it takes the same tensor.
    let (q, _) = quantized("fp4_scaled", None, &[], &[]);
    assert!(q.contains(&"model.layers.0.odd".to_string()));

    // --include brings lm_head back; --ignore wins over --include.
    let (q, _) = quantized("fp8_e4m3fn", None, &[], &["lm_head"]);
    assert!(q.contains(&"lm_head".to_string()));
    let (q, _) = quantized("fp8_e4m3fn", None, &["lm_head", "q_proj"], &["lm_head"]);
    assert_eq!(q, ["model.layers.0.odd"]);

    // disabled copies everything.
    let (q, plan) = quantized("disabled", None, &[], &[]);
    assert!(q.is_empty());
    assert_eq!(plan.planned_tensors().len(), 10);
}

#[test]
fn legacy_layout_adds_the_marker_after_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_model(
        &path,
        &[
            ("model.diffusion_model.blocks.0.attn.weight", DType::F32, vec![16, 16]),
            ("model.diffusion_model.blocks.0.attn.bias", DType::F32, vec![16]),
        ],
    );
    let source = SafetensorsSource::open_file(&path).unwrap();
    for (fmt, n) in [("fp8_e4m3fn_scaled", 2u64), ("fp8_e4m3fn_scaled_fast", 0)] {
        let req =
            Request::new(export::lookup(fmt).unwrap(), Some(Layout::ComfyLegacy), &[], &[], false)
                .unwrap();
        let plan = export::plan(&source, &req).unwrap();
        let last = plan.planned_tensors().pop().unwrap();
        assert_eq!(last.name, "model.diffusion_model.scaled_fp8", "prefix of a full checkpoint");
        assert_eq!(last.dtype, TensorDType::St(DType::F8E4M3));
        assert_eq!(last.shape, vec![n]);
    }
    // The plain cast in the legacy layout is just fp8 weights: no marker, no scale.
    let req = Request::new(
        export::lookup("fp8_e5m2").unwrap(),
        Some(Layout::ComfyLegacy),
        &[],
        &[],
        false,
    )
    .unwrap();
    let names: Vec<String> = export::plan(&source, &req)
        .unwrap()
        .planned_tensors()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        ["model.diffusion_model.blocks.0.attn.weight", "model.diffusion_model.blocks.0.attn.bias"]
    );
}

#[test]
fn every_layout_mismatch_is_refused_with_the_layouts_that_work() {
    for fmt in FORMATS {
        for layout in Layout::ALL {
            let r = Request::new(fmt, Some(layout), &[], &[], false);
            if fmt.supports(layout) {
                assert!(r.is_ok(), "{} {layout}", fmt.name);
            } else {
                let msg = r.unwrap_err().to_string();
                assert!(msg.contains(fmt.name) && msg.contains(layout.name()), "{msg}");
                assert!(msg.contains(&fmt.layout_list()), "{msg}");
            }
        }
    }
}
