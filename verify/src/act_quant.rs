//! The activations a kernel actually multiplies. FP8 kernels (cuBLASLt W8A8 and qtool's
//! block-scaled kernel) first quantize the bf16 activations to E4M3, so the FP32 reference must
//! multiply the same E4M3 values: otherwise the comparison measures activation-quantization noise
//! (~10 % of an output at worst) instead of the kernel, and a tolerance loose enough for that
//! noise would hide real kernel bugs. The rules mirror kernels/cuda/fp8.cu:
//! - per-tensor and per-channel weights: one dynamic scale for the whole `[m, k]` activation,
//!   `s = max(absmax / 448, 1 / (448 · 512))`;
//! - 128×128 block weights: one scale per row and 128-wide k-group, `s = max(absmax, 1e-10) / 448`.
//!
//! In both `x̂ = e4m3_satfinite_rne(x / s) · s`, with a true f32 division as the kernel does.

use std::borrow::Cow;

use qtool_formats::codec::{e4m3fn_to_f32, f32_to_e4m3fn, Overflow};

use crate::discover::{Fp8Granularity, LayerFormat};

/// `x` (`[m, k]`, already rounded to the kernel's input dtype) as the kernel's tensor cores see it.
pub fn kernel_activations<'a>(
    format: &LayerFormat,
    x: &'a [f32],
    m: usize,
    k: usize,
) -> Cow<'a, [f32]> {
    match format {
        LayerFormat::Fp8 { granularity: Fp8Granularity::Block128, .. } => {
            let mut out = x.to_vec();
            for row in out.chunks_exact_mut(k).take(m) {
                for group in row.chunks_mut(128) {
                    let amax = group.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let s = amax.max(1e-10) / 448.0;
                    group.iter_mut().for_each(|v| *v = fake_e4m3(*v, s));
                }
            }
            Cow::Owned(out)
        }
        LayerFormat::Fp8 { .. } => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = (amax / 448.0).max(1.0 / (448.0 * 512.0));
            Cow::Owned(x.iter().map(|&v| fake_e4m3(v, s)).collect())
        }
        _ => Cow::Borrowed(x),
    }
}

fn fake_e4m3(v: f32, s: f32) -> f32 {
    e4m3fn_to_f32(f32_to_e4m3fn(v / s, Overflow::Saturate)) * s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tensor_scale_maps_absmax_to_448_and_rounds_to_e4m3() {
        let f = LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Tensor };
        let x = [448.0f32, -224.0, 1.0, 17.0];
        let y = kernel_activations(&f, &x, 1, 4);
        // s = 1: 17 is between the E4M3 neighbours 16 and 18 → ties to even (16).
        assert_eq!(&*y, &[448.0, -224.0, 1.0, 16.0]);
    }

    #[test]
    fn block_scale_is_per_row_and_128_group() {
        let f = LayerFormat::Fp8 { e5m2: false, granularity: Fp8Granularity::Block128 };
        let mut x = vec![0f32; 2 * 256];
        x[0] = 448.0 * 4.0; // row 0, group 0: s = 4
        x[1] = 3.0 * 4.0 + 1.0; // 13 / 4 = 3.25 → E4M3 3.25 exactly
        x[256 + 128] = 0.5; // row 1, group 1: s = 0.5 / 448
        let y = kernel_activations(&f, &x, 2, 256);
        assert_eq!(y[0], 448.0 * 4.0);
        assert_eq!(y[1], 13.0);
        assert_eq!(y[256 + 128], 0.5);
        assert!(y[128..256].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn other_formats_are_untouched() {
        let f = LayerFormat::Gguf { ty: qtool_formats::gguf::GgmlType::Q8_0 };
        let x = [0.1f32, 0.2];
        assert!(matches!(kernel_activations(&f, &x, 1, 2), Cow::Borrowed(_)));
    }
}
