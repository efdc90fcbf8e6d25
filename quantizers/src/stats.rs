//! Per-tensor statistics (min, max, absmax, mean, std, NaN and Inf counts), computed in parallel
//! over decoded chunks.
//!
//! # Determinism
//! The tensor is cut into fixed chunks of [`STATS_CHUNK`] elements (whole blocks, see
//! [`crate::decode::chunk_len`]) whatever the thread count; rayon decodes and summarises chunks
//! in any order, and the per-chunk summaries are then merged sequentially in chunk order. The
//! result is therefore bit-identical for 1 or 64 threads.
//!
//! # Accuracy
//! Each chunk is summarised with two passes in `f64`: the chunk mean (`Σx / n`), then
//! `M2 = Σ(x − mean)²` around it. Chunks are merged with Chan et al.'s pairwise update
//! (`δ = mean_b − mean_a`, `M2 = M2_a + M2_b + δ²·n_a·n_b/n`). Unlike the one-pass
//! `Σx² − n·mean²` this does not cancel catastrophically when |mean| ≫ std, so mean and std carry
//! close to `f64` precision relative to the data's magnitude (far below the `f32` rounding of the
//! inputs themselves). `std` is the population standard deviation, `sqrt(M2 / n)` (numpy's
//! default, `ddof = 0`).
//!
//! # Non-finite values
//! NaN and ±Inf elements are counted in `nan` / `inf` and left out of min, max, absmax, mean and
//! std, which describe the finite elements only (numpy's `nanmin` etc. over the finite subset).
//! `count` is every element, finite or not. When there is no finite element (an empty tensor,
//! or one that is all NaN/Inf) those five fields are `None` (JSON `null`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode::{self, DecodeError};
use qtool_formats::TensorRef;

/// Elements per parallel work item: large enough to amortise scheduling, small enough that one
/// buffer per thread (4 MiB) stays cheap.
pub const STATS_CHUNK: usize = 1 << 20;

/// Independent accumulators per chunk (see [`Partial::of`]).
const LANES: usize = 8;

/// Summary statistics of one tensor's decoded values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    /// All elements, NaN and Inf included.
    pub count: u64,
    /// Smallest finite value (an `f32` widened exactly).
    pub min: Option<f64>,
    /// Largest finite value.
    pub max: Option<f64>,
    /// Largest finite magnitude.
    pub absmax: Option<f64>,
    /// Mean of the finite values.
    pub mean: Option<f64>,
    /// Population standard deviation of the finite values.
    pub std: Option<f64>,
    pub nan: u64,
    /// Count of +Inf and −Inf together.
    pub inf: u64,
}

/// A progress hook: called from worker threads with the number of the tensor's data bytes just
/// processed (a delta, so several tensors can drive one bar: `|n| bar.inc(n)`).
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// The summary of one chunk, or of a prefix of chunks after merging.
#[derive(Clone, Copy, Debug)]
struct Partial {
    finite: u64,
    nan: u64,
    inf: u64,
    min: f32,
    max: f32,
    mean: f64,
    m2: f64,
}

impl Partial {
    const EMPTY: Partial = Partial {
        finite: 0,
        nan: 0,
        inf: 0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        mean: 0.0,
        m2: 0.0,
    };

    /// Two passes over a chunk that is already in cache. Eight independent lanes break the
    /// dependency chain of one running sum (so the loop vectorises); lanes are combined in a
    /// fixed order, so the result still depends only on the values.
    fn of(values: &[f32]) -> Partial {
        let mut sum = [0f64; LANES];
        let mut finite = [0u64; LANES];
        let mut lo = [f32::INFINITY; LANES];
        let mut hi = [f32::NEG_INFINITY; LANES];
        let mut first_pass = |l: usize, x: f32| {
            // `abs < inf` is false for ±inf and NaN; written as a comparison so it vectorises.
            let ok = x.abs() < f32::INFINITY;
            sum[l] += f64::from(if ok { x } else { 0.0 });
            finite[l] += u64::from(ok);
            let (a, b) = if ok { (x, x) } else { (f32::INFINITY, f32::NEG_INFINITY) };
            lo[l] = if a < lo[l] { a } else { lo[l] };
            hi[l] = if b > hi[l] { b } else { hi[l] };
        };
        let chunks = values.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            let c: &[f32; LANES] = c.try_into().expect("chunks_exact yields LANES values");
            for (l, &x) in c.iter().enumerate() {
                first_pass(l, x);
            }
        }
        for (l, &x) in tail.iter().enumerate() {
            first_pass(l, x);
        }
        let mut p = Partial::EMPTY;
        let mut total = 0f64;
        for l in 0..LANES {
            p.finite += finite[l];
            total += sum[l];
            p.min = p.min.min(lo[l]);
            p.max = p.max.max(hi[l]);
        }
        if p.finite < values.len() as u64 {
            // Rare in real weights, so NaN and Inf are told apart only when there are some.
            p.nan = values.iter().filter(|x| x.is_nan()).count() as u64;
            p.inf = values.len() as u64 - p.finite - p.nan;
        }
        if p.finite == 0 {
            return p;
        }
        p.mean = total / p.finite as f64;

        let mean = p.mean;
        let mut m2 = [0f64; LANES];
        let mut second_pass = |l: usize, x: f32| {
            let d = if x.abs() < f32::INFINITY { f64::from(x) - mean } else { 0.0 };
            m2[l] += d * d;
        };
        for c in values.chunks_exact(LANES) {
            let c: &[f32; LANES] = c.try_into().expect("chunks_exact yields LANES values");
            for (l, &x) in c.iter().enumerate() {
                second_pass(l, x);
            }
        }
        for (l, &x) in tail.iter().enumerate() {
            second_pass(l, x);
        }
        p.m2 = m2.iter().sum();
        p
    }

    /// Chan et al.'s parallel update; `self` holds the earlier elements.
    fn merge(self, b: Partial) -> Partial {
        let mut out = Partial {
            finite: self.finite + b.finite,
            nan: self.nan + b.nan,
            inf: self.inf + b.inf,
            min: self.min.min(b.min),
            max: self.max.max(b.max),
            mean: self.mean,
            m2: self.m2,
        };
        if b.finite == 0 {
            return out;
        }
        if self.finite == 0 {
            out.mean = b.mean;
            out.m2 = b.m2;
            return out;
        }
        let (na, nb, n) = (self.finite as f64, b.finite as f64, out.finite as f64);
        let delta = b.mean - self.mean;
        out.mean = self.mean + delta * (nb / n);
        out.m2 = self.m2 + b.m2 + delta * delta * (na * nb / n);
        out
    }

    fn finish(self, count: u64) -> TensorStats {
        let some = |v: f64| (self.finite > 0).then_some(v);
        TensorStats {
            count,
            min: some(f64::from(self.min)),
            max: some(f64::from(self.max)),
            absmax: some(f64::from(self.min.abs().max(self.max.abs()))),
            mean: some(self.mean),
            std: some((self.m2 / self.finite as f64).sqrt()),
            nan: self.nan,
            inf: self.inf,
        }
    }
}

/// Statistics of any tensor qtool can decode, in parallel on the current rayon pool, chunks of
/// [`STATS_CHUNK`] elements. Memory: one chunk buffer per worker.
pub fn tensor_stats(
    tensor: TensorRef<'_>,
    progress: Option<Progress<'_>>,
) -> Result<TensorStats, DecodeError> {
    tensor_stats_chunked(tensor, STATS_CHUNK, progress)
}

/// [`tensor_stats`] with another chunk length (rounded down to whole blocks). The result is
/// independent of the thread count, but mean and std may differ in the last bits between chunk
/// lengths, since the summation order changes.
pub fn tensor_stats_chunked(
    tensor: TensorRef<'_>,
    chunk_elems: usize,
    progress: Option<Progress<'_>>,
) -> Result<TensorStats, DecodeError> {
    let numel = decode::validate(&tensor)?;
    let chunk = decode::chunk_len(tensor.info.dtype, chunk_elems) as u64;
    let (g_elems, g_bytes) = decode::granule(tensor.info.dtype);
    let n_chunks = numel.div_ceil(chunk);
    let partials = (0..n_chunks)
        .into_par_iter()
        .map_init(Vec::<f32>::new, |buf, i| {
            let start = i * chunk;
            let len = (numel - start).min(chunk) as usize;
            buf.resize(len, 0.0);
            decode::decode_into(tensor, start, buf)?;
            let p = Partial::of(buf);
            if let Some(report) = progress {
                report(len as u64 / g_elems * g_bytes);
            }
            Ok(p)
        })
        .collect::<Result<Vec<Partial>, DecodeError>>()?;
    let total = partials.into_iter().fold(Partial::EMPTY, Partial::merge);
    Ok(total.finish(numel))
}

/// Statistics of values already in memory, with the same chunking and merge order as
/// [`tensor_stats`] (so the same values give the same bits either way).
pub fn slice_stats(values: &[f32]) -> TensorStats {
    let partials: Vec<Partial> = values.par_chunks(STATS_CHUNK).map(Partial::of).collect();
    partials.into_iter().fold(Partial::EMPTY, Partial::merge).finish(values.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtool_formats::{DType, GgmlType, TensorDType, TensorInfo};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn f32_tensor(name: &str, values: &[f32]) -> (TensorInfo, Vec<u8>) {
        let data: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let info = TensorInfo {
            name: name.into(),
            dtype: TensorDType::St(DType::F32),
            shape: vec![values.len() as u64],
            file: 0,
            offset: 0,
            nbytes: data.len() as u64,
        };
        (info, data)
    }

    fn stats_of(values: &[f32], chunk: usize) -> TensorStats {
        let (info, data) = f32_tensor("t", values);
        tensor_stats_chunked(TensorRef { info: &info, data: &data }, chunk, None).unwrap()
    }

    #[test]
    fn known_values() {
        let s = stats_of(&[1.0, 2.0, 3.0, 4.0, -6.0], STATS_CHUNK);
        assert_eq!(s.count, 5);
        assert_eq!((s.min, s.max, s.absmax), (Some(-6.0), Some(4.0), Some(6.0)));
        assert_eq!(s.mean, Some(0.8));
        // population variance: Σ(x − 0.8)² / 5 = 62.8 / 5
        assert!((s.std.unwrap() - (62.8f64 / 5.0).sqrt()).abs() < 1e-15);
        assert_eq!((s.nan, s.inf), (0, 0));
    }

    #[test]
    fn chunked_merge_agrees_with_a_single_pass() {
        // Across chunk boundaries (chunk 7 over 100 values, uneven tail), a large offset to
        // exercise cancellation: std of 1e6 + k for k in 0..100 is sqrt((100² − 1)/12).
        let values: Vec<f32> = (0..100).map(|k| 1e6 + k as f32).collect();
        for chunk in [1, 7, 64, 100, 1000] {
            let s = stats_of(&values, chunk);
            assert!((s.mean.unwrap() - (1e6 + 49.5)).abs() < 1e-9, "chunk {chunk}: {:?}", s.mean);
            let want = ((100.0f64 * 100.0 - 1.0) / 12.0).sqrt();
            assert!((s.std.unwrap() - want).abs() < 1e-9 * want, "chunk {chunk}: {:?}", s.std);
        }
    }

    #[test]
    fn lanes_agree_with_a_naive_sequential_reference() {
        // Every length 0..40 exercises each tail size; plant non-finite values at varying lanes.
        for n in 0..40usize {
            let mut v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 - 11.25).collect();
            if n > 5 {
                v[n / 3] = f32::NAN;
                v[n - 2] = f32::NEG_INFINITY;
            }
            let finite: Vec<f64> =
                v.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x)).collect();
            let s = slice_stats(&v);
            assert_eq!(s.count, n as u64);
            assert_eq!(s.nan + s.inf, (n - finite.len()) as u64);
            if finite.is_empty() {
                assert_eq!(s.mean, None);
                continue;
            }
            let mean = finite.iter().sum::<f64>() / finite.len() as f64;
            let var =
                finite.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / finite.len() as f64;
            assert!((s.mean.unwrap() - mean).abs() < 1e-12, "n={n}");
            assert!((s.std.unwrap() - var.sqrt()).abs() < 1e-12, "n={n}");
            assert_eq!(s.min, finite.iter().copied().reduce(f64::min));
            assert_eq!(s.max, finite.iter().copied().reduce(f64::max));
        }
    }

    #[test]
    fn nan_and_inf_are_counted_and_excluded() {
        let s = stats_of(&[f32::NAN, 1.0, f32::INFINITY, -3.0, f32::NEG_INFINITY, -f32::NAN], 2);
        assert_eq!((s.count, s.nan, s.inf), (6, 2, 2));
        assert_eq!(
            (s.min, s.max, s.absmax, s.mean),
            (Some(-3.0), Some(1.0), Some(3.0), Some(-1.0))
        );
        assert_eq!(s.std, Some(2.0));
    }

    #[test]
    fn all_non_finite_and_empty_have_no_moments() {
        let s = stats_of(&[f32::NAN, f32::INFINITY], STATS_CHUNK);
        assert_eq!((s.count, s.nan, s.inf), (2, 1, 1));
        assert_eq!((s.min, s.max, s.absmax, s.mean, s.std), (None, None, None, None, None));
        let s = stats_of(&[], STATS_CHUNK);
        assert_eq!(
            s,
            TensorStats {
                count: 0,
                min: None,
                max: None,
                absmax: None,
                mean: None,
                std: None,
                nan: 0,
                inf: 0
            }
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"count":0,"min":null,"max":null,"absmax":null,"mean":null,"std":null,"nan":0,"inf":0}"#
        );
    }

    #[test]
    fn identical_bits_for_any_thread_count() {
        // Pseudo-random values with a wide dynamic range, 50 chunks.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let values: Vec<f32> = (0..50_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    * 10f32.powi((state % 7) as i32 - 3)
            })
            .collect();
        let (info, data) = f32_tensor("t", &values);
        let t = TensorRef { info: &info, data: &data };
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| tensor_stats_chunked(t, 1000, None).unwrap())
        };
        let one = run(1);
        let bits =
            |s: &TensorStats| (s.mean.unwrap().to_bits(), s.std.unwrap().to_bits(), s.min, s.max);
        for threads in [2, 4, 7] {
            let other = run(threads);
            assert_eq!(bits(&one), bits(&other), "{threads} threads");
            assert_eq!(one, other);
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let in_memory = pool.install(|| slice_stats(&values));
        assert_eq!(in_memory, tensor_stats(t, None).unwrap());
    }

    #[test]
    fn progress_reports_every_byte_once() {
        let values: Vec<f32> = (0..10_001).map(|i| i as f32).collect();
        let (info, data) = f32_tensor("t", &values);
        let done = AtomicU64::new(0);
        let calls = AtomicU64::new(0);
        let hook = |n: u64| {
            done.fetch_add(n, Ordering::Relaxed);
            calls.fetch_add(1, Ordering::Relaxed);
        };
        tensor_stats_chunked(TensorRef { info: &info, data: &data }, 1000, Some(&hook)).unwrap();
        assert_eq!(done.into_inner(), data.len() as u64);
        assert_eq!(calls.into_inner(), 11);
    }

    #[test]
    fn block_tensor_progress_counts_block_bytes() {
        // Two Q8_0 blocks (34 bytes each), scale 1.0 (f16 0x3C00), quants -16..16 and 0.
        let mut data = Vec::new();
        data.extend_from_slice(&0x3C00u16.to_le_bytes());
        data.extend((0..32).map(|i| (i - 16) as i8 as u8));
        data.extend_from_slice(&0x3C00u16.to_le_bytes());
        data.extend([0u8; 32]);
        let info = TensorInfo {
            name: "q".into(),
            dtype: TensorDType::Ggml(GgmlType::Q8_0),
            shape: vec![32, 2],
            file: 0,
            offset: 0,
            nbytes: 68,
        };
        let done = AtomicU64::new(0);
        let hook = |n: u64| {
            done.fetch_add(n, Ordering::Relaxed);
        };
        let s =
            tensor_stats_chunked(TensorRef { info: &info, data: &data }, 32, Some(&hook)).unwrap();
        assert_eq!(done.into_inner(), 68);
        assert_eq!((s.count, s.min, s.max, s.absmax), (64, Some(-16.0), Some(15.0), Some(16.0)));
        assert_eq!(s.mean, Some(-0.5 / 2.0));
    }

    /// Throughput of decode + statistics per dtype; run with
    /// `cargo test --release -p qtool-quantizers --lib stats::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn throughput() {
        const N: usize = 1 << 26;
        for d in [DType::F32, DType::BF16, DType::F16, DType::F8E4M3] {
            let nbytes = d.byte_len(N as u64).unwrap() as usize;
            let data: Vec<u8> =
                (0..nbytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x3F).collect();
            let info = TensorInfo {
                name: "bench".into(),
                dtype: TensorDType::St(d),
                shape: vec![N as u64],
                file: 0,
                offset: 0,
                nbytes: nbytes as u64,
            };
            let t = TensorRef { info: &info, data: &data };
            let start = std::time::Instant::now();
            let s = tensor_stats(t, None).unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{d}: {N} elements in {:.3} s = {:.2} Gelem/s, {:.2} GB/s ({} threads), mean {:?}",
                secs,
                N as f64 / secs / 1e9,
                nbytes as f64 / secs / 1e9,
                rayon::current_num_threads(),
                s.mean
            );
        }
    }

    #[test]
    fn undecodable_tensor_is_an_error() {
        let info = TensorInfo {
            name: "c".into(),
            dtype: TensorDType::St(DType::C64),
            shape: vec![1],
            file: 0,
            offset: 0,
            nbytes: 8,
        };
        let err = tensor_stats(TensorRef { info: &info, data: &[0; 8] }, None).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported { .. }));
    }
}
