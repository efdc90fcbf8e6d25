//! The diff itself: decode both sides into logical tensors, pair them, and compute every pair's
//! metrics in parallel, chunk by chunk.
//!
//! # Memory and parallelism
//! Work items are fixed ranges of [`DIFF_CHUNK`] elements (rounded to whole units of both
//! sides' decoders) across all compared tensors; rayon runs them on every core, each worker
//! holding two `f32` buffers of one chunk. Nothing proportional to a tensor or to the model is
//! allocated beyond the per-chunk sums (a few words per chunk) and small per-tensor scale
//! vectors, so peak memory is O(threads × chunk), below the O(largest tensor) the design allows.
//!
//! # Determinism
//! Chunk boundaries depend only on shapes and dtypes; partial sums are combined per tensor in
//! chunk order ([`super::metrics`]), so the report is identical for any thread count.

use rayon::prelude::*;
use regex::Regex;

use super::error::{DiffError, Side};
use super::matching::{qk_row_map, Input, Matcher, Pairing, RowPermuted};
use super::metrics::Partial;
use super::position::{model_order, Position};
use super::registry::{Dequantize, LogicalTensor, Registry};
use super::report::{summarize, DiffReport, DiffRow, RowStatus, SCHEMA_VERSION};
use crate::stats::Progress;

/// Elements per work item (1 MiB of `f32` per buffer).
pub const DIFF_CHUNK: u64 = 1 << 18;

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Only tensors whose REF or CAND name matches (searched anywhere in the name).
    pub filter: Option<Regex>,
}

/// A compared pair, ready to run.
#[derive(Debug)]
struct Job<'a> {
    row: usize,
    reference: Box<dyn Dequantize + 'a>,
    candidate: Box<dyn Dequantize + 'a>,
    numel: u64,
    chunk: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A chunk length that is a whole number of both granules, near [`DIFF_CHUNK`].
fn chunk_for(a: u64, b: u64) -> u64 {
    let (a, b) = (a.max(1), b.max(1));
    let unit = (a / gcd(a, b)).saturating_mul(b);
    (DIFF_CHUNK / unit).max(1).saturating_mul(unit)
}

fn take_decoder<'a>(t: &mut LogicalTensor<'a>) -> Result<Box<dyn Dequantize + 'a>, String> {
    std::mem::replace(&mut t.decoder, Err(String::new()))
}

fn base_row(t: &LogicalTensor<'_>, status: RowStatus) -> DiffRow {
    let pos = Position::of(&t.name);
    DiffRow {
        name: t.name.clone(),
        cand_name: None,
        status,
        block: pos.block,
        role: pos.role,
        shape: t.shape.clone(),
        numel: t.numel(),
        ref_scheme: None,
        scheme: None,
        ref_bytes: None,
        cand_bytes: None,
        bits_per_weight: None,
        ref_bits_per_weight: None,
        qk_permuted: false,
        metrics: None,
        reason: None,
    }
}

/// Compares CAND against REF: [`plan`] then [`DiffPlan::run`]. `progress` receives element
/// counts as chunks finish (they add up to [`DiffPlan::total_elements`]).
pub fn diff(
    reference: &Input<'_>,
    candidate: &Input<'_>,
    registry: &Registry,
    options: &DiffOptions,
    progress: Option<Progress<'_>>,
) -> Result<DiffReport, DiffError> {
    plan(reference, candidate, registry, options)?.run(progress)
}

/// Everything decided before any tensor data is read: the pairs, their rows, the decoders.
/// Errors about names, shapes, layouts and permutations surface here, in milliseconds.
pub struct DiffPlan<'a> {
    rows: Vec<DiffRow>,
    jobs: Vec<Job<'a>>,
    ref_markers: Vec<String>,
    cand_markers: Vec<String>,
}

impl std::fmt::Debug for DiffPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffPlan")
            .field("rows", &self.rows.len())
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

/// Position of each logical tensor in model order.
fn model_ranks(tensors: &[LogicalTensor<'_>]) -> Vec<usize> {
    let names: Vec<(&str, usize)> = tensors.iter().map(|t| (t.name.as_str(), t.index)).collect();
    let mut rank = vec![0usize; tensors.len()];
    for (k, i) in model_order(&names).into_iter().enumerate() {
        rank[i] = k;
    }
    rank
}

/// Decodes both sides' names and layouts, pairs them and checks shapes. Reads headers and the
/// few bytes of scalar scales and `comfy_quant` markers, no weight data.
pub fn plan<'a>(
    reference: &Input<'a>,
    candidate: &Input<'a>,
    registry: &Registry,
    options: &DiffOptions,
) -> Result<DiffPlan<'a>, DiffError> {
    let rdec = registry.decode(reference, Side::Ref)?;
    let cdec = registry.decode(candidate, Side::Cand)?;
    let (mut rt, mut ct) = (rdec.tensors, cdec.tensors);
    let matcher = Matcher::new(reference.source.format(), candidate.source.format());
    let pairs = matcher.pair(&rt, &ct);

    // Model order: REF's tensors by their own positions, CAND-only tensors after, by theirs.
    let (ref_order, cand_rank) = (model_ranks(&rt), model_ranks(&ct));
    let mut pairs = pairs;
    pairs.sort_by_key(|p| match *p {
        Pairing::Both { reference, .. } | Pairing::OnlyRef(reference) => (0, ref_order[reference]),
        Pairing::OnlyCand(c) => (1, cand_rank[c]),
    });

    let keep = |names: &[&str]| match &options.filter {
        None => true,
        Some(re) => names.iter().any(|n| re.is_match(n)),
    };

    let mut rows = Vec::new();
    let mut jobs = Vec::new();
    for p in pairs {
        match p {
            Pairing::OnlyRef(i) => {
                let t = &rt[i];
                if !keep(&[&t.name]) {
                    continue;
                }
                let mut row = base_row(t, RowStatus::OnlyRef);
                row.ref_scheme = Some(t.scheme.clone());
                row.ref_bytes = Some(t.stored_bytes());
                row.ref_bits_per_weight = t.bits_per_weight();
                rows.push(row);
            }
            Pairing::OnlyCand(i) => {
                let t = &ct[i];
                if !keep(&[&t.name]) {
                    continue;
                }
                let mut row = base_row(t, RowStatus::OnlyCand);
                row.cand_name = Some(t.name.clone());
                row.scheme = Some(t.scheme.clone());
                row.cand_bytes = Some(t.stored_bytes());
                row.bits_per_weight = t.bits_per_weight();
                rows.push(row);
            }
            Pairing::Both { reference: ri, candidate: ci, .. } => {
                let (r, c) = (&mut rt[ri], &mut ct[ci]);
                if !keep(&[&r.name, &c.name]) {
                    continue;
                }
                let both_decodable = r.decoder.is_ok() && c.decoder.is_ok();
                if both_decodable && r.shape != c.shape {
                    return Err(DiffError::ShapeMismatch {
                        ref_name: r.name.clone(),
                        ref_shape: r.shape.clone(),
                        cand_name: c.name.clone(),
                        cand_shape: c.shape.clone(),
                    });
                }
                let mut row = base_row(r, RowStatus::Compared);
                if c.name != r.name {
                    row.cand_name = Some(c.name.clone());
                }
                row.ref_scheme = Some(r.scheme.clone());
                row.scheme = Some(c.scheme.clone());
                row.ref_bytes = Some(r.stored_bytes());
                row.cand_bytes = Some(c.stored_bytes());
                row.bits_per_weight = c.bits_per_weight();
                row.ref_bits_per_weight = r.bits_per_weight();
                let (rdq, cdq) = (take_decoder(r), take_decoder(c));
                match (rdq, cdq) {
                    (Ok(rdq), Ok(cdq)) => {
                        let map = qk_row_map(reference, candidate, &r.name, &c.name, &r.shape)?;
                        let cdq: Box<dyn Dequantize + '_> = match map {
                            Some(m) => {
                                row.qk_permuted = true;
                                Box::new(RowPermuted::new(cdq, m, Side::Cand, &c.name)?)
                            }
                            None => cdq,
                        };
                        let chunk = chunk_for(rdq.granule(), cdq.granule());
                        jobs.push(Job {
                            row: rows.len(),
                            reference: rdq,
                            candidate: cdq,
                            numel: r.numel(),
                            chunk,
                        });
                    }
                    (rres, cres) => {
                        row.status = RowStatus::NotCompared;
                        let mut why = Vec::new();
                        if let Err(e) = rres {
                            why.push(format!("REF: {e}"));
                        }
                        if let Err(e) = cres {
                            why.push(format!("CAND: {e}"));
                        }
                        row.reason = Some(why.join("; "));
                    }
                }
                rows.push(row);
            }
        }
    }

    Ok(DiffPlan { rows, jobs, ref_markers: rdec.markers, cand_markers: cdec.markers })
}

impl DiffPlan<'_> {
    /// Elements that [`DiffPlan::run`] will compare (the progress total).
    pub fn total_elements(&self) -> u64 {
        self.jobs.iter().map(|j| j.numel).sum()
    }

    /// The rows as planned, before metrics.
    pub fn rows(&self) -> &[DiffRow] {
        &self.rows
    }

    /// Decodes and compares every pair, in parallel, and builds the report.
    pub fn run(self, progress: Option<Progress<'_>>) -> Result<DiffReport, DiffError> {
        let DiffPlan { mut rows, jobs, ref_markers, cand_markers } = self;
        run_jobs(&mut rows, &jobs, progress)?;
        let summary = summarize(&rows);
        Ok(DiffReport { schema_version: SCHEMA_VERSION, rows, summary, ref_markers, cand_markers })
    }
}

fn run_jobs(
    rows: &mut [DiffRow],
    jobs: &[Job<'_>],
    progress: Option<Progress<'_>>,
) -> Result<(), DiffError> {
    // Flatten into chunk work items: (job, start, len).
    let items: Vec<(usize, u64, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| {
            let (n, c) = (job.numel, job.chunk);
            let count = if n == 0 { 1 } else { n.div_ceil(c) };
            (0..count).map(move |k| (j, k * c, (n - k * c).min(c) as usize))
        })
        .collect();
    let partials: Vec<Partial> = items
        .par_iter()
        .map_init(
            || (Vec::<f32>::new(), Vec::<f32>::new()),
            |(wb, qb), &(j, start, len)| {
                let job = &jobs[j];
                wb.resize(len, 0.0);
                qb.resize(len, 0.0);
                if len > 0 {
                    job.reference.decode(start, wb)?;
                    job.candidate.decode(start, qb)?;
                }
                let p = Partial::of(wb, qb);
                if let Some(cb) = progress {
                    cb(len as u64);
                }
                Ok(p)
            },
        )
        .collect::<Result<_, DiffError>>()?;

    // Combine in chunk order per job.
    let mut acc: Vec<Option<Partial>> = vec![None; jobs.len()];
    for (&(j, _, _), p) in items.iter().zip(partials) {
        acc[j] = Some(match acc[j] {
            None => p,
            Some(prev) => prev.merge(p),
        });
    }
    for (job, p) in jobs.iter().zip(acc) {
        rows[job.row].metrics = Some(p.unwrap_or_default().finish());
    }
    Ok(())
}
