//! `inspect --stats`: per-tensor statistics through `qtool_quantizers::stats`, all tensors in
//! parallel (and each tensor in parallel chunks) on the global rayon pool.

use qtool_formats::{TensorDType, TensorInfo, TensorSource};
use qtool_quantizers::decode::can_decode;
use qtool_quantizers::stats::tensor_stats;
use rayon::prelude::*;

use crate::output::Output;
use crate::progress::bytes_bar;

pub use qtool_quantizers::stats::TensorStats;

/// Statistics for each selected tensor, in order; `None` for a dtype qtool cannot decode (the
/// tensor is still listed, and a warning names the types on a terminal's stderr).
/// A tensor whose bytes cannot be decoded is an error naming the file and the tensor.
pub fn compute_stats(
    source: &dyn TensorSource,
    selected: &[&TensorInfo],
    out: &Output,
) -> anyhow::Result<Vec<Option<TensorStats>>> {
    let total: u64 = selected.iter().filter(|t| can_decode(t.dtype)).map(|t| t.nbytes).sum();
    let bar = bytes_bar(out, total, "stats");
    let report = |n: u64| bar.inc(n);
    let results: Vec<anyhow::Result<Option<TensorStats>>> = selected
        .par_iter()
        .map(|info| {
            if !can_decode(info.dtype) {
                return Ok(None);
            }
            let tensor = source.get(&info.name).ok_or_else(|| {
                anyhow::anyhow!("tensor '{}' vanished from its source", info.name)
            })?;
            let file = source.files().get(info.file).map(|p| p.display().to_string());
            tensor_stats(tensor, Some(&report))
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.unwrap_or_default()))
        })
        .collect();
    bar.finish_and_clear();
    let stats = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // Non-finite values are counted, never fatal; in text mode one line per tensor says where
    // they are, since a table row is easy to miss in a listing of hundreds.
    if !out.json && !out.quiet {
        for (info, s) in selected.iter().zip(&stats) {
            if let Some(line) = s.as_ref().and_then(|s| nonfinite_warning(info, s)) {
                eprintln!("{line}");
            }
        }
    }

    let mut skipped: Vec<&str> =
        selected.iter().filter(|t| !can_decode(t.dtype)).map(|t| t.dtype.name()).collect();
    skipped.sort_unstable();
    skipped.dedup();
    // A log line like any other: only where progress would show (the rows say "-" anyway).
    if !skipped.is_empty() && out.progress_enabled() {
        eprintln!(
            "warning: no statistics for tensors of type {} (qtool cannot decode them yet)",
            skipped.join(", ")
        );
    }
    Ok(stats)
}

/// The warning for a tensor that decodes to NaN or Inf values, `None` when all are finite. In a
/// block-quantized type every value is a level times the block's fp16 scale (minus a scaled
/// min), so a non-finite value means a corrupt scale.
fn nonfinite_warning(info: &TensorInfo, s: &TensorStats) -> Option<String> {
    if s.nan == 0 && s.inf == 0 {
        return None;
    }
    let cause = match info.dtype {
        TensorDType::Ggml(ty) if ty.is_quantized() => " (a block has a NaN or Inf scale)",
        _ => "",
    };
    Some(format!(
        "warning: tensor '{}' ({}): {} of {} values decode to NaN, {} to Inf{cause}",
        info.name,
        info.dtype.name(),
        s.nan,
        s.count,
        s.inf
    ))
}
