//! Every GPU operation against an f32 CPU GEMM over qtool's CPU dequantization (the
//! `quantizers` crate). Without a GPU each test prints `skipped: <reason>`; with
//! `QTOOL_REQUIRE_GPU=1` a missing GPU is a failure.
//!
//! Batches 1..=8 exercise the fused GEMV kernels (exact f32 dequantization: tight tolerance),
//! larger batches the dequant-to-16-bit + cuBLAS path (weights rounded to bf16/f16: looser).

mod common;

use common::{gpu, values};
use half::{bf16, f16};
use qtool_formats::codec::{Fp8Format, Overflow};
use qtool_kernels::{
    Fp8Kind, Fp8Options, Fp8Path, Fp8Scale, GgmlType, Gpu, Int4Weights, KernelError, NibbleOrder,
    ScaleLayout,
};
use qtool_quantizers::float::nvfp4::{self, Layout, Producer};
use qtool_quantizers::float::{Matrix, Options};
use qtool_quantizers::int::{self, rtn, GptqZeros};

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` in f64, returned as f32.
fn cpu_gemm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut s = 0.0f64;
            for i in 0..k {
                s += x[r * k + i] as f64 * w[c * k + i] as f64;
            }
            out[r * n + c] = s as f32;
        }
    }
    out
}

/// max |gpu − ref| / max |ref|.
fn rel_err(gpu: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(gpu.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |a, &v| a.max(v.abs() as f64)).max(1e-30);
    let worst = gpu.iter().zip(reference).fold(0.0f64, |a, (&g, &r)| {
        let d = (g as f64 - r as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            a.max(d)
        }
    });
    worst / scale
}

fn check(what: &str, gpu: &[f32], reference: &[f32], tol: f64) {
    let e = rel_err(gpu, reference);
    println!("{what}: rel err {e:.2e} (tol {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:.3e} exceeds {tol:.1e}");
}

/// Tolerance: fused GEMV (exact dequant, f32 sums in another order) or 16-bit cuBLAS path.
fn tol_for(m: usize) -> f64 {
    if m <= qtool_kernels::GEMV_MAX_M {
        1e-5
    } else {
        1.5e-2
    }
}

#[test]
fn gemm_bf16_matches_cpu() {
    let Some(g) = gpu() else { return };
    for &(m, n, k) in &[(1, 64, 128), (7, 96, 256), (33, 130, 320)] {
        let x: Vec<bf16> = values(1, m * k).into_iter().map(bf16::from_f32).collect();
        let w: Vec<bf16> = values(2, n * k).into_iter().map(bf16::from_f32).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let run = g.gemm_bf16(&x, &w, m, n, k, 2).unwrap();
        // BF16 output: one rounding of each result.
        check(
            &format!("bf16 {m}x{n}x{k} [{}]", run.backend),
            &run.out,
            &cpu_gemm(&xf, &wf, m, n, k),
            8e-3,
        );
        assert!(run.micros > 0.0);
    }
}

/// Random FP8 codes (no NaN) and their decoded values.
fn fp8_weight(kind: Fp8Kind, seed: u64, len: usize) -> (Vec<u8>, Vec<f32>) {
    let fmt = match kind {
        Fp8Kind::E4M3 => Fp8Format::E4M3Fn,
        Fp8Kind::E5M2 => Fp8Format::E5M2,
    };
    // Values spread over the format's useful range, encoded by qtool's CPU codec.
    let range = if kind == Fp8Kind::E4M3 { 400.0 } else { 3000.0 };
    let codes: Vec<u8> =
        values(seed, len).into_iter().map(|v| fmt.encode(v * range, Overflow::Saturate)).collect();
    let vals = codes.iter().map(|&c| fmt.decode(c)).collect();
    (codes, vals)
}

/// The CPU twin of the GPU's activation quantization: `e4m3(x / s)`, dequantized.
fn quant_act(x: &[f32], s: f32) -> Vec<f32> {
    x.iter()
        .map(|&v| Fp8Format::E4M3Fn.decode(Fp8Format::E4M3Fn.encode(v / s, Overflow::Saturate)) * s)
        .collect()
}

fn dyn_scale(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    (amax / 448.0).max(1.0 / (448.0 * 512.0))
}

#[test]
fn fp8_per_tensor_and_per_channel_match_cpu() {
    let Some(g) = gpu() else { return };
    for &(m, n, k) in &[(5, 96, 256), (40, 160, 512)] {
        let x: Vec<bf16> = values(3, m * k).into_iter().map(|v| bf16::from_f32(v * 3.0)).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        for kind in [Fp8Kind::E4M3, Fp8Kind::E5M2] {
            let (codes, wv) = fp8_weight(kind, 4, n * k);
            // Per-tensor, static and dynamic activation scales.
            let ws = 0.0123f32;
            let wf: Vec<f32> = wv.iter().map(|v| v * ws).collect();
            for input_scale in [Some(0.02f32), None] {
                let s = input_scale.unwrap_or_else(|| dyn_scale(&xf));
                let reference = cpu_gemm(&quant_act(&xf, s), &wf, m, n, k);
                // Fast accumulation (the default, as runtimes run it) and FP32-promoted sums.
                for (fast_accum, tol) in [(true, LT_FP8_TOL), (false, LT_FP8_TOL)] {
                    let opts = Fp8Options { path: Fp8Path::Auto, fast_accum };
                    let run = g
                        .fp8_gemm_with(
                            &x,
                            m,
                            n,
                            k,
                            &codes,
                            kind,
                            &Fp8Scale::PerTensor(ws),
                            input_scale,
                            opts,
                            2,
                        )
                        .unwrap();
                    check(
                        &format!("fp8 {kind:?} per-tensor {m}x{n}x{k} [{}]", run.backend),
                        &run.out,
                        &reference,
                        tol,
                    );
                }
            }
            // Per-channel, every implementation.
            let scales: Vec<f32> = values(5, n).into_iter().map(|v| 0.01 + 0.005 * v).collect();
            let wf: Vec<f32> = wv.iter().enumerate().map(|(i, v)| v * scales[i / k]).collect();
            let reference = cpu_gemm(&quant_act(&xf, dyn_scale(&xf)), &wf, m, n, k);
            for path in [Fp8Path::Auto, Fp8Path::AlphaVector, Fp8Path::PostScale] {
                let opts = Fp8Options { path, fast_accum: false };
                match g.fp8_gemm_with(
                    &x,
                    m,
                    n,
                    k,
                    &codes,
                    kind,
                    &Fp8Scale::PerChannel(scales.clone()),
                    None,
                    opts,
                    2,
                ) {
                    Ok(run) => check(
                        &format!("fp8 {kind:?} per-channel {path:?} {m}x{n}x{k} [{}]", run.backend),
                        &run.out,
                        &reference,
                        LT_FP8_TOL,
                    ),
                    // cuBLASLt may lack the alpha-vector mode for FP8; Auto then uses another path.
                    Err(KernelError::Blas(msg)) if path == Fp8Path::AlphaVector => {
                        println!("fp8 {kind:?} alpha vector unavailable: {msg}")
                    }
                    Err(e) => panic!("fp8 {kind:?} per-channel {path:?}: {e}"),
                }
            }
        }
    }
}

/// Hopper's FP8 tensor cores accumulate with fewer than 24 mantissa bits even when cuBLASLt
/// promotes partial sums to FP32 (measured 1.3e-4 at k = 256 on an H200; fast accumulation
/// 3.2e-4), so cuBLASLt FP8 results are checked at 2e-3 of the output range. qtool's own FP8
/// kernel sums in FP32 and is checked at 1e-4.
const LT_FP8_TOL: f64 = 2e-3;

#[test]
fn fp8_block128_matches_cpu() {
    let Some(g) = gpu() else { return };
    for &(m, n, k) in &[(3usize, 200usize, 384usize), (70, 256, 300)] {
        let x: Vec<bf16> = values(6, m * k).into_iter().map(|v| bf16::from_f32(v * 2.0)).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let (nb, kb) = (n.div_ceil(128), k.div_ceil(128));
        let bs: Vec<f32> = values(7, nb * kb).into_iter().map(|v| 0.002 + 0.001 * v).collect();
        for kind in [Fp8Kind::E4M3, Fp8Kind::E5M2] {
            let (codes, wv) = fp8_weight(kind, 8, n * k);
            let wf: Vec<f32> = wv
                .iter()
                .enumerate()
                .map(|(i, v)| v * bs[(i / k / 128) * kb + (i % k) / 128])
                .collect();
            // Activations quantized per 1x128 group, as the GPU does.
            let mut xq = vec![0.0f32; m * k];
            for r in 0..m {
                for b in 0..kb {
                    let (lo, hi) = (b * 128, ((b + 1) * 128).min(k));
                    let row = &xf[r * k + lo..r * k + hi];
                    let s = row.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-10) / 448.0;
                    xq[r * k + lo..r * k + hi].copy_from_slice(&quant_act(row, s));
                }
            }
            let run = g
                .fp8_gemm(&x, m, n, k, &codes, kind, &Fp8Scale::Block128(bs.clone()), None, 2)
                .unwrap();
            check(
                &format!("fp8 {kind:?} block128 {m}x{n}x{k} [{}]", run.backend),
                &run.out,
                &cpu_gemm(&xq, &wf, m, n, k),
                1e-4,
            );
        }
    }
}

#[test]
fn fp8_rejects_bad_inputs() {
    let Some(g) = gpu() else { return };
    let x = vec![bf16::ZERO; 4 * 32];
    let w = vec![0u8; 16 * 32];
    let e = g
        .fp8_gemm(&x, 4, 16, 32, &w[..100], Fp8Kind::E4M3, &Fp8Scale::PerTensor(1.0), None, 0)
        .unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)), "{e}");
    let e = g
        .fp8_gemm(&x, 4, 16, 32, &w, Fp8Kind::E4M3, &Fp8Scale::PerChannel(vec![1.0; 3]), None, 0)
        .unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)), "{e}");
    let e = g
        .fp8_gemm(&x, 4, 16, 32, &w, Fp8Kind::E4M3, &Fp8Scale::PerTensor(1.0), Some(f32::NAN), 0)
        .unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)), "{e}");
}

fn nvfp4_case(g: &Gpu, producer: Producer, n: usize, k: usize) {
    let w = values(11, n * k);
    let t =
        nvfp4::quantize(&Matrix::new(&w, n, k).unwrap(), producer, &Options::default()).unwrap();
    let wf = t.dequantize().unwrap();
    let (order, layout) = match t.layout {
        Layout::Comfy => (NibbleOrder::EvenHigh, ScaleLayout::Swizzled),
        _ => (NibbleOrder::EvenLow, ScaleLayout::Linear),
    };
    for m in [1, 3, 20] {
        let x: Vec<bf16> = values(12 + m as u64, m * k).into_iter().map(bf16::from_f32).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let reference = cpu_gemm(&xf, &wf, m, n, k);
        let run = g
            .nvfp4_gemm(
                &x,
                m,
                n,
                k,
                &t.packed,
                order,
                &t.block_scales,
                layout,
                t.tensor_scale_multiplier(),
                2,
            )
            .unwrap();
        check(
            &format!("nvfp4 {producer:?} {m}x{n}x{k} [{}]", run.backend),
            &run.out,
            &reference,
            tol_for(m).max(1e-5),
        );
        // The wrong nibble order must not pass: this is what `verify` relies on.
        let flipped = if order == NibbleOrder::EvenLow {
            NibbleOrder::EvenHigh
        } else {
            NibbleOrder::EvenLow
        };
        let bad = g
            .nvfp4_gemm(
                &x,
                m,
                n,
                k,
                &t.packed,
                flipped,
                &t.block_scales,
                layout,
                t.tensor_scale_multiplier(),
                0,
            )
            .unwrap();
        assert!(rel_err(&bad.out, &reference) > 0.05, "flipped nibbles went unnoticed");
    }
}

#[test]
fn nvfp4_all_layouts_match_cpu() {
    let Some(g) = gpu() else { return };
    nvfp4_case(&g, Producer::ModelOpt, 48, 96);
    nvfp4_case(&g, Producer::CompressedTensors, 64, 160);
    nvfp4_case(&g, Producer::Comfy, 40, 72);
    nvfp4_case(&g, Producer::Comfy, 136, 256);
}

#[test]
fn nvfp4_swizzled_scales_read_as_linear_fail() {
    let Some(g) = gpu() else { return };
    let (n, k, m) = (256, 128, 2);
    let w = values(13, n * k);
    let t = nvfp4::quantize(&Matrix::new(&w, n, k).unwrap(), Producer::Comfy, &Options::default())
        .unwrap();
    let reference = cpu_gemm(&vec![1.0; m * k], &t.dequantize().unwrap(), m, n, k);
    let x = vec![bf16::ONE; m * k];
    // 256 x 128 needs no padding, so the swizzled bytes have the linear length.
    let bad = g
        .nvfp4_gemm(
            &x,
            m,
            n,
            k,
            &t.packed,
            NibbleOrder::EvenHigh,
            &t.block_scales,
            ScaleLayout::Linear,
            t.tensor_scale_multiplier(),
            0,
        )
        .unwrap();
    assert!(rel_err(&bad.out, &reference) > 0.05);
    let good = g
        .nvfp4_gemm(
            &x,
            m,
            n,
            k,
            &t.packed,
            NibbleOrder::EvenHigh,
            &t.block_scales,
            ScaleLayout::Swizzled,
            t.tensor_scale_multiplier(),
            0,
        )
        .unwrap();
    check("nvfp4 swizzled control", &good.out, &reference, 1e-5);
}

fn int_quant(
    n: usize,
    k: usize,
    group: usize,
    symmetric: bool,
    conv: rtn::Convention,
    act_order: bool,
) -> rtn::QuantizedInt {
    let w = values(21, n * k);
    let g_idx: Option<Vec<u32>> = act_order.then(|| {
        // A fixed column permutation: column c belongs to group ((c * 7) % k) / group.
        (0..k).map(|c| (((c * 7) % k) / group) as u32).collect()
    });
    let cfg = rtn::RtnConfig {
        bits: rtn::Bits::B4,
        group_size: rtn::GroupSize::Size(group),
        symmetric,
        convention: conv,
    };
    rtn::quantize(&w, n, k, &cfg, g_idx.as_deref()).unwrap()
}

fn run_int4(g: &Gpu, what: &str, q: &rtn::QuantizedInt, w: Int4Weights<'_>) {
    let (n, k) = (q.n, q.k);
    let wf = rtn::dequantize(q).unwrap();
    for m in [1, 5, 17] {
        let x: Vec<f16> = values(30 + m as u64, m * k).into_iter().map(f16::from_f32).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let run = g.int4_gemm(&x, m, n, k, w, 2).unwrap();
        check(
            &format!("{what} {m}x{n}x{k} [{}]", run.backend),
            &run.out,
            &cpu_gemm(&xf, &wf, m, n, k),
            tol_for(m).max(2e-5),
        );
    }
}

fn gidx_i32(q: &rtn::QuantizedInt) -> Option<Vec<i32>> {
    q.g_idx.as_ref().map(|g| g.iter().map(|&v| v as i32).collect())
}

#[test]
fn int4_gptq_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (n, k, group) = (64, 512, 128);
    for (sym, zeros, act) in [
        (true, GptqZeros::V1, false),
        (false, GptqZeros::V2, false),
        (true, GptqZeros::V1, true),
        (false, GptqZeros::V2, true),
    ] {
        let q = int_quant(n, k, group, sym, rtn::Convention::Gptq, act);
        let t = int::pack_gptq(&q, zeros).unwrap();
        let gi = gidx_i32(&q);
        let w = Int4Weights::Gptq {
            qweight: &t.qweight,
            qzeros: &t.qzeros,
            scales: &t.scales,
            g_idx: gi.as_deref(),
            v2: zeros == GptqZeros::V2,
            group,
        };
        run_int4(&g, &format!("gptq {zeros:?} sym={sym} act={act}"), &q, w);
        if zeros == GptqZeros::V1 && !act {
            // Reading v1 zeros as v2 must be caught.
            let bad = Int4Weights::Gptq {
                qweight: &t.qweight,
                qzeros: &t.qzeros,
                scales: &t.scales,
                g_idx: None,
                v2: true,
                group,
            };
            let x = vec![f16::ONE; k];
            let reference = cpu_gemm(&vec![1.0; k], &rtn::dequantize(&q).unwrap(), 1, n, k);
            assert!(rel_err(&g.int4_gemm(&x, 1, n, k, bad, 0).unwrap().out, &reference) > 0.05);
        }
    }
}

#[test]
fn int4_awq_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (n, k, group) = (128, 256, 64);
    let q = int_quant(n, k, group, false, rtn::Convention::Awq, false);
    let t = int::pack_awq(&q).unwrap();
    run_int4(
        &g,
        "awq",
        &q,
        Int4Weights::Awq { qweight: &t.qweight, qzeros: &t.qzeros, scales: &t.scales, group },
    );
}

#[test]
fn int4_compressed_tensors_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (n, k, group) = (72, 384, 128);
    for (sym, act) in [(true, false), (false, false), (true, true)] {
        let q = int_quant(n, k, group, sym, rtn::Convention::CompressedTensors, act);
        let t = int::pack_ct(&q).unwrap();
        let gi = t.weight_g_idx.clone();
        let w = Int4Weights::Compressed {
            packed: &t.weight_packed,
            scales: &t.weight_scale,
            zero_points: t.weight_zero_point.as_deref(),
            g_idx: gi.as_deref(),
            group,
        };
        run_int4(&g, &format!("compressed-tensors sym={sym} act={act}"), &q, w);
    }
}

#[test]
fn int4_rejects_out_of_range_g_idx() {
    let Some(g) = gpu() else { return };
    let (n, k, group) = (64, 256, 128);
    let q = int_quant(n, k, group, true, rtn::Convention::Gptq, false);
    let t = int::pack_gptq(&q, GptqZeros::V1).unwrap();
    let mut gi = vec![0i32; k];
    gi[9] = 2; // only 2 groups
    let w = Int4Weights::Gptq {
        qweight: &t.qweight,
        qzeros: &t.qzeros,
        scales: &t.scales,
        g_idx: Some(&gi),
        v2: false,
        group,
    };
    let e = g.int4_gemm(&vec![f16::ONE; k], 1, n, k, w, 0).unwrap_err();
    assert!(e.to_string().contains("g_idx[9]"), "{e}");
}

#[test]
fn gguf_types_match_cpu() {
    let Some(g) = gpu() else { return };
    let (n, k) = (48, 512);
    let w = values(41, n * k);
    for ty in qtool_kernels::gguf::GGUF_GPU_TYPES {
        let row = ty.row_size(k as u64).unwrap() as usize;
        let mut bytes = vec![0u8; n * row];
        qtool_quantizers::gguf::quantize(ty, &w, &mut bytes).unwrap();
        let mut wf = vec![0.0f32; n * k];
        qtool_quantizers::gguf::dequantize(ty, &bytes, &mut wf).unwrap();
        for m in [1, 4, 12] {
            let x = values(42 + m as u64, m * k);
            let run = g.gguf_gemm(&x, m, n, k, ty, &bytes, 2).unwrap();
            check(
                &format!("gguf {} {m}x{n}x{k} [{}]", ty.name(), run.backend),
                &run.out,
                &cpu_gemm(&x, &wf, m, n, k),
                tol_for(m).max(1e-5),
            );
        }
    }
    let e = g.gguf_gemm(&vec![0.0; 512], 1, 1, 512, GgmlType::Q2_K, &[0u8; 84 * 2], 0).unwrap_err();
    assert!(matches!(e, KernelError::Unsupported(_)), "{e}");
    let e = g.gguf_gemm(&vec![0.0; 500], 1, 1, 500, GgmlType::Q4_K, &[0u8; 144], 0).unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)), "{e}");
}

/// The CPU half of every case above, without a GPU: the quantizers accept each configuration
/// (so a device run is never spent on a broken test setup), and the harness itself can fail.
#[test]
fn cpu_side_of_every_case_builds() {
    for (sym, zeros, act) in [
        (true, GptqZeros::V1, false),
        (false, GptqZeros::V2, false),
        (true, GptqZeros::V1, true),
        (false, GptqZeros::V2, true),
    ] {
        let q = int_quant(64, 512, 128, sym, rtn::Convention::Gptq, act);
        let t = int::pack_gptq(&q, zeros).unwrap();
        assert_eq!(t.qweight.len(), 512 / 8 * 64);
        assert_eq!(gidx_i32(&q).is_some(), act);
    }
    int::pack_awq(&int_quant(128, 256, 64, false, rtn::Convention::Awq, false)).unwrap();
    for (sym, act) in [(true, false), (false, false), (true, true)] {
        let t =
            int::pack_ct(&int_quant(72, 384, 128, sym, rtn::Convention::CompressedTensors, act))
                .unwrap();
        assert_eq!(t.weight_zero_point.is_some(), !sym);
        assert_eq!(t.weight_g_idx.is_some(), act);
    }
    for (p, n, k) in [
        (Producer::ModelOpt, 48, 96),
        (Producer::CompressedTensors, 64, 160),
        (Producer::Comfy, 40, 72),
        (Producer::Comfy, 136, 256),
    ] {
        let t = nvfp4::quantize(
            &Matrix::new(&values(11, n * k), n, k).unwrap(),
            p,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(t.dequantize().unwrap().len(), n * k);
    }
    for ty in qtool_kernels::gguf::GGUF_GPU_TYPES {
        let row = ty.row_size(512).unwrap() as usize;
        let mut bytes = vec![0u8; 48 * row];
        qtool_quantizers::gguf::quantize(ty, &values(41, 48 * 512), &mut bytes).unwrap();
    }
    let (codes, vals) = fp8_weight(Fp8Kind::E5M2, 4, 64);
    assert!(codes.len() == 64 && vals.iter().all(|v| v.is_finite()));
    let r = cpu_gemm(&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], 1, 2, 2);
    assert_eq!(r, vec![11.0, 17.0]);
    assert!(rel_err(&[11.0, 17.5], &r) > 0.02);
    assert_eq!(rel_err(&r, &r), 0.0);
}
