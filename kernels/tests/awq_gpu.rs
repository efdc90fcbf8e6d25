//! AWQ's searches on the GPU (`qtool_kernels::awq`) against the host code they replace
//! (`qtool_quantizers::ptq::awq`), bit for bit: the scaled residual of every RTN convention,
//! bit width and stored scale dtype; the scale search against the host search over the same
//! device quadratic form; the clip search with and without column scales. Inputs the host
//! rejects, and shapes the kernels do not take, must come back as `None` (the host decides).
//! Without a GPU each test prints `skipped: <reason>`; with `QTOOL_REQUIRE_GPU=1` a missing
//! GPU is a failure.

mod common;

use common::{gpu, values};
use qtool_kernels::awq::{clip_search, scaled_residual, search_scales, MAX_CLIP_GROUP};
use qtool_kernels::gptq::{quad_form, GptqGpu};
use qtool_kernels::llama::CudaSlice;
use qtool_kernels::Gpu;
use qtool_quantizers::int::rtn::{Bits, Convention, GroupSize, RtnConfig, ScaleDtype};
use qtool_quantizers::ptq::awq::{scale_gram, scaled_residual as host_residual, scales_for};
use qtool_quantizers::ptq::{
    clip_search as host_clip, search_scales_with, AwqConfig, Hessian, PtqError, PtqResult, QuadForm,
};

fn cfg(conv: Convention, sym: bool, bits: Bits, group: i64, sdt: ScaleDtype) -> AwqConfig {
    let rtn = RtnConfig {
        bits,
        group_size: if group < 0 { GroupSize::PerChannel } else { GroupSize::Size(group as usize) },
        symmetric: sym,
        convention: conv,
    };
    AwqConfig::new(rtn, sdt)
}

/// Every convention × symmetry × bit width × stored scale dtype at `group` that the host's
/// RTN accepts (AWQ's convention is asymmetric only).
fn configs(group: i64) -> Vec<AwqConfig> {
    let mut out = Vec::new();
    for conv in [Convention::Gptq, Convention::Awq, Convention::CompressedTensors] {
        for sym in [true, false] {
            if conv == Convention::Awq && sym {
                continue;
            }
            for bits in [Bits::B4, Bits::B8] {
                for sdt in [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32] {
                    out.push(cfg(conv, sym, bits, group, sdt));
                }
            }
        }
    }
    out
}

/// `[n, k]` weights with a few large columns and one all-zero row (a zero-range group).
fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut w = values(seed, n * k);
    for (i, v) in w.iter_mut().enumerate() {
        let c = i % k;
        if c % 37 == 3 {
            *v *= 8.0;
        }
        if i / k == 1 {
            *v = 0.0;
        }
    }
    w
}

/// Activation statistics with channels spread over 30× and correlated (a rank-k/4 mix).
fn stats(t: usize, k: usize, seed: u64) -> Hessian {
    let r = (k / 4).max(1);
    let z = values(seed, t * r);
    let mix = values(seed + 1, r * k);
    let mut x = values(seed + 2, t * k);
    for i in 0..t {
        for c in 0..k {
            let mut s = 0.3 * x[i * k + c];
            for j in 0..r {
                s += z[i * r + j] * mix[j * k + c];
            }
            x[i * k + c] = s * (0.2 + 6.0 * ((c * 37 % k) as f32 / k as f32));
        }
    }
    let mut h = Hessian::new(k);
    h.add(&x).unwrap();
    h
}

/// The pipeline's former path: the host search with its quadratic forms on the device gram.
struct DeviceForm<'a, 'g> {
    gg: &'a GptqGpu<'g>,
    gram: &'a CudaSlice<f64>,
    k: usize,
}

impl QuadForm for DeviceForm<'_, '_> {
    fn k(&self) -> usize {
        self.k
    }

    fn sum(&self, d: &[f32], rows: usize) -> PtqResult<f64> {
        quad_form(self.gg, self.gram, self.k, d, rows).map_err(|e| PtqError::Config(e.to_string()))
    }
}

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn scaled_residual_equals_the_host_for_every_convention_and_scale_dtype() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let (n, k) = (40, 256);
    let w = weights(n, k, 11);
    let am = stats(64, k, 12).abs_mean().unwrap();
    for group in [32, 128, -1] {
        for c in configs(group) {
            for alpha in [0.0, 0.35, 0.95] {
                let s = scales_for(&am, alpha);
                let host = host_residual(&w, n, k, &s, &c).unwrap();
                let dev = scaled_residual(&gg, &w, n, k, &s, &c).unwrap().expect("on the device");
                let host64: Vec<u64> = host.iter().map(|&v| f64::from(v).to_bits()).collect();
                let dev64: Vec<u64> = dev.iter().map(|v| v.to_bits()).collect();
                assert_eq!(host64, dev64, "group {group} α {alpha} {c:?}");
            }
        }
    }
}

#[test]
fn scale_search_on_the_gpu_equals_the_host_search_over_the_same_quadratic_form() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let k = 384;
    let h = stats(512, k, 21);
    let gram = h.gram().unwrap();
    let gram_d = g.upload(&gram).unwrap();
    let am = h.abs_mean().unwrap();
    let (wa, wb) = (weights(96, k, 22), weights(160, k, 23));
    let linears: Vec<(&[f32], usize)> = vec![(&wa, 96), (&wb, 160)];
    let mut moved = 0;
    for c in [
        cfg(Convention::Awq, false, Bits::B4, 64, ScaleDtype::F16),
        cfg(Convention::Gptq, true, Bits::B4, 128, ScaleDtype::BF16),
        cfg(Convention::CompressedTensors, true, Bits::B4, -1, ScaleDtype::F32),
        cfg(Convention::CompressedTensors, false, Bits::B8, 32, ScaleDtype::BF16),
    ] {
        let form = DeviceForm { gg: &gg, gram: &gram_d, k };
        let want = search_scales_with(&linears, &form, &am, &c).unwrap();
        let got = search_scales(&gg, &gram_d, k, &linears, &am, &c).unwrap().expect("device");
        assert_eq!(got.alpha, want.alpha, "{c:?}");
        assert_eq!(bits32(&got.scales), bits32(&want.scales), "{c:?}");
        assert_eq!(got.error.to_bits(), want.error.to_bits(), "{c:?}");
        assert_eq!(got.rtn_error.to_bits(), want.rtn_error.to_bits(), "{c:?}");
        assert!(got.error <= got.rtn_error, "{c:?}");
        moved += (got.alpha > 0.0) as usize;
    }
    // The activations are skewed enough that scaling pays somewhere: the test compares real
    // searches, not four copies of plain RTN.
    assert!(moved > 0, "every search kept α = 0");
}

#[test]
fn clip_search_on_the_gpu_equals_the_host() {
    let Some(g) = gpu() else { return };
    let gg = GptqGpu::new(&g).unwrap();
    let (n, k) = (48, 512);
    let h = stats(256, k, 31);
    let gram = h.gram().unwrap();
    let gram_d = g.upload(&gram).unwrap();
    let s = scales_for(&h.abs_mean().unwrap(), 0.5);
    let w0 = weights(n, k, 32);
    let mut clipped = 0;
    for group in [32, 128, -1] {
        for c in configs(group) {
            for col in [None, Some(s.as_slice())] {
                let (w, gh) = match col {
                    Some(s) => {
                        let w: Vec<f32> = w0
                            .chunks_exact(k)
                            .flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b))
                            .collect();
                        (w, scale_gram(&gram, k, s))
                    }
                    None => (w0.clone(), gram.clone()),
                };
                let want = host_clip(&w, n, k, &gh, &c).unwrap();
                let got = clip_search(&gg, &gram_d, &w, n, k, col, &c).unwrap().expect("device");
                let what = format!("group {group} scaled {} {c:?}", col.is_some());
                assert_eq!(bits32(&got.w), bits32(&want.w), "{what}");
                assert_eq!(bits32(&got.max_val), bits32(&want.max_val), "{what}");
                assert_eq!(got.error.to_bits(), want.error.to_bits(), "{what}");
                assert_eq!(got.unclipped_error.to_bits(), want.unclipped_error.to_bits(), "{what}");
                clipped += (got.error < got.unclipped_error) as usize;
            }
        }
    }
    assert!(clipped > 0, "no configuration clipped anything");
}

#[test]
fn inputs_the_host_rejects_and_unsupported_shapes_go_back_to_the_host() {
    let Some(g) = gpu() else { return };
    check_fallbacks(&g);
}

fn check_fallbacks(g: &Gpu) {
    let gg = GptqGpu::new(g).unwrap();
    let (n, k) = (16, 256);
    let h = stats(64, k, 41);
    let gram = h.gram().unwrap();
    let gram_d = g.upload(&gram).unwrap();
    let am = h.abs_mean().unwrap();
    let c = cfg(Convention::Awq, false, Bits::B4, 64, ScaleDtype::F16);
    let mut w = weights(n, k, 42);
    w[5 * k + 7] = f32::NAN;
    assert!(clip_search(&gg, &gram_d, &w, n, k, None, &c).unwrap().is_none());
    assert!(search_scales(&gg, &gram_d, k, &[(&w, n)], &am, &c).unwrap().is_none());
    assert!(host_clip(&w, n, k, &gram, &c).is_err(), "the host reports the NaN itself");

    // A configuration the host's RTN refuses (symmetric AWQ convention).
    let w = weights(n, k, 43);
    let sym_awq = cfg(Convention::Awq, true, Bits::B4, 64, ScaleDtype::F16);
    let s = scales_for(&am, 0.5);
    assert!(host_residual(&w, n, k, &s, &sym_awq).is_err());
    assert!(scaled_residual(&gg, &w, n, k, &s, &sym_awq).unwrap().is_none());
    assert!(search_scales(&gg, &gram_d, k, &[(&w, n)], &am, &sym_awq).unwrap().is_none());

    // A group size that does not divide K, and per-channel clipping wider than the kernel.
    let odd = cfg(Convention::Awq, false, Bits::B4, 48, ScaleDtype::F16);
    assert!(clip_search(&gg, &gram_d, &w, n, k, None, &odd).unwrap().is_none());
    let wide_k = MAX_CLIP_GROUP * 2;
    let hw = stats(8, wide_k, 44);
    let gw = g.upload(&hw.gram().unwrap()).unwrap();
    let ww = weights(2, wide_k, 45);
    let pc = cfg(Convention::Gptq, true, Bits::B4, -1, ScaleDtype::F16);
    assert!(clip_search(&gg, &gw, &ww, 2, wide_k, None, &pc).unwrap().is_none());

    // A gram entry that is not finite: the device clip defers, the host names it.
    let mut bad = gram.clone();
    bad[3 * k + 3] = f64::INFINITY;
    let bad_d = g.upload(&bad).unwrap();
    assert!(clip_search(&gg, &bad_d, &w, n, k, None, &c).unwrap().is_none());
    assert!(host_clip(&w, n, k, &bad, &c).is_err());
}
