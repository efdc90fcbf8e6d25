//! Timing GPU work with CUDA events: warm-up runs, then `reps` individually timed runs; the
//! median is reported because a single preempted or clock-ramping run skews a mean.

use cudarc::driver::sys::CUevent_flags;

use crate::error::KResult;
use crate::gpu::Gpu;

/// Warm-up runs before timing: the first launch pays for module loading, cuBLAS heuristics
/// and clock ramp-up.
pub const WARMUP: usize = 3;

/// Runs `f` [`WARMUP`] times, then `reps` times between CUDA events on `gpu`'s stream, and
/// returns the median time of one run in microseconds. `reps == 0` runs `f` once untimed and
/// returns 0.0 (callers that only want the result).
pub fn median_micros(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> KResult<()>) -> KResult<f64> {
    if reps == 0 {
        f()?;
        gpu.synchronize()?;
        return Ok(0.0);
    }
    for _ in 0..WARMUP {
        f()?;
    }
    let mut events = Vec::with_capacity(reps + 1);
    for _ in 0..=reps {
        events.push(gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?);
    }
    events[0].record(gpu.stream())?;
    for e in &events[1..] {
        f()?;
        e.record(gpu.stream())?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for pair in events.windows(2) {
        times.push(pair[0].elapsed_ms(&pair[1])? as f64 * 1000.0);
    }
    Ok(median(&mut times))
}

/// Median of a non-empty list (mean of the two middle values for even lengths).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// TFLOP/s of a GEMM `m × n × k` that took `micros`.
pub fn tflops(m: usize, n: usize, k: usize, micros: f64) -> f64 {
    if micros <= 0.0 {
        return 0.0;
    }
    2.0 * m as f64 * n as f64 * k as f64 / (micros * 1e-6) / 1e12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn tflops_of_8192_cubed_in_1ms() {
        let t = tflops(8192, 8192, 8192, 1000.0);
        assert!((t - 1099.511627776).abs() < 1e-6, "{t}");
    }
}
