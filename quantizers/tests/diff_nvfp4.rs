//! NVFP4 candidates in the three layouts, written by `float::nvfp4::quantize` and read back by the
//! diff's range decoder: the diff must see exactly `Nvfp4Tensor::dequantize`'s values.

mod diff_support;

use diff_support::{close, reference_metrics, values, Builder};
use qtool_formats::{DType, TensorDType};
use qtool_quantizers::diff::{diff, DiffOptions, Input, Registry, RowStatus};
use qtool_quantizers::float::nvfp4::{self, Layout, Nvfp4Tensor, Producer};
use qtool_quantizers::float::{Matrix, Options};

fn quantized(rows: usize, cols: usize, producer: Producer, seed: u64) -> (Vec<f32>, Nvfp4Tensor) {
    let w = values(rows * cols, seed);
    let m = Matrix::new(&w, rows, cols).unwrap();
    let t = nvfp4::quantize(&m, producer, &Options::default()).unwrap();
    (w, t)
}

fn candidate(layer: &str, t: &Nvfp4Tensor) -> Builder {
    let u8t = TensorDType::St(DType::U8);
    let f8 = TensorDType::St(DType::F8E4M3);
    let ps = [t.packed_shape[0] as u64, t.packed_shape[1] as u64];
    let ss = [t.block_scales_shape[0] as u64, t.block_scales_shape[1] as u64];
    let b = Builder::safetensors();
    match t.layout {
        Layout::CompressedTensors => b
            .raw(&format!("{layer}.weight_packed"), u8t, &ps, &t.packed)
            .raw(&format!("{layer}.weight_scale"), f8, &ss, &t.block_scales)
            .f32(&format!("{layer}.weight_global_scale"), &[1], &[t.global_scale]),
        Layout::ModelOpt => b
            .raw(&format!("{layer}.weight"), u8t, &ps, &t.packed)
            .raw(&format!("{layer}.weight_scale"), f8, &ss, &t.block_scales)
            .f32(&format!("{layer}.weight_scale_2"), &[], &[t.global_scale])
            .f32(&format!("{layer}.input_scale"), &[], &[1.0]),
        Layout::Comfy => {
            let json = br#"{"format": "nvfp4"}"#;
            b.raw(&format!("{layer}.weight"), u8t, &ps, &t.packed)
                .raw(&format!("{layer}.weight_scale"), f8, &ss, &t.block_scales)
                .f32(&format!("{layer}.weight_scale_2"), &[], &[t.global_scale])
                .raw(&format!("{layer}.comfy_quant"), u8t, &[json.len() as u64], json)
        }
    }
}

fn check(producer: Producer, scheme: &str, rows: usize, cols: usize) {
    let (w, t) = quantized(rows, cols, producer, rows as u64 * 31 + cols as u64);
    let deq = t.dequantize().unwrap();
    let r = Builder::safetensors().f32("blk.weight", &[rows as u64, cols as u64], &w).build();
    let c = candidate("blk", &t).build();
    let rep = diff(
        &Input::new(&r),
        &Input::new(&c),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(rep.rows.len(), 1, "{scheme}: parts read as one tensor: {:#?}", rep.rows);
    let row = &rep.rows[0];
    assert_eq!(row.status, RowStatus::Compared, "{scheme}: {:?}", row.reason);
    assert_eq!(row.scheme.as_deref(), Some(scheme));
    let n = (rows * cols) as f64;
    let bytes = (t.packed.len() + t.block_scales.len() + 4) as f64;
    assert_eq!(row.bits_per_weight, Some(bytes * 8.0 / n));
    let m = row.metrics.unwrap();
    let (mse, max_abs, rel, sqnr, cos) = reference_metrics(&w, &deq);
    assert!(close(m.mse, mse, 1e-12), "{scheme}: {} vs {mse}", m.mse);
    assert!(close(m.max_abs, max_abs, 0.0), "{scheme}");
    assert!(close(m.rel_fro, rel, 1e-12) && close(m.sqnr_db, sqnr, 1e-12));
    assert!(close(m.cosine, cos, 1e-12));
    assert!(m.sqnr_db > 15.0 && m.sqnr_db < 25.0, "{scheme}: NVFP4 is ~20 dB: {}", m.sqnr_db);
}

#[test]
fn modelopt_layout() {
    check(Producer::ModelOpt, "nvfp4/modelopt", 24, 64);
}

#[test]
fn compressed_tensors_layout_is_matched_as_weight() {
    check(Producer::CompressedTensors, "nvfp4/compressed-tensors", 24, 64);
}

#[test]
fn comfy_layout_with_swizzled_scales() {
    // 160 rows: two 128-row scale tiles; 96 columns: 6 scale columns padded to 8.
    check(Producer::Comfy, "nvfp4/comfy", 160, 96);
}

#[test]
fn bits_per_weight_is_about_four_and_a_half() {
    let (_, t) = quantized(128, 256, Producer::ModelOpt, 3);
    let c = candidate("l", &t).build();
    let r = Builder::safetensors().f32("l.weight", &[128, 256], &values(128 * 256, 3)).build();
    let rep = diff(
        &Input::new(&r),
        &Input::new(&c),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    let bpw = rep.rows[0].bits_per_weight.unwrap();
    assert!((bpw - 4.5).abs() < 0.01, "{bpw}");
}
