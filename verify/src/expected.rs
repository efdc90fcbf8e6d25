//! The error a correct checkpoint of a layer's scheme is expected to have against the original
//! weights: what the REF check measures a candidate against.
//!
//! A checkpoint is judged by its output error against REF's weights, `‖X·Wcᵀ − X·Wrᵀ‖ /
//! ‖X·Wrᵀ‖`. What is "too much" depends on the scheme (FP8 ≈ 2–3 %, int4 ≈ 10 %), on the group
//! size and on the weights themselves, so the yardstick is computed, not tabulated: REF's
//! weights are quantized again by qtool's own CPU quantizer for the same scheme (round to
//! nearest, the candidate's bit width, group size, granularity and GGML type), and that
//! quantization's output error is the expected one. A correct file made by any producer
//! (RTN, GPTQ, AWQ, an importance matrix) lands near it; a file whose bytes are read the wrong
//! way (swapped nibbles, permuted scales, shifted zero points, misplaced block scales) is off
//! by multiples, because every weight it yields is off by a step or more.

use qtool_quantizers::float::fp8_scaled::{self, Granularity};
use qtool_quantizers::float::nvfp4::{self, Producer};
use qtool_quantizers::float::{Fp8Format, Matrix, Options};
use qtool_quantizers::gguf;
use qtool_quantizers::int::rtn::{self, Bits, Convention, GroupSize, RtnConfig};

use crate::discover::{Fp8Granularity, IntFamily, LayerFormat};

/// Whether an integer layer's quantizer should be symmetric: the candidate's own zero points
/// say so (all at the midpoint), where it has any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeros {
    Symmetric,
    Asymmetric,
}

/// REF's weight `w` (`[n, k]`) quantized and dequantized by qtool's reference quantizer for
/// `format`; `Err` names why no such quantizer applies.
pub fn requantize(
    format: &LayerFormat,
    zeros: Zeros,
    w: &[f32],
    n: usize,
    k: usize,
) -> Result<Vec<f32>, String> {
    let opts = Options::default();
    let m = Matrix::new(w, n, k).map_err(|e| e.to_string())?;
    match *format {
        LayerFormat::Fp8 { e5m2, granularity } => {
            let q = match granularity {
                Fp8Granularity::Tensor => fp8_scaled::quantize_comfy(
                    &m,
                    if e5m2 { Fp8Format::E5M2 } else { Fp8Format::E4M3Fn },
                    &opts,
                ),
                Fp8Granularity::Channel => {
                    fp8_scaled::quantize_compressed_tensors(&m, Granularity::Channel, &opts)
                }
                Fp8Granularity::Block128 => fp8_scaled::quantize_compressed_tensors(
                    &m,
                    Granularity::Block { rows: 128, cols: 128 },
                    &opts,
                ),
            }
            .map_err(|e| e.to_string())?;
            Ok(q.dequantize())
        }
        LayerFormat::Nvfp4 { .. } => {
            let producer = if k % nvfp4::BLOCK == 0 { Producer::ModelOpt } else { Producer::Comfy };
            let q = nvfp4::quantize(&m, producer, &opts).map_err(|e| e.to_string())?;
            let mut d = q.dequantize().map_err(|e| e.to_string())?;
            d.truncate(n * k);
            Ok(d)
        }
        LayerFormat::Int { family, bits, group, .. } => {
            let convention = match family {
                IntFamily::Awq => Convention::Awq,
                IntFamily::Gptq { .. } => Convention::Gptq,
                IntFamily::CompressedTensors => Convention::CompressedTensors,
            };
            let symmetric = zeros == Zeros::Symmetric && family != IntFamily::Awq;
            int(w, n, k, bits, group, symmetric, convention)
        }
        LayerFormat::Marlin { bits, group } => int(w, n, k, bits, group, true, Convention::Gptq),
        LayerFormat::Gguf { ty } => {
            if !gguf::can_quantize(ty) {
                return Err(format!("qtool cannot quantize to {}", ty.name()));
            }
            let bytes_per_row = ty
                .row_size(k as u64)
                .ok_or_else(|| format!("rows of {k} are not whole {} blocks", ty.name()))?
                as usize;
            let mut out = vec![0f32; n * k];
            let mut buf = vec![0u8; bytes_per_row];
            for (row, dst) in w.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
                gguf::quantize(ty, row, &mut buf).map_err(|e| e.to_string())?;
                gguf::dequantize(ty, &buf, dst).map_err(|e| e.to_string())?;
            }
            Ok(out)
        }
    }
}

/// Group-wise RTN; act-order layers are requantized in the default group order (the expected
/// error depends on the group size, not on which columns share a group).
fn int(
    w: &[f32],
    n: usize,
    k: usize,
    bits: u32,
    group: Option<usize>,
    symmetric: bool,
    convention: Convention,
) -> Result<Vec<f32>, String> {
    let bits = Bits::from_u32(bits).map_err(|e| e.to_string())?;
    let group_size = match group {
        Some(g) if k % g == 0 => GroupSize::Size(g),
        Some(g) => return Err(format!("group {g} does not divide K = {k}")),
        None => GroupSize::PerChannel,
    };
    let cfg = RtnConfig { bits, group_size, symmetric, convention };
    let q = rtn::quantize(w, n, k, &cfg, None).map_err(|e| e.to_string())?;
    rtn::dequantize(&q).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activations::SplitMix64;
    use crate::gemm::gemm_xwt;
    use crate::metrics::compare;
    use qtool_formats::GgmlType;

    fn weights(n: usize, k: usize) -> Vec<f32> {
        let mut w = vec![0f32; n * k];
        SplitMix64::new(5).fill_normal(&mut w);
        w.iter().map(|v| v * 0.02).collect()
    }

    /// The expected output error of each scheme sits where its bit width says.
    #[test]
    fn expected_errors_follow_the_bit_width() {
        let (n, k, m) = (64, 256, 8);
        let w = weights(n, k);
        let mut x = vec![0f32; m * k];
        SplitMix64::new(9).fill_normal(&mut x);
        let y = gemm_xwt(&x, &w, m, n, k);
        let err = |f: LayerFormat, z: Zeros| {
            let q = requantize(&f, z, &w, n, k).unwrap();
            compare(&gemm_xwt(&x, &q, m, n, k), &y).rel_fro
        };
        let gptq = IntFamily::Gptq { v2: false };
        let fp8 = err(
            LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Tensor },
            Zeros::Symmetric,
        );
        let int4 = err(
            LayerFormat::Int { family: gptq, bits: 4, group: Some(128), act_order: false },
            Zeros::Asymmetric,
        );
        let nvfp4 = err(
            LayerFormat::Nvfp4 { layout: crate::discover::Nvfp4Layout::ModelOpt },
            Zeros::Symmetric,
        );
        let q8 = err(LayerFormat::Gguf { ty: GgmlType::Q8_0 }, Zeros::Symmetric);
        let q4k = err(LayerFormat::Gguf { ty: GgmlType::Q4_K }, Zeros::Symmetric);
        assert!((0.01..0.05).contains(&fp8), "fp8 {fp8}");
        assert!((0.05..0.2).contains(&int4), "int4 {int4}");
        assert!((0.05..0.2).contains(&nvfp4), "nvfp4 {nvfp4}");
        assert!(q8 < 0.01, "q8_0 {q8}");
        assert!((0.02..0.15).contains(&q4k), "q4_k {q4k}");
    }

    #[test]
    fn refuses_what_it_cannot_quantize() {
        let w = weights(4, 100);
        let f = LayerFormat::Gguf { ty: GgmlType::Q4_K };
        assert!(requantize(&f, Zeros::Symmetric, &w, 4, 100).unwrap_err().contains("Q4_K"));
        let g = LayerFormat::Marlin { bits: 4, group: Some(64) };
        assert!(requantize(&g, Zeros::Symmetric, &w, 4, 100)
            .unwrap_err()
            .contains("does not divide"));
    }
}
