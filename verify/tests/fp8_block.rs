//! Block-scaled FP8 (compressed-tensors `block`, 128×128 tiles): discovered as
//! `Fp8Granularity::Block128` and dequantized by the diff registry exactly as qtool's FP8
//! quantizer defines the values, for ragged shapes whose last tiles are partial.

use std::collections::BTreeMap;

use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorSink};
use qtool_quantizers::float::fp8_scaled::{quantize_compressed_tensors, Granularity};
use qtool_quantizers::float::{Matrix, Options};
use qtool_verify::activations::SplitMix64;
use qtool_verify::discover::{discover, input, Fp8Granularity, LayerFormat};

#[test]
fn block128_fp8_is_discovered_and_decoded_exactly() {
    let (n, k) = (200usize, 300usize);
    let mut w = vec![0f32; n * k];
    SplitMix64::new(3).fill_normal(&mut w);
    // Tiles of very different magnitude, so a misplaced tile scale would show.
    for (i, v) in w.iter_mut().enumerate() {
        let (r, c) = (i / k, i % k);
        *v *= 0.01 * (1 + (r / 128) * 3 + (c / 128) * 7) as f32;
    }
    let q = quantize_compressed_tensors(
        &Matrix::new(&w, n, k).unwrap(),
        Granularity::Block { rows: 128, cols: 128 },
        &Options::default(),
    )
    .unwrap();
    assert_eq!(q.scale_shape, vec![2, 3]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let plan = vec![
        PlannedTensor {
            name: "l.weight".into(),
            dtype: TensorDType::St(DType::F8E4M3),
            shape: vec![n as u64, k as u64],
            nbytes: (n * k) as u64,
        },
        PlannedTensor {
            name: "l.weight_scale".into(),
            dtype: TensorDType::St(DType::F32),
            shape: vec![2, 3],
            nbytes: 24,
        },
    ];
    let mut sink: Box<dyn TensorSink> =
        Box::new(SafetensorsWriter::create(&path, plan, BTreeMap::new(), None).unwrap());
    sink.write("l.weight", &q.data).unwrap();
    sink.write("l.weight_scale", &scales).unwrap();
    sink.finish().unwrap();

    let c = qtool_formats::open(&path).unwrap();
    let found = discover(&input(&c), &|_| true).unwrap();
    assert_eq!(found.layers.len(), 1, "{:?}", found.unrunnable);
    let l = &found.layers[0];
    assert_eq!(l.scheme, "fp8_e4m3fn_scaled(block128)/weight_scale");
    assert_eq!(l.format, LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Block128 });
    let got = l.dequantize().unwrap();
    let want = q.dequantize();
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
}
