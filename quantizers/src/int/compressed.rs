//! compressed-tensors `pack-quantized` tensors (CT `compressors/pack_quantized`; formats.md §2.3).
//!
//! ```text
//!  weight_packed     [N, cdiv(K·b, 32)] int32 — packed along K, element i at global bit i·b:
//!                      word (n, j), field t = (q[n][pf·j + t] + 2^(b−1))      (signed q stored +8)
//!  weight_scale      [N, G]  (channel: [N, 1])
//!  weight_zero_point [cdiv(N·b, 32), G] int32 — asymmetric only, packed along dim 0 (N),
//!                      zp + 2^(b−1) like the weights
//!  weight_shape      [2] int64 = [N, K]
//!  weight_g_idx      [K] int32 — only with actorder=group
//! ```
//! `weight_packed` transposed word-for-word is GPTQ `qweight` (both pack element k at bits
//! `b·(k % pf)` of word `k / pf`, and both store `q + 2^(b−1)`), formats.md §4.5.

use super::error::{IntError, IntResult};
use super::pack::{identity, pack_cols, pack_rows, transpose, unpack_cols, unpack_rows, words_for};
use super::rtn::{check_len, g_idx_from_i32, Bits, GroupSize, QuantizedInt};

#[derive(Debug, Clone, PartialEq)]
pub struct CtPackedTensors {
    pub bits: Bits,
    pub n: usize,
    pub k: usize,
    /// `[N, cdiv(K·b, 32)]`.
    pub weight_packed: Vec<i32>,
    /// `[N, G]`.
    pub weight_scale: Vec<f32>,
    /// `[cdiv(N·b, 32), G]`, asymmetric only.
    pub weight_zero_point: Option<Vec<i32>>,
    /// `[N, K]`.
    pub weight_shape: [i64; 2],
    /// `[K]`, act-order only.
    pub weight_g_idx: Option<Vec<i32>>,
}

impl CtPackedTensors {
    pub fn num_groups(&self) -> usize {
        self.weight_scale.len() / self.n.max(1)
    }

    pub fn weight_packed_shape(&self) -> [usize; 2] {
        [self.n, words_for(self.k, self.bits)]
    }

    pub fn weight_scale_shape(&self) -> [usize; 2] {
        [self.n, self.num_groups()]
    }

    pub fn weight_zero_point_shape(&self) -> [usize; 2] {
        [words_for(self.n, self.bits), self.num_groups()]
    }
}

/// Packs `q` into pack-quantized tensors; zero points are written only when asymmetric.
pub fn pack_ct(q: &QuantizedInt) -> IntResult<CtPackedTensors> {
    q.validate()?;
    let (n, k, bits) = (q.n, q.k, q.bits);
    let groups = q.num_groups();
    let weight_zero_point = if q.symmetric {
        None
    } else {
        // [G, N] -> [N, G], packed along N (dim 0).
        Some(pack_rows(&transpose(&q.zeros, groups, n), n, groups, bits))
    };
    Ok(CtPackedTensors {
        bits,
        n,
        k,
        weight_packed: pack_cols(&q.codes, n, k, bits, identity(bits)),
        weight_scale: transpose(&q.scales, groups, n),
        weight_zero_point,
        weight_shape: [n as i64, k as i64],
        weight_g_idx: q.g_idx.as_ref().map(|g| g.iter().map(|&x| x as i32).collect()),
    })
}

/// Reads pack-quantized tensors back; symmetric exactly when there is no zero point.
pub fn unpack_ct(t: &CtPackedTensors, group_size: GroupSize) -> IntResult<QuantizedInt> {
    let (n, k, bits) = (t.n, t.k, t.bits);
    if n == 0 || k == 0 {
        return Err(IntError::EmptyShape { n, k });
    }
    if t.weight_shape != [n as i64, k as i64] {
        return Err(IntError::WeightShape { got: t.weight_shape, n, k });
    }
    let groups = group_size.num_groups(k)?;
    check_len("weight_packed", n, words_for(k, bits), t.weight_packed.len())?;
    check_len("weight_scale", n, groups, t.weight_scale.len())?;
    let (symmetric, zeros) = match &t.weight_zero_point {
        None => (true, vec![bits.mid() as u8; groups * n]),
        Some(zp) => {
            check_len("weight_zero_point", words_for(n, bits), groups, zp.len())?;
            (false, transpose(&unpack_rows(zp, n, groups, bits), n, groups))
        }
    };
    let g_idx = match &t.weight_g_idx {
        Some(g) => g_idx_from_i32(g, k, group_size)?,
        None => None,
    };
    let q = QuantizedInt {
        bits,
        n,
        k,
        group_size,
        symmetric,
        codes: unpack_cols(&t.weight_packed, n, k, bits, identity(bits)),
        scales: transpose(&t.weight_scale, n, groups),
        zeros,
        g_idx,
    };
    q.validate()?;
    Ok(q)
}
