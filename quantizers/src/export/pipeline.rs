//! The streaming quantize pipeline: plan entries go through in windows — a few tensors decoded
//! and quantized in parallel, then written in plan order — so memory stays bounded and the
//! output bytes do not depend on the thread count (each tensor's bytes depend only on that
//! tensor, and the write order is the plan's).
//!
//! Memory: a window holds at most [`WINDOW_BYTES`] of working memory (each layer's f32 copy
//! plus its outputs), or one layer alone when it is larger. A large layer is itself decoded and
//! quantized by all threads (the float schemes split their element and row loops), so running
//! it alone costs no parallelism; small layers share a window. The mapped input pages of every
//! tensor are released once it is decoded or copied. Writing a window overlaps computing the
//! next one (the writer is the only serial stage), so the previous window's outputs are held
//! too. Peak RSS is then about one large layer's f32 copy + outputs + its mapped bf16 bytes +
//! the previous window's outputs: under 2 × (largest tensor in f32) + 256 MB
//! (docs/PERFORMANCE.md).

use std::borrow::Cow;
use std::sync::Mutex;

use qtool_formats::{TensorRef, TensorSink, TensorSource};
use rayon::prelude::*;

use crate::decode;

use super::error::ExportError;
use super::plan::{Action, PlanEntry, QuantizePlan};
use super::{int_layer, layer};

/// Bytes of working memory (f32 copies plus outputs) a window may hold; one tensor larger than
/// this still goes through, alone.
const WINDOW_BYTES: u64 = 256 << 20;

/// Elements each thread decodes at a time.
const DECODE_CHUNK: usize = 1 << 18;

/// Output bytes computed outside this pipeline for some entries — the calibrated GPTQ/AWQ
/// weights (and AWQ's rescaled norms) of `qtool-calib`, which need the whole model's
/// activations and so cannot be produced tensor by tensor here.
pub trait Precomputed: Sync {
    /// The bytes of `entry`'s outputs in the order of `entry.outputs`, or `None` to run the
    /// entry's own action.
    fn parts(&self, entry: &PlanEntry) -> Option<Result<Vec<Vec<u8>>, ExportError>>;
}

/// Writes `plan`'s output tensors into `sink`, calling `progress` with each entry's input bytes
/// once it is written.
pub fn run(
    source: &dyn TensorSource,
    plan: &QuantizePlan,
    sink: &mut dyn TensorSink,
    progress: &mut dyn FnMut(&PlanEntry),
) -> Result<(), ExportError> {
    run_with(source, plan, sink, progress, None)
}

/// [`run`], taking the entries `pre` provides from it.
pub fn run_with<'a>(
    source: &'a dyn TensorSource,
    plan: &'a QuantizePlan,
    sink: &mut dyn TensorSink,
    progress: &mut dyn FnMut(&PlanEntry),
    pre: Option<&'a dyn Precomputed>,
) -> Result<(), ExportError> {
    let max_window = (rayon::current_num_threads() * 2).max(2);
    let largest = plan.entries.iter().map(f32_bytes).max().unwrap_or(0);
    let pool = BufferPool::new(largest.max(WINDOW_BYTES));
    let mut windows = Vec::new();
    let mut start = 0;
    while start < plan.entries.len() {
        let mut end = start;
        let mut held = 0u64;
        while end < plan.entries.len() && end - start < max_window {
            let cost = working_bytes(&plan.entries[end]);
            if end > start && held + cost > WINDOW_BYTES {
                break;
            }
            held += cost;
            end += 1;
        }
        windows.push(&plan.entries[start..end]);
        start = end;
    }
    let compute = |window: &'a [PlanEntry]| -> Vec<Result<Parts<'a>, ExportError>> {
        window.par_iter().map(|e| produce(source, plan, e, pre, &pool)).collect()
    };
    // The writer is the one serial stage: while window `i` is written (on this thread), window
    // `i + 1` is computed on the thread pool, so the cores are not idle during the writes. It
    // costs one window's outputs more memory (docs/PERFORMANCE.md); the bytes and their order
    // are unchanged.
    std::thread::scope(|scope| {
        let Some(first) = windows.first() else { return Ok(()) };
        let mut results = compute(first);
        for (i, window) in windows.iter().enumerate() {
            // A window that failed ends the run at its error: the next is not started.
            let ok = results.iter().all(Result::is_ok);
            let next = windows.get(i + 1).filter(|_| ok).map(|&w| scope.spawn(move || compute(w)));
            write_window(source, window, results, sink, progress)?;
            results = match next {
                Some(handle) => handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                None => break,
            };
        }
        Ok(())
    })
}

/// The output bytes of one entry, in the order of its outputs.
type Parts<'a> = Vec<Cow<'a, [u8]>>;

/// Writes a computed window in plan order; the first entry's error, in plan order, wins.
fn write_window(
    source: &dyn TensorSource,
    window: &[PlanEntry],
    results: Vec<Result<Parts<'_>, ExportError>>,
    sink: &mut dyn TensorSink,
    progress: &mut dyn FnMut(&PlanEntry),
) -> Result<(), ExportError> {
    for (entry, result) in window.iter().zip(results) {
        let parts = result?;
        for (out, bytes) in entry.outputs.iter().zip(&parts) {
            if bytes.len() as u64 != out.nbytes {
                return Err(ExportError::PartSize {
                    tensor: entry.name.clone(),
                    part: out.name.clone(),
                    got: bytes.len(),
                    expected: out.nbytes,
                });
            }
            sink.write(&out.name, bytes)?;
        }
        if let (Action::Copy, Some(i)) = (&entry.action, entry.input) {
            source.release(&source.tensors()[i]);
        }
        progress(entry);
    }
    Ok(())
}

/// Memory an entry needs while in flight: nothing for a copy (it is written from the mapping).
fn working_bytes(e: &PlanEntry) -> u64 {
    match &e.action {
        Action::Quantize(_) => f32_bytes(e) + e.bytes_out(),
        _ => 0,
    }
}

/// Bytes of an entry's decoded f32 copy.
fn f32_bytes(e: &PlanEntry) -> u64 {
    match &e.action {
        Action::Quantize(l) => (l.rows as u64 * l.cols as u64) * 4,
        _ => 0,
    }
}

/// Decoded-f32 buffers kept between layers. A fresh multi-hundred-MB allocation is new pages
/// the kernel must fault in and zero (as much system time as the quantization itself); a kept
/// buffer is already resident. Idle buffers are dropped before an allocation would push the
/// kept plus new bytes past `cap` (the largest layer's f32 size, at least a window), so memory
/// stays within the bound the module doc states.
struct BufferPool {
    idle: Mutex<Vec<Vec<f32>>>,
    cap: u64,
}

impl BufferPool {
    fn new(cap: u64) -> Self {
        BufferPool { idle: Mutex::new(Vec::new()), cap }
    }

    /// A buffer of exactly `n` elements (contents unspecified: the caller overwrites them).
    fn take(&self, n: usize) -> Vec<f32> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let fit = idle
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= n)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        if let Some(i) = fit {
            let mut v = idle.swap_remove(i);
            v.resize(n, 0.0);
            return v;
        }
        let bytes = |vs: &Vec<Vec<f32>>| vs.iter().map(|v| v.capacity() as u64 * 4).sum::<u64>();
        while !idle.is_empty() && bytes(&idle) + n as u64 * 4 > self.cap {
            let largest = (0..idle.len()).max_by_key(|&i| idle[i].capacity()).unwrap_or(0);
            idle.swap_remove(largest);
        }
        drop(idle);
        vec![0f32; n]
    }

    fn give(&self, v: Vec<f32>) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
}

fn produce<'a>(
    source: &'a dyn TensorSource,
    plan: &QuantizePlan,
    e: &'a PlanEntry,
    pre: Option<&dyn Precomputed>,
    pool: &BufferPool,
) -> Result<Vec<Cow<'a, [u8]>>, ExportError> {
    if let Some(parts) = pre.and_then(|p| p.parts(e)) {
        return Ok(parts?.into_iter().map(Cow::Owned).collect());
    }
    match (&e.action, e.input) {
        (Action::Marker(bytes), _) => Ok(vec![Cow::Borrowed(bytes.as_slice())]),
        (Action::Copy, Some(i)) => {
            let info = &source.tensors()[i];
            Ok(vec![Cow::Borrowed(source.data(info))])
        }
        (Action::Quantize(l), Some(i)) => {
            let info = &source.tensors()[i];
            let path = || source.files()[info.file].clone();
            let tensor = TensorRef { info, data: source.data(info) };
            let w = decode_parallel(tensor, pool)
                .map_err(|source| ExportError::Decode { path: path(), source })?;
            source.release(info);
            let parts = match &plan.int {
                Some(s) => int_layer::encode(plan.layout, s, l, &w).map_err(|source| {
                    ExportError::QuantizeInt { path: path(), tensor: info.name.clone(), source }
                })?,
                None => layer::encode(plan.fmt, plan.layout, l, &w, plan.allow_nonfinite).map_err(
                    |source| ExportError::Quantize {
                        path: path(),
                        tensor: info.name.clone(),
                        source,
                    },
                )?,
            };
            pool.give(w);
            Ok(parts.into_iter().map(Cow::Owned).collect())
        }
        (_, None) => Err(ExportError::PartSize {
            tensor: e.name.clone(),
            part: e.name.clone(),
            got: 0,
            expected: e.bytes_out(),
        }),
    }
}

/// [`decode::decode_all`] with the chunks spread over the thread pool (each chunk is decoded
/// independently, so the values are the same).
fn decode_parallel(
    tensor: TensorRef<'_>,
    pool: &BufferPool,
) -> Result<Vec<f32>, decode::DecodeError> {
    // `validate` ties the element count to the mapped byte length, so the allocation is bounded
    // by the data actually there.
    let numel = decode::validate(&tensor)? as usize;
    let chunk = decode::chunk_len(tensor.info.dtype, DECODE_CHUNK);
    let mut out = pool.take(numel);
    out.par_chunks_mut(chunk)
        .enumerate()
        .try_for_each(|(i, c)| decode::decode_into(tensor, (i * chunk) as u64, c))?;
    Ok(out)
}
