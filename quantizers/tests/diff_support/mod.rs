//! An in-memory [`TensorSource`] for the diff tests: tensors are built from values, so each
//! test states exactly what REF and CAND hold.

#![allow(dead_code)]

use std::path::PathBuf;

use qtool_formats::codec::{Fp8Format, Overflow};
use qtool_formats::tensor::TensorIndex;
use qtool_formats::{ContainerFormat, DType, GgmlType, TensorDType, TensorInfo, TensorSource};

#[derive(Debug)]
pub struct MemSource {
    format: ContainerFormat,
    files: Vec<PathBuf>,
    index: TensorIndex,
    data: Vec<u8>,
}

#[derive(Debug)]
pub struct Builder {
    format: ContainerFormat,
    tensors: Vec<TensorInfo>,
    data: Vec<u8>,
}

impl Builder {
    pub fn safetensors() -> Self {
        Builder { format: ContainerFormat::Safetensors, tensors: Vec::new(), data: Vec::new() }
    }

    pub fn gguf() -> Self {
        Builder { format: ContainerFormat::Gguf, tensors: Vec::new(), data: Vec::new() }
    }

    /// Adds a tensor from raw bytes; `shape` as the container stores it.
    pub fn raw(mut self, name: &str, dtype: TensorDType, shape: &[u64], bytes: &[u8]) -> Self {
        self.tensors.push(TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            file: 0,
            offset: self.data.len() as u64,
            nbytes: bytes.len() as u64,
        });
        self.data.extend_from_slice(bytes);
        self
    }

    pub fn f32(self, name: &str, shape: &[u64], v: &[f32]) -> Self {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let dt = match self.format {
            ContainerFormat::Safetensors => TensorDType::St(DType::F32),
            ContainerFormat::Gguf => TensorDType::Ggml(GgmlType::F32),
        };
        self.raw(name, dt, shape, &b)
    }

    pub fn bf16(self, name: &str, shape: &[u64], v: &[f32]) -> Self {
        let b: Vec<u8> =
            v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect();
        let dt = match self.format {
            ContainerFormat::Safetensors => TensorDType::St(DType::BF16),
            ContainerFormat::Gguf => TensorDType::Ggml(GgmlType::BF16),
        };
        self.raw(name, dt, shape, &b)
    }

    /// ComfyUI current layout: `L.weight` F8_E4M3 = `v / scale`, `L.weight_scale` F32 scalar,
    /// `L.comfy_quant` JSON. Returns the dequantized values the diff should see.
    pub fn comfy_fp8(
        self,
        layer: &str,
        shape: &[u64],
        v: &[f32],
        legacy: bool,
    ) -> (Self, Vec<f32>) {
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if amax == 0.0 { 1.0 } else { amax / 448.0 };
        let codes: Vec<u8> =
            v.iter().map(|x| Fp8Format::E4M3Fn.encode(x / scale, Overflow::Saturate)).collect();
        let deq: Vec<f32> = codes.iter().map(|&c| Fp8Format::E4M3Fn.decode(c) * scale).collect();
        let b = self.raw(&format!("{layer}.weight"), TensorDType::St(DType::F8E4M3), shape, &codes);
        let b = if legacy {
            b.raw(
                &format!("{layer}.scale_weight"),
                TensorDType::St(DType::F32),
                &[],
                &scale.to_le_bytes(),
            )
            .raw(
                &format!("{layer}.scale_input"),
                TensorDType::St(DType::F32),
                &[],
                &1f32.to_le_bytes(),
            )
        } else {
            let json = br#"{"format": "float8_e4m3fn"}"#;
            b.raw(
                &format!("{layer}.weight_scale"),
                TensorDType::St(DType::F32),
                &[],
                &scale.to_le_bytes(),
            )
            .raw(
                &format!("{layer}.comfy_quant"),
                TensorDType::St(DType::U8),
                &[json.len() as u64],
                json,
            )
            .raw(
                &format!("{layer}.input_scale"),
                TensorDType::St(DType::F32),
                &[],
                &1f32.to_le_bytes(),
            )
        };
        (b, deq)
    }

    pub fn build(self) -> MemSource {
        MemSource {
            format: self.format,
            files: vec![PathBuf::from("<memory>")],
            index: TensorIndex::new(self.tensors).expect("unique names"),
            data: self.data,
        }
    }
}

impl TensorSource for MemSource {
    fn format(&self) -> ContainerFormat {
        self.format
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    fn tensors(&self) -> &[TensorInfo] {
        self.index.tensors()
    }
    fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.data[info.offset as usize..(info.offset + info.nbytes) as usize]
    }
    fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.index.find(name)
    }
    fn metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// Deterministic pseudo-random values in about [-1, 1] (xorshift; no dependency).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Rounds to bf16 and back.
pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect()
}

/// The reference metrics in plain f64, written independently of the library (one pass, no
/// chunks): (mse, max_abs, rel_fro, sqnr_db, cosine).
pub fn reference_metrics(w: &[f32], q: &[f32]) -> (f64, f64, f64, f64, f64) {
    let (mut sw, mut sq, mut swq, mut se, mut mx) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in w.iter().zip(q) {
        let (a, b) = (a as f64, b as f64);
        sw += a * a;
        sq += b * b;
        swq += a * b;
        se += (a - b) * (a - b);
        mx = mx.max((a - b).abs());
    }
    (
        se / w.len() as f64,
        mx,
        se.sqrt() / sw.sqrt(),
        10.0 * (sw / se).log10(),
        swq / (sw.sqrt() * sq.sqrt()),
    )
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}
