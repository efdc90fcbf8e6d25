//! The plan as text, line for line in the format `llama-quantize --dry-run` logs it
//! (LC `src/llama-quant.cpp`@007dbbf3), so the two can be compared with `diff`. The crate does
//! not print; callers print these strings.

use super::ftype::ggml_log_name;
use qtool_formats::GgmlType;

use super::gguf::{Choice, RecipePlan, TensorPlan};

const MIB: f64 = 1024.0 * 1024.0;

/// `llama_format_tensor_shape`: all four dimensions, each `%6d`.
fn shape(ne: &[u64]) -> String {
    (0..4).map(|i| format!("{:6}", ne.get(i).copied().unwrap_or(1))).collect::<Vec<_>>().join(", ")
}

/// The lines llama.cpp prints while choosing types: applied `--tensor-type` overrides and shape
/// fallbacks, in tensor order.
pub fn decision_lines(plan: &RecipePlan) -> Vec<String> {
    let default = plan.ftype.default_type();
    let mut lines = Vec::new();
    for t in &plan.tensors {
        let wanted = t.fallback_from.unwrap_or(t.to);
        if matches!(t.choice, Choice::Manual(_)) && wanted != default {
            lines.push(format!(
                "llama_tensor_get_type: {:<36} - applying manual override: {} -> {}",
                t.name,
                ggml_log_name(default),
                ggml_log_name(wanted)
            ));
        }
        if let Some(wanted) = t.fallback_from {
            let f16 = if t.to == GgmlType::F16 {
                "(WARNING: must use F16 due to unusual shape) "
            } else {
                ""
            };
            lines.push(format!(
                "warning: {:<36} - ncols {:6} not divisible by {:3} (required for type {:>7}) {f16}-> falling back to {:>7}",
                t.name,
                t.ne[0],
                wanted.block_size(),
                ggml_log_name(wanted),
                ggml_log_name(t.to)
            ));
        }
    }
    lines
}

/// The per-tensor line of a dry run: `[   i/   n] name - [shape], type = from, size = ...`.
pub fn tensor_line(i: usize, n: usize, t: &TensorPlan) -> String {
    let head = format!(
        "[{:4}/{:4}] {:<36} - [{}], type = {:>6}, ",
        i + 1,
        n,
        t.name,
        shape(&t.ne),
        ggml_log_name(t.from)
    );
    if t.from != t.to {
        format!(
            "{head}size = {:8.2} MiB -> {:8.2} MiB ({})",
            t.bytes_in() as f64 / MIB,
            t.bytes_out() as f64 / MIB,
            ggml_log_name(t.to)
        )
    } else {
        format!("{head}size = {:8.3} MiB", t.bytes_in() as f64 / MIB)
    }
}

/// The closing summary: sizes before and after, bits per weight, and the fallback count.
pub fn summary_lines(plan: &RecipePlan) -> Vec<String> {
    let n_elements: u64 = plan.tensors.iter().map(TensorPlan::numel).sum();
    let org: u64 = plan.tensors.iter().map(TensorPlan::bytes_in).sum();
    let new: u64 = plan.tensors.iter().map(TensorPlan::bytes_out).sum();
    let bpw = |b: u64| if n_elements == 0 { 0.0 } else { b as f64 * 8.0 / n_elements as f64 };
    let mut lines = vec![
        format!(
            "llama_model_quantize_impl: model size  = {:8.2} MiB ({:.2} BPW)",
            org as f64 / MIB,
            bpw(org)
        ),
        format!(
            "llama_model_quantize_impl: quant size  = {:8.2} MiB ({:.2} BPW)",
            new as f64 / MIB,
            bpw(new)
        ),
    ];
    if plan.n_fallback > 0 {
        lines.push(format!(
            "llama_model_quantize_impl: WARNING: {} of {} tensor(s) required fallback quantization",
            plan.n_fallback,
            plan.tensors.len()
        ));
    }
    lines
}

/// Everything a dry run shows, optionally with the rule behind each decision appended.
pub fn plan_lines(plan: &RecipePlan, explain: bool) -> Vec<String> {
    let n = plan.tensors.len();
    let mut lines = decision_lines(plan);
    for (i, t) in plan.tensors.iter().enumerate() {
        let mut line = tensor_line(i, n, t);
        if explain {
            line.push_str(&format!("  # {}", t.choice));
            if let Some(w) = t.fallback_from {
                line.push_str(&format!(" (wanted {w}, shape fallback)"));
            }
        }
        lines.push(line);
    }
    lines.extend(summary_lines(plan));
    lines
}
