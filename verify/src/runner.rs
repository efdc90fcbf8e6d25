//! Running one layer: seeded activations, the kernel, the CPU references, the verdict.
//!
//! ```text
//! x  = seeded N(0,1) [m, k], rounded to the kernel's activation dtype
//! y_kernel = kernel(x, stored bytes)                       (GPU)
//! y_cpu    = x · dequant_cpu(stored bytes)ᵀ                (FP32, CPU)      → max_rel, mean_rel vs tolerance
//!                                                   (per output, over its magnitude ‖x_i‖‖w_j‖/√k)
//! y_bf16   = cuBLAS BF16 x · bf16(dequant)ᵀ                (GPU)            → time only
//! with --ref:
//! y_ref    = x · W_refᵀ                                    (FP32, CPU)
//! y_q      = x · requant(W_ref)ᵀ                           (qtool's quantizer for the scheme)
//! expected = rel(y_q, y_ref);  cpu_rel = rel(y_cpu, y_ref);  kernel_rel = rel(y_kernel, y_ref)
//! pass     = cpu_rel ≤ limit(expected)      (kernel_rel reported: kernel − cpu is bounded above)
//! ```
//! The kernel check catches a kernel that misreads the bytes; the REF check catches bytes that
//! are wrong for every reader (a corrupted or mislabelled file), which the first check cannot,
//! since the CPU decoder reads the same wrong bytes the same way. The REF part runs entirely on
//! the CPU, so it is testable without a GPU ([`verify_layer`] with no backend).

use qtool_formats::{DType, TensorDType};
use qtool_quantizers::diff::Input;

use crate::act_quant::kernel_activations;
use crate::activations::activations;
use crate::discover::{IntFamily, Layer, LayerFormat};
use crate::error::Result;
use crate::expected::{requantize, Zeros};
use crate::gemm::gemm_xwt;
use crate::metrics::{compare, kernel_error};
use crate::reference::Reference;
use crate::report::{BatchResult, LayerReport, RefResult, Status};
use crate::tolerance::{kernel_for, ref_limit, ref_ratio, Tolerance};

/// A kernel's output and its median time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRun {
    /// `[m, n]` row-major.
    pub out: Vec<f32>,
    pub micros: f64,
}

/// Why a backend did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The backend has no kernel for this layer (the layer is skipped, with this reason).
    Unsupported(String),
    /// The kernel ran and failed (the layer fails).
    Failed(String),
}

/// What runs kernels: the GPU in `qtool verify`, a test double in the CPU tests.
pub trait Backend {
    /// A description of the device, for the report.
    fn device(&self) -> String;
    /// The layer's kernel on its stored bytes; `x` is `[m, k]`, already rounded to the layer's
    /// activation dtype.
    fn run_layer(&self, layer: &Layer<'_>, x: &[f32], m: usize) -> Result<KernelRun, BackendError>;
    /// cuBLAS BF16 `x · wᵀ` for `w` `[n, k]` (rounded to bf16 by the backend): the speed baseline.
    fn gemm_bf16(
        &self,
        x: &[f32],
        w: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<KernelRun, BackendError>;
}

/// REF and the candidate's own description, for the REF check.
#[derive(Clone, Copy, Debug)]
pub struct RefContext<'r, 'a> {
    pub reference: &'r Reference<'a>,
    pub candidate: &'r Input<'a>,
}

/// Whether an integer layer is symmetric, read from its own zero points (the requantization
/// for the expected error must match).
pub fn zeros_of(layer: &Layer<'_>) -> Zeros {
    match layer.format {
        LayerFormat::Int { family: IntFamily::CompressedTensors, .. } => {
            if layer.part("weight_zero_point").is_some() {
                Zeros::Asymmetric
            } else {
                Zeros::Symmetric
            }
        }
        LayerFormat::Int { family: IntFamily::Gptq { v2 }, bits, .. } => {
            let Some(z) = layer.part("qzeros") else { return Zeros::Asymmetric };
            if z.info.dtype != TensorDType::St(DType::I32) {
                return Zeros::Asymmetric;
            }
            // Every field the midpoint (v2) or midpoint − 1 (v1).
            let mid = (1u32 << (bits - 1)) - u32::from(!v2);
            let per_word = 32 / bits;
            let pattern = (0..per_word).fold(0u32, |w, i| w | (mid << (i * bits)));
            let all = z
                .data
                .chunks_exact(4)
                .all(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == pattern);
            if all {
                Zeros::Symmetric
            } else {
                Zeros::Asymmetric
            }
        }
        LayerFormat::Int { family: IntFamily::Awq, .. } => Zeros::Asymmetric,
        _ => Zeros::Symmetric,
    }
}

/// Verifies one layer at every batch size. `Err` only for input problems (REF lacks the layer);
/// a layer that cannot run or does not match is a report row.
pub fn verify_layer(
    layer: &Layer<'_>,
    batches: &[usize],
    backend: Option<&dyn Backend>,
    reference: Option<RefContext<'_, '_>>,
) -> Result<LayerReport> {
    let mut report = LayerReport {
        name: layer.name.clone(),
        layout: layer.scheme.clone(),
        kernel: None,
        shape: [layer.n, layer.k],
        status: Status::Skipped,
        reason: None,
        batches: Vec::new(),
    };
    // Without a kernel the layer is still checked against REF on the CPU; it can fail that way,
    // but never pass: it ends as skipped, with the reason.
    let (tolerance, mut no_kernel) = match kernel_for(&layer.format) {
        Ok((kernel, tolerance)) => {
            report.kernel = Some(kernel);
            (Some(tolerance), None)
        }
        Err(why) => (None, Some(why)),
    };
    let w = match layer.dequantize() {
        Ok(w) => w,
        Err(e) => {
            report.status = Status::Fail;
            report.reason = Some(e.to_string());
            return Ok(report);
        }
    };
    // REF's weights and the expected-error weights, once per layer.
    let refs = match reference {
        None => None,
        Some(cx) => {
            let w_ref = cx.reference.weight(layer, cx.candidate)?;
            let (w_ref, note) = match &layer.format {
                LayerFormat::Int { family: IntFamily::Awq, .. } => {
                    crate::awq_fold::align(&w_ref, &w, layer.n, layer.k)
                }
                _ => (w_ref, None),
            };
            let w_q = requantize(&layer.format, zeros_of(layer), &w_ref, layer.n, layer.k);
            Some((w_ref, w_q, note))
        }
    };
    let (n, k) = (layer.n, layer.k);
    let act = layer.format.activation();
    let mut failure: Option<String> = None;
    // Integer layouts: a zero-point convention mix-up (GPTQ v1 read as v2 or back) shifts every
    // weight by one quantization step. On isotropic activations that costs only ~3.5× RTN's
    // output error — inside the integer REF ratio, which must admit GPTQ's error feedback — but
    // it is a mean offset, which neither RTN nor GPTQ/AWQ produce (their errors average to ~0).
    if let (Some((w_ref, Ok(q), _)), LayerFormat::Int { .. } | LayerFormat::Marlin { .. }) =
        (&refs, &layer.format)
    {
        let (bias, rms) = offset_vs_expected(&w, w_ref, q);
        if bias > BIAS_LIMIT * rms {
            failure = Some(format!(
                "mean weight offset vs REF {} is {:.1}× the RMS of the expected error {}: a systematic shift (zero-point convention?)",
                fmt(bias),
                bias / rms,
                fmt(rms)
            ));
        }
    }
    for &m in batches {
        let x = activations(&layer.name, m, k, |v| act.round(v));
        // The reference multiplies what the kernel's tensor cores multiply (E4M3 activations for
        // FP8), so the tolerance measures the kernel alone.
        let xk = kernel_activations(&layer.format, &x, m, k);
        let y_cpu = gemm_xwt(&xk, &w, m, n, k);
        let mut b = BatchResult {
            m,
            max_rel: None,
            mean_rel: None,
            tolerance,
            pass: true,
            kernel_us: None,
            bf16_us: None,
            speedup: None,
            reference: None,
        };
        let mut y_kernel = None;
        if let (Some(be), Some(tolerance), None) = (backend, tolerance, &no_kernel) {
            match be.run_layer(layer, &x, m) {
                Ok(run) => {
                    let s = kernel_error(&run.out, &y_cpu, &xk, &w, m, n, k);
                    b.max_rel = Some(s.max_rel);
                    b.mean_rel = Some(s.mean_rel);
                    b.kernel_us = Some(run.micros);
                    if !tolerance.admits(s.max_rel, s.mean_rel) {
                        b.pass = false;
                        failure
                            .get_or_insert_with(|| describe(&tolerance, m, s.max_rel, s.mean_rel));
                    }
                    y_kernel = Some(run.out);
                }
                Err(BackendError::Unsupported(why)) => {
                    b.pass = true;
                    no_kernel = Some(why);
                }
                Err(BackendError::Failed(why)) => {
                    b.pass = false;
                    failure.get_or_insert_with(|| format!("m={m}: kernel failed: {why}"));
                }
            }
            if let Some(us) = b.kernel_us {
                // Only the time matters here; a baseline failure leaves the columns empty.
                if let Ok(base) = be.gemm_bf16(&x, &w, m, n, k) {
                    b.bf16_us = Some(base.micros);
                    b.speedup = Some(base.micros / us);
                }
            }
        }
        if let Some((w_ref, w_q, fold_note)) = &refs {
            let y_ref = gemm_xwt(&x, w_ref, m, n, k);
            // The bytes are judged on the unquantized activations, like the expected error.
            let y_bytes = match &xk {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(_) => Some(gemm_xwt(&x, &w, m, n, k)),
            };
            let cpu_rel = compare(y_bytes.as_ref().unwrap_or(&y_cpu), &y_ref).rel_fro;
            let kernel_rel = y_kernel.as_ref().map(|y| compare(y, &y_ref).rel_fro);
            let r = match w_q {
                Ok(q) => {
                    let expected = compare(&gemm_xwt(&x, q, m, n, k), &y_ref).rel_fro;
                    let limit = ref_limit(&layer.format, expected);
                    // The bytes are judged by the CPU dequantization; the kernel's distance to
                    // REF adds only its own arithmetic (activation quantization for FP8), which
                    // the kernel check bounds, so it is reported, not judged twice.
                    // `e <= limit` is false for NaN, so a NaN fails.
                    let pass = cpu_rel <= limit;
                    if !pass {
                        failure.get_or_insert_with(|| {
                            format!(
                                "m={m}: error vs REF {} > limit {} ({}× the {} expected for this scheme){}",
                                fmt(cpu_rel),
                                fmt(limit),
                                ref_ratio(&layer.format),
                                fmt(expected),
                                match layer.format {
                                    LayerFormat::Int { .. } | LayerFormat::Marlin { .. } => {
                                        "; wrong bytes, or GPTQ/AWQ overfitted to too little calibration data"
                                    }
                                    _ => "",
                                }
                            )
                        });
                    }
                    RefResult {
                        expected_rel: Some(expected),
                        cpu_rel,
                        kernel_rel,
                        limit: Some(limit),
                        pass,
                        note: fold_note.clone(),
                    }
                }
                // No yardstick: report the errors, judge nothing.
                Err(why) => RefResult {
                    expected_rel: None,
                    cpu_rel,
                    kernel_rel,
                    limit: None,
                    pass: true,
                    note: Some(format!("not judged: no expected error ({why})")),
                },
            };
            b.pass &= r.pass;
            b.reference = Some(r);
        }
        report.batches.push(b);
    }
    (report.status, report.reason) = match (failure, no_kernel) {
        (Some(why), _) => (Status::Fail, Some(why)),
        (None, Some(why)) => (Status::Skipped, Some(format!("no kernel: {why}"))),
        (None, None) => (Status::Pass, None),
    };
    Ok(report)
}

fn fmt(x: f64) -> String {
    format!("{x:.4}")
}

fn describe(t: &Tolerance, m: usize, max_rel: f64, mean_rel: f64) -> String {
    format!(
        "m={m}: kernel vs CPU max_rel {} / mean_rel {} exceeds {} ({} / {})",
        fmt(max_rel),
        fmt(mean_rel),
        t.name,
        t.max_rel,
        t.mean_rel
    )
}

/// A layer's mean weight offset is judged against this many times the RMS of the expected
/// (RTN) weight error. A one-step zero-point shift measures ~3.5 (a step over the √12 of uniform
/// rounding); RTN and GPTQ/AWQ output measure ~0.01 on real layers.
pub const BIAS_LIMIT: f64 = 1.0;

/// `|mean(w − w_ref)|` and `rms(w_q − w_ref)`, in f64.
fn offset_vs_expected(w: &[f32], w_ref: &[f32], w_q: &[f32]) -> (f64, f64) {
    let len = w.len().max(1) as f64;
    let mean: f64 = w.iter().zip(w_ref).map(|(&a, &b)| a as f64 - b as f64).sum::<f64>() / len;
    let ms: f64 =
        w_q.iter().zip(w_ref).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / len;
    (mean.abs(), ms.sqrt())
}
