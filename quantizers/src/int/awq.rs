//! AWQ GEMM checkpoint tensors (AutoAWQ `WQLinear_GEMM`; formats.md §3.2).
//!
//! ```text
//!  qweight [K, N/8] int32 — packed along N with the AWQ interleave:
//!    word (k, j), field i (bits 4i..4i+3) = q[8j + [0,2,4,6,1,3,5,7][i]][k]
//!    ┌────┬────┬────┬────┬────┬────┬────┬────┐
//!    │ n7 │ n5 │ n3 │ n1 │ n6 │ n4 │ n2 │ n0 │  (n = 8j + ·; field 0 on the right)
//!    └────┴────┴────┴────┴────┴────┴────┴────┘
//!  qzeros [G, N/8] int32 — same interleave, true zero (no −1 as in GPTQ v1)
//!  scales [G, N]; groups are k // G (no g_idx, so no act-order)
//! ```

use super::error::{IntError, IntResult};
use super::pack::{pack_cols, transpose, unpack_cols, AWQ_ORDER};
use super::rtn::{check_len, Bits, GroupSize, QuantizedInt};

#[derive(Debug, Clone, PartialEq)]
pub struct AwqTensors {
    pub n: usize,
    pub k: usize,
    /// `[K, N/8]`.
    pub qweight: Vec<i32>,
    /// `[G, N/8]`.
    pub qzeros: Vec<i32>,
    /// `[G, N]`.
    pub scales: Vec<f32>,
}

impl AwqTensors {
    pub fn qweight_shape(&self) -> [usize; 2] {
        [self.k, self.n / 8]
    }

    pub fn qzeros_shape(&self) -> [usize; 2] {
        [self.scales.len() / self.n.max(1), self.n / 8]
    }
}

fn check_n(n: usize) -> IntResult<()> {
    if n % 8 != 0 {
        return Err(IntError::NotMultiple {
            format: "AWQ qweight",
            dim: "N",
            value: n,
            multiple: 8,
        });
    }
    Ok(())
}

/// Packs `q` into the AWQ GEMM layout. Symmetric input is stored with its zeros (all 8),
/// which dequantizes identically; an act-order `g_idx` cannot be stored.
pub fn pack_awq(q: &QuantizedInt) -> IntResult<AwqTensors> {
    q.validate()?;
    if q.bits != Bits::B4 {
        return Err(IntError::AwqBits { bits: q.bits.get() });
    }
    if q.g_idx.is_some() {
        return Err(IntError::AwqActOrder);
    }
    let (n, k) = (q.n, q.k);
    check_n(n)?;
    let q_kn = transpose(&q.codes, n, k);
    Ok(AwqTensors {
        n,
        k,
        qweight: pack_cols(&q_kn, k, n, Bits::B4, &AWQ_ORDER),
        qzeros: pack_cols(&q.zeros, q.num_groups(), n, Bits::B4, &AWQ_ORDER),
        scales: q.scales.clone(),
    })
}

/// Reads AWQ tensors back (always asymmetric: AWQ has zero points).
pub fn unpack_awq(t: &AwqTensors, group_size: GroupSize) -> IntResult<QuantizedInt> {
    let (n, k) = (t.n, t.k);
    if n == 0 || k == 0 {
        return Err(IntError::EmptyShape { n, k });
    }
    check_n(n)?;
    let groups = group_size.num_groups(k)?;
    check_len("qweight", k, n / 8, t.qweight.len())?;
    check_len("qzeros", groups, n / 8, t.qzeros.len())?;
    check_len("scales", groups, n, t.scales.len())?;
    let q_kn = unpack_cols(&t.qweight, k, n, Bits::B4, &AWQ_ORDER);
    let q = QuantizedInt {
        bits: Bits::B4,
        n,
        k,
        group_size,
        symmetric: false,
        codes: transpose(&q_kn, k, n),
        scales: t.scales.clone(),
        zeros: unpack_cols(&t.qzeros, groups, n, Bits::B4, &AWQ_ORDER),
        g_idx: None,
    };
    q.validate()?;
    Ok(q)
}
