//! Errors of the integer weight-only schemes.
//!
//! Every variant names the offending tensor part and, where there is one, the index or the rule
//! that failed, so a caller (the CLI, an exporter) can prefix the tensor name and print a single
//! `error:` line. Nothing in this module allocates in proportion to a claimed size before the
//! claim has been checked against the buffers actually given.

/// Result alias of the `int` module.
pub type IntResult<T> = std::result::Result<T, IntError>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntError {
    /// Only 4- and 8-bit codes are implemented (the widths GPTQ-Marlin, AWQ-Marlin and
    /// compressed-tensors W4A16/W8A16 load).
    #[error("unsupported bit width {bits} (supported: 4, 8)")]
    UnsupportedBits { bits: u32 },

    #[error("{what}: shape {rows}x{cols} needs {expected} elements, got {got}")]
    LengthMismatch { what: &'static str, rows: usize, cols: usize, expected: usize, got: usize },

    #[error("weight shape {n}x{k} is empty")]
    EmptyShape { n: usize, k: usize },

    #[error("group size {group} does not divide in_features {k}")]
    GroupDoesNotDivide { group: usize, k: usize },

    #[error("group size 0 is invalid (use -1 / per-channel for one group per row)")]
    ZeroGroupSize,

    #[error("g_idx has {got} entries, expected in_features = {k}")]
    GIdxLength { got: usize, k: usize },

    #[error("g_idx[{index}] = {value} is out of range (number of groups = {groups})")]
    GIdxOutOfRange { index: usize, value: i64, groups: usize },

    #[error("weight[{row}, {col}] is not finite ({value})")]
    NonFiniteWeight { row: usize, col: usize, value: f32 },

    #[error("scale[{group}, {col}] = {value} is not a finite non-zero number")]
    BadScale { group: usize, col: usize, value: f32 },

    #[error("{what}[{index}] = {value} exceeds the {bits}-bit maximum {max}")]
    CodeOutOfRange { what: &'static str, index: usize, value: u32, bits: u32, max: u32 },

    #[error(
        "symmetric quantization requires every zero point to be {mid}, but zero[{group}, {col}] = {value}"
    )]
    NotSymmetric { group: usize, col: usize, value: u8, mid: u8 },

    #[error("{format} needs {dim} ({value}) to be a multiple of {multiple}")]
    NotMultiple { format: &'static str, dim: &'static str, value: usize, multiple: usize },

    /// GPTQ v1 stores `zero - 1`; a zero point of 0 would be stored as -1, which AutoGPTQ's
    /// packer smears over the neighbouring fields. Use the v2 convention instead.
    #[error("GPTQ v1 qzeros cannot store zero point 0 (v1 stores zero-1) at group {group}, column {col}; use gptq_v2")]
    GptqV1ZeroUnrepresentable { group: usize, col: usize },

    /// A v1<->v2 word conversion would carry (v1 field all ones) or borrow (v2 field zero)
    /// across fields, so the packed word arithmetic would corrupt a neighbour.
    #[error("qzeros word {word} field {field} = {value} cannot be converted {direction} without a carry into the next field")]
    ZeroConversionCarry { word: usize, field: usize, value: u32, direction: &'static str },

    /// The AWQ GEMM format has no act-order: its rows are plain `k // G`.
    #[error("AWQ cannot store an act-order g_idx (its groups are k // group_size); use GPTQ or compressed-tensors")]
    AwqActOrder,

    #[error("AWQ GEMM packs 4-bit codes only, got {bits}-bit")]
    AwqBits { bits: u32 },

    /// AWQ is defined with zero points only (`zero_point: true`), so its quantizer has no
    /// symmetric form to reproduce.
    #[error("the AWQ quantizer is asymmetric only (zero_point: true)")]
    AwqSymmetric,

    /// Marlin act-order needs `sort_indices` to be a permutation of `0..K`.
    #[error(
        "Marlin sort_indices[{index}] = {value} repeats a column or is out of range (K = {k})"
    )]
    SortIndicesNotPermutation { index: usize, value: u32, k: usize },

    #[error("Marlin tensors carry an act-order g_idx but no sort_indices")]
    MissingSortIndices,

    #[error("weight_shape {got:?} does not match the packed tensors ({n}x{k})")]
    WeightShape { got: [i64; 2], n: usize, k: usize },

    /// A Marlin layout rule that a shape breaks; the message names the rule as vLLM states it.
    #[error("Marlin: {0}")]
    Marlin(#[from] MarlinRuleError),
}

/// One failed Marlin pre-flight rule (vLLM `verify_marlin_supports_shape`, `gptq_marlin.py`,
/// `marlin.py`; formats.md §3.1, §4.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarlinRuleError {
    #[error("rule `bits in {{4, 8}}` fails: {bits}-bit")]
    Bits { bits: u32 },

    #[error("rule `group_size in MARLIN_SUPPORTED_GROUP_SIZES = [-1, 32, 64, 128]` fails: group size {group}")]
    GroupSize { group: i64 },

    #[error("rule `legacy marlin: bits == 4 and group_size in [-1, 128]` fails: {bits}-bit, group size {group}")]
    Legacy { bits: u32, group: i64 },

    #[error("rule `GPTQ-Marlin is symmetric only (TYPE_MAP has uint4b8/uint8b128)` fails: asymmetric quantization (use AWQ-Marlin with zero points)")]
    Asymmetric,

    #[error("rule `{kind} has no act-order (g_idx)` fails: an act-order g_idx is present")]
    ActOrder { kind: &'static str },

    #[error("rule `tensor-parallel size in {{1, 2, 4, 8}}` fails: tp = {tp}")]
    TpSize { tp: usize },

    #[error("rule `{dim} % tp == 0` fails: {dim} = {value}, tp = {tp} ({parallel}-parallel)")]
    TpSplit { dim: &'static str, value: usize, tp: usize, parallel: &'static str },

    #[error("rule `N_partition % 64 == 0` (min_thread_n) fails: N_partition = {n_part} (N = {n}, tp = {tp}, {parallel}-parallel)")]
    NPartition { n_part: usize, n: usize, tp: usize, parallel: &'static str },

    #[error("rule `K_partition % 128 == 0` (min_thread_k) fails: K_partition = {k_part} (K = {k}, tp = {tp}, {parallel}-parallel)")]
    KPartition { k_part: usize, k: usize, tp: usize, parallel: &'static str },

    #[error("rule `K_partition % group_size == 0 when group_size < K` fails: K_partition = {k_part}, group size {group} (a rank's slice would split a group; K = {k}, tp = {tp}, {parallel}-parallel)")]
    GroupSplit { k_part: usize, group: usize, k: usize, tp: usize, parallel: &'static str },
}
