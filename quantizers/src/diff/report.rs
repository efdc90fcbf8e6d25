//! The result of a diff: one row per tensor in model order and a summary, serde-serializable for
//! `qtool diff --json` (non-finite numbers as the strings `"inf"`, `"-inf"`, `"nan"`).

use serde::{Deserialize, Serialize};

use super::metrics::{nonfinite, Metrics};

/// Version of the JSON document; bump when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// What happened to a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Present on both sides and compared.
    Compared,
    /// Only in REF.
    OnlyRef,
    /// Only in CAND.
    OnlyCand,
    /// Present on both sides, but one could not be decoded (`reason` says why).
    NotCompared,
}

/// One tensor (pair).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffRow {
    /// The REF name (the CAND name for `only_cand` rows).
    pub name: String,
    /// The CAND name when it differs from `name` or the row is `only_cand`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cand_name: Option<String>,
    pub status: RowStatus,
    /// Block (layer) index and role, for grouping and the plot.
    pub block: Option<u64>,
    pub role: String,
    /// Row-major logical shape.
    pub shape: Vec<u64>,
    pub numel: u64,
    /// What wrote each side: a dtype (`BF16`, `Q4_K`) or a scheme (`fp8_e4m3fn_scaled/comfy`).
    pub ref_scheme: Option<String>,
    pub scheme: Option<String>,
    /// Bytes of every part that encodes the weight (data, scales, zero points).
    pub ref_bytes: Option<u64>,
    pub cand_bytes: Option<u64>,
    /// CAND bits per weight actually stored (`cand_bytes · 8 / numel`).
    #[serde(with = "nonfinite::option")]
    pub bits_per_weight: Option<f64>,
    #[serde(with = "nonfinite::option")]
    pub ref_bits_per_weight: Option<f64>,
    /// Whether CAND's q/k rows were reordered to meet REF's (GGUF ↔ HF).
    pub qk_permuted: bool,
    #[serde(flatten)]
    pub metrics: Option<Metrics>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl DiffRow {
    /// SQNR of a compared row.
    pub fn sqnr_db(&self) -> Option<f64> {
        self.metrics.map(|m| m.sqnr_db)
    }
}

/// Totals over the compared tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffSummary {
    pub compared: usize,
    /// Compared tensors with `Σ(W−Q)² = 0` (infinite SQNR).
    pub identical: usize,
    /// Compared tensors whose metrics are NaN (NaN or inf in the data).
    pub nan: usize,
    pub only_ref: usize,
    pub only_cand: usize,
    pub not_compared: usize,
    /// Elements of the compared tensors.
    pub params: u64,
    /// Mean SQNR in dB over compared tensors with a finite SQNR (`null` if none).
    #[serde(with = "nonfinite::option")]
    pub mean_sqnr_db: Option<f64>,
    /// Lowest SQNR (NaN rows excluded; `"inf"` when every compared tensor is identical).
    #[serde(with = "nonfinite::option")]
    pub worst_sqnr_db: Option<f64>,
    pub worst_tensor: Option<String>,
    /// `Σ cand_bytes · 8 / Σ numel` over compared tensors.
    #[serde(with = "nonfinite::option")]
    pub bits_per_weight: Option<f64>,
    #[serde(with = "nonfinite::option")]
    pub ref_bits_per_weight: Option<f64>,
    /// `Σ cand_bytes / Σ ref_bytes` over compared tensors.
    #[serde(with = "nonfinite::option")]
    pub size_ratio: Option<f64>,
}

/// A whole diff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub schema_version: u32,
    /// REF's tensors in model order, then the tensors only CAND has (in CAND's model order).
    pub rows: Vec<DiffRow>,
    pub summary: DiffSummary,
    /// File-level marker tensors that are not weights (the legacy `scaled_fp8`).
    pub ref_markers: Vec<String>,
    pub cand_markers: Vec<String>,
}

/// Orders SQNRs worst first: NaN (broken) before everything, then ascending.
fn worse_first(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

impl DiffReport {
    /// The `n` compared rows with the lowest SQNR, worst first (NaN first; ties keep model
    /// order).
    pub fn worst(&self, n: usize) -> Vec<&DiffRow> {
        let mut rows: Vec<&DiffRow> = self.rows.iter().filter(|r| r.metrics.is_some()).collect();
        rows.sort_by(|a, b| {
            worse_first(a.sqnr_db().unwrap_or(f64::NAN), b.sqnr_db().unwrap_or(f64::NAN))
        });
        rows.truncate(n);
        rows
    }

    /// Indices into `rows` of the `n` worst compared rows, excluding identical ones (for
    /// highlighting a table).
    pub fn worst_indices(&self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].sqnr_db().is_some_and(|s| s != f64::INFINITY))
            .collect();
        idx.sort_by(|&a, &b| {
            worse_first(
                self.rows[a].sqnr_db().unwrap_or(f64::NAN),
                self.rows[b].sqnr_db().unwrap_or(f64::NAN),
            )
        });
        idx.truncate(n);
        idx
    }

    /// Whether any compared tensor is below `db` (NaN counts as below).
    pub fn any_below(&self, db: f64) -> bool {
        self.rows.iter().filter_map(DiffRow::sqnr_db).any(|s| s.is_nan() || s < db)
    }
}

/// Builds the summary of `rows`.
pub(crate) fn summarize(rows: &[DiffRow]) -> DiffSummary {
    let count = |s: RowStatus| rows.iter().filter(|r| r.status == s).count();
    let compared: Vec<&DiffRow> = rows.iter().filter(|r| r.metrics.is_some()).collect();
    let sq: Vec<f64> = compared.iter().filter_map(|r| r.sqnr_db()).collect();
    let finite: Vec<f64> = sq.iter().copied().filter(|s| s.is_finite()).collect();
    let mean = (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64);
    let worst = compared
        .iter()
        .filter(|r| r.sqnr_db().is_some_and(|s| !s.is_nan()))
        .min_by(|a, b| worse_first(a.sqnr_db().unwrap_or(0.0), b.sqnr_db().unwrap_or(0.0)));
    let params: u64 = compared.iter().map(|r| r.numel).sum();
    let cand: u64 = compared.iter().filter_map(|r| r.cand_bytes).sum();
    let refb: u64 = compared.iter().filter_map(|r| r.ref_bytes).sum();
    DiffSummary {
        compared: compared.len(),
        identical: sq.iter().filter(|&&s| s == f64::INFINITY).count(),
        nan: sq.iter().filter(|s| s.is_nan()).count(),
        only_ref: count(RowStatus::OnlyRef),
        only_cand: count(RowStatus::OnlyCand),
        not_compared: count(RowStatus::NotCompared),
        params,
        mean_sqnr_db: mean,
        worst_sqnr_db: worst.and_then(|r| r.sqnr_db()),
        worst_tensor: worst.map(|r| r.name.clone()),
        bits_per_weight: (params > 0).then(|| cand as f64 * 8.0 / params as f64),
        ref_bits_per_weight: (params > 0).then(|| refb as f64 * 8.0 / params as f64),
        size_ratio: (refb > 0).then(|| cand as f64 / refb as f64),
    }
}
