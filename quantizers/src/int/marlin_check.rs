//! Pre-flight shape rules of the Marlin kernels, per tensor-parallel rank.
//!
//! Sources (formats.md §3.1, §4.1): vLLM `marlin_utils.py::verify_marlin_supports_shape`
//! (`N_partition % 64`, `K_partition % 128`, `K_partition % G` when `G < K`),
//! `MARLIN_SUPPORTED_GROUP_SIZES = [-1, 32, 64, 128]`, GPTQ-Marlin `TYPE_MAP` (symmetric only),
//! legacy `marlin.py` (4-bit, group 128 or −1).
//!
//! ```text
//!  column-parallel (q/k/v, gate/up): W[N, K] split along N   -> each rank holds [N/tp, K]
//!  row-parallel    (o, down):        W[N, K] split along K   -> each rank holds [N, K/tp]
//! ```
//! Each rank's slice must satisfy every rule, and a row-parallel split must not cut a group.
//! The group-split rule is checked before `K_partition % 128` because it names the real cause
//! when both fail (every supported group divides 128).

use super::error::MarlinRuleError;

/// Which Marlin path will load the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarlinKind {
    /// `gptq_marlin`: symmetric uint4b8/uint8b128, optional act-order.
    Gptq,
    /// `awq_marlin`: zero points, no act-order.
    Awq,
    /// The legacy `"marlin"` quant_method checkpoint: 4-bit symmetric, group 128 or −1.
    Legacy,
}

impl MarlinKind {
    pub fn name(self) -> &'static str {
        match self {
            MarlinKind::Gptq => "GPTQ-Marlin",
            MarlinKind::Awq => "AWQ-Marlin",
            MarlinKind::Legacy => "legacy Marlin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// Split along N (out_features).
    Column,
    /// Split along K (in_features).
    Row,
}

impl Parallel {
    fn name(self) -> &'static str {
        match self {
            Parallel::Column => "column",
            Parallel::Row => "row",
        }
    }
}

/// What the rules need to know about one weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarlinShape {
    /// out_features (full, before any split).
    pub n: usize,
    /// in_features (full).
    pub k: usize,
    pub bits: u32,
    /// −1 for per-channel.
    pub group_size: i64,
    pub symmetric: bool,
    pub act_order: bool,
}

pub const MARLIN_SUPPORTED_GROUP_SIZES: [i64; 4] = [-1, 32, 64, 128];
pub const MARLIN_SUPPORTED_TP: [usize; 4] = [1, 2, 4, 8];

/// Checks every Marlin rule for `shape` loaded by `kind` on `tp` ranks split as `parallel`.
pub fn check_marlin_shape(
    shape: &MarlinShape,
    kind: MarlinKind,
    tp: usize,
    parallel: Parallel,
) -> Result<(), MarlinRuleError> {
    let MarlinShape { n, k, bits, group_size, symmetric, act_order } = *shape;
    if bits != 4 && bits != 8 {
        return Err(MarlinRuleError::Bits { bits });
    }
    if !MARLIN_SUPPORTED_GROUP_SIZES.contains(&group_size) {
        return Err(MarlinRuleError::GroupSize { group: group_size });
    }
    if kind == MarlinKind::Legacy && (bits != 4 || !(group_size == -1 || group_size == 128)) {
        return Err(MarlinRuleError::Legacy { bits, group: group_size });
    }
    if kind != MarlinKind::Awq && !symmetric {
        return Err(MarlinRuleError::Asymmetric);
    }
    if kind != MarlinKind::Gptq && act_order {
        return Err(MarlinRuleError::ActOrder { kind: kind.name() });
    }
    if !MARLIN_SUPPORTED_TP.contains(&tp) {
        return Err(MarlinRuleError::TpSize { tp });
    }
    let pname = parallel.name();
    let (n_part, k_part) = match parallel {
        Parallel::Column => {
            if n % tp != 0 {
                return Err(MarlinRuleError::TpSplit { dim: "N", value: n, tp, parallel: pname });
            }
            (n / tp, k)
        }
        Parallel::Row => {
            if k % tp != 0 {
                return Err(MarlinRuleError::TpSplit { dim: "K", value: k, tp, parallel: pname });
            }
            (n, k / tp)
        }
    };
    if n_part == 0 || n_part % 64 != 0 {
        return Err(MarlinRuleError::NPartition { n_part, n, tp, parallel: pname });
    }
    if group_size > 0 {
        let g = group_size as usize;
        if g < k && k_part % g != 0 {
            return Err(MarlinRuleError::GroupSplit { k_part, group: g, k, tp, parallel: pname });
        }
    }
    if k_part == 0 || k_part % 128 != 0 {
        return Err(MarlinRuleError::KPartition { k_part, k, tp, parallel: pname });
    }
    Ok(())
}

/// The tensor-parallel sizes (of 1, 2, 4, 8) on which `shape` passes every rule when split as
/// `parallel`, so a refusal can say which deployments would work.
pub fn marlin_supported_tp(
    shape: &MarlinShape,
    kind: MarlinKind,
    parallel: Parallel,
) -> Vec<usize> {
    MARLIN_SUPPORTED_TP
        .into_iter()
        .filter(|&tp| check_marlin_shape(shape, kind, tp, parallel).is_ok())
        .collect()
}
