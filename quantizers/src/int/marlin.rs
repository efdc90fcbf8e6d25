//! The Marlin weight, scale and zero-point layouts (formats.md §4.2–§4.4), their inverses, and
//! a dequantizer that reads the Marlin words directly — the CPU reference the GPU verifier
//! compares the real kernel against.
//!
//! Weights (IST-DASLab `Layer.pack` ≡ vLLM `marlin_weights` ≡ `gptq_marlin_repack` output):
//! ```text
//!  q_w[K][N] unsigned codes, rows in argsort(g_idx) order under act-order
//!   │ 1. tile 16×16:  w1[kt][nt·256 + r·16 + c] = q_w[16kt + r][16nt + c]     (w1: [K/16, 16N])
//!   │ 2. permute each 1024-chunk (4 tiles along N): w2[x] = w1[perm[x]]
//!   │ 3. pack pf = 32/b consecutive values, first in the low bits:
//!   ▼    B[kt][j] = Σ_i w2[kt][pf·j + i] << b·i                             (B: [K/16, 16N/pf])
//!  perm = 32 blocks i: col = i/4, rows {2(i%4), 2(i%4)+1, 2(i%4+4), 2(i%4+4)+1},
//!         entries 16·row + col + 8·block (block 0,1), repeated for +256·j (j 0..3),
//!         then every 8 (4-bit: [0,2,4,6,1,3,5,7]) or 4 (8-bit: [0,2,1,3]) entries interleaved.
//! ```
//! Scales `[G, N]`: grouped (`G < K`) → every 64 consecutive entries reordered by
//! `scale_perm` (8×8 transpose); per-channel → every 32 by `scale_perm_single`.
//! AWQ zero points `[G, N]`: `scale_perm` on 64-chunks, then the weight interleave on 8-chunks
//! (4 for 8-bit), then packed along N (`[G, N/pf]`, column c at bits `b·(c % pf)`).
//!
//! The `is_a_8bit` (int8/fp8 activation, 32×32 tile) variant is not modelled.

use super::error::{IntError, IntResult};
use super::marlin_check::{check_marlin_shape, MarlinKind, MarlinShape, Parallel};
use super::pack::{identity, pack_cols, unpack_cols};
use super::rtn::{check_len, check_symmetric, Bits, GroupSize, QuantizedInt};

/// Entries in one weight permutation chunk (4 tiles of 16×16).
pub const PERM_LEN: usize = 1024;

fn interleave(bits: Bits) -> &'static [usize] {
    match bits {
        Bits::B4 => &[0, 2, 4, 6, 1, 3, 5, 7],
        Bits::B8 => &[0, 2, 1, 3],
    }
}

/// `get_weight_perm(bits)` of formats.md §4.2: a permutation of `0..1024`.
pub fn marlin_weight_perm(bits: Bits) -> Vec<usize> {
    let mut perm = Vec::with_capacity(PERM_LEN);
    for i in 0..32 {
        let col = i / 4;
        let mut block_entries = [0usize; 8];
        let rows = [2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1];
        for block in 0..2 {
            for (t, row) in rows.iter().enumerate() {
                block_entries[block * 4 + t] = 16 * row + col + 8 * block;
            }
        }
        for j in 0..4 {
            perm.extend(block_entries.iter().map(|p| p + 256 * j));
        }
    }
    let il = interleave(bits);
    perm.chunks(il.len()).flat_map(|chunk| il.iter().map(move |&t| chunk[t])).collect()
}

/// `scale_perm`: 64 entries, `[i + 8j for i in 0..8 for j in 0..8]` (8×8 transpose).
pub fn marlin_scale_perm() -> [usize; 64] {
    let mut p = [0; 64];
    for i in 0..8 {
        for j in 0..8 {
            p[8 * i + j] = i + 8 * j;
        }
    }
    p
}

/// `scale_perm_single`: 32 entries, `[2i + j for i in 0..4 for j in [0,1,8,9,16,17,24,25]]`.
pub fn marlin_scale_perm_single() -> [usize; 32] {
    let mut p = [0; 32];
    for i in 0..4 {
        for (t, j) in [0, 1, 8, 9, 16, 17, 24, 25].into_iter().enumerate() {
            p[8 * i + t] = 2 * i + j;
        }
    }
    p
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (x, &p) in perm.iter().enumerate() {
        inv[p] = x;
    }
    inv
}

/// Applies `out[c·L + x] = v[c·L + perm[x]]` to every `L = perm.len()` chunk.
fn permute_chunks<T: Copy>(v: &[T], perm: &[usize]) -> Vec<T> {
    let l = perm.len();
    v.chunks(l).flat_map(|c| perm.iter().map(move |&p| c[p])).collect()
}

/// Inverse of [`permute_chunks`].
fn unpermute_chunks<T: Copy + Default>(v: &[T], perm: &[usize]) -> Vec<T> {
    let l = perm.len();
    let mut out = vec![T::default(); v.len()];
    for (c, chunk) in v.chunks(l).enumerate() {
        for (x, &p) in perm.iter().enumerate() {
            out[c * l + p] = chunk[x];
        }
    }
    out
}

fn check_tiles(k: usize, n: usize) -> IntResult<()> {
    if k % 16 != 0 {
        return Err(IntError::NotMultiple { format: "Marlin B", dim: "K", value: k, multiple: 16 });
    }
    if n % 64 != 0 {
        return Err(IntError::NotMultiple { format: "Marlin B", dim: "N", value: n, multiple: 64 });
    }
    Ok(())
}

/// Words per row of `B`: `16·N / pf`.
fn b_row_words(n: usize, bits: Bits) -> usize {
    16 * n / bits.per_word()
}

/// Tiles, permutes and packs `q_w` (`[K, N]` row-major unsigned codes) into Marlin `B`
/// (`[K/16, 16N/pf]`). Needs `K % 16 == 0` and `N % 64 == 0`.
pub fn marlin_permute_weights(q_w: &[u8], k: usize, n: usize, bits: Bits) -> IntResult<Vec<i32>> {
    check_tiles(k, n)?;
    check_len("q_w", k, n, q_w.len())?;
    let perm = marlin_weight_perm(bits);
    let row = 16 * n;
    let mut w1 = vec![0u8; k * n];
    for kr in 0..k {
        let (kt, r) = (kr / 16, kr % 16);
        for c in 0..n {
            let (nt, cc) = (c / 16, c % 16);
            w1[kt * row + nt * 256 + r * 16 + cc] = q_w[kr * n + c];
        }
    }
    let w2 = permute_chunks(&w1, &perm);
    Ok(pack_cols(&w2, k / 16, row, bits, identity(bits)))
}

/// Inverse of [`marlin_permute_weights`]: `B` back to `q_w[K][N]`.
pub fn marlin_unpermute_weights(b: &[i32], k: usize, n: usize, bits: Bits) -> IntResult<Vec<u8>> {
    check_tiles(k, n)?;
    check_len("B", k / 16, b_row_words(n, bits), b.len())?;
    let perm = marlin_weight_perm(bits);
    let row = 16 * n;
    let w2 = unpack_cols(b, k / 16, row, bits, identity(bits));
    let w1 = unpermute_chunks(&w2, &perm);
    let mut q_w = vec![0u8; k * n];
    for kr in 0..k {
        let (kt, r) = (kr / 16, kr % 16);
        for c in 0..n {
            let (nt, cc) = (c / 16, c % 16);
            q_w[kr * n + c] = w1[kt * row + nt * 256 + r * 16 + cc];
        }
    }
    Ok(q_w)
}

/// Whether the scales use the grouped (64) or the per-channel (32) permutation.
fn grouped(group_size: GroupSize, k: usize) -> bool {
    matches!(group_size, GroupSize::Size(g) if g < k)
}

fn scale_perm_for(group_size: GroupSize, k: usize) -> Vec<usize> {
    if grouped(group_size, k) {
        marlin_scale_perm().to_vec()
    } else {
        marlin_scale_perm_single().to_vec()
    }
}

/// `N % 64 == 0` makes every 64- (and 32-) entry permutation chunk lie inside one row.
fn check_n64(what: &'static str, n: usize) -> IntResult<()> {
    if n == 0 || n % 64 != 0 {
        return Err(IntError::NotMultiple { format: what, dim: "N", value: n, multiple: 64 });
    }
    Ok(())
}

/// `marlin_permute_scales`: `s` is `[G, N]` with `N % 64 == 0`.
pub fn marlin_permute_scales(
    s: &[f32],
    groups: usize,
    n: usize,
    k: usize,
    group_size: GroupSize,
) -> IntResult<Vec<f32>> {
    check_n64("Marlin s", n)?;
    check_len("s", groups, n, s.len())?;
    Ok(permute_chunks(s, &scale_perm_for(group_size, k)))
}

/// Inverse of [`marlin_permute_scales`].
pub fn marlin_unpermute_scales(
    s: &[f32],
    groups: usize,
    n: usize,
    k: usize,
    group_size: GroupSize,
) -> IntResult<Vec<f32>> {
    check_n64("Marlin s", n)?;
    check_len("s", groups, n, s.len())?;
    Ok(unpermute_chunks(s, &scale_perm_for(group_size, k)))
}

/// `marlin_zero_points`: unsigned `zp[G][N]` → packed `[G, N/pf]`.
pub fn marlin_zero_points(zp: &[u8], groups: usize, n: usize, bits: Bits) -> IntResult<Vec<i32>> {
    check_n64("Marlin zp", n)?;
    check_len("zp", groups, n, zp.len())?;
    let z = permute_chunks(zp, &marlin_scale_perm());
    let z = permute_chunks(&z, interleave(bits));
    Ok(pack_cols(&z, groups, n, bits, identity(bits)))
}

/// Inverse of [`marlin_zero_points`].
pub fn marlin_unpermute_zero_points(
    packed: &[i32],
    groups: usize,
    n: usize,
    bits: Bits,
) -> IntResult<Vec<u8>> {
    check_n64("Marlin zp", n)?;
    check_len("zp", groups, n / bits.per_word(), packed.len())?;
    let z = unpack_cols(packed, groups, n, bits, identity(bits));
    let z = unpermute_chunks(&z, interleave(bits));
    Ok(unpermute_chunks(&z, &marlin_scale_perm()))
}

/// `awq_to_marlin_zero_points`: AWQ `qzeros` (`[G, N/8]`, interleaved) straight to the Marlin
/// zero layout, without going through a [`QuantizedInt`].
pub fn awq_to_marlin_zero_points(qzeros: &[i32], groups: usize, n: usize) -> IntResult<Vec<i32>> {
    check_n64("Marlin zp", n)?;
    check_len("qzeros", groups, n / 8, qzeros.len())?;
    let zp = unpack_cols(qzeros, groups, n, Bits::B4, &super::pack::AWQ_ORDER);
    marlin_zero_points(&zp, groups, n, Bits::B4)
}

/// Stable `argsort(g_idx)`: the row order of `q_w` under act-order. Any order within a group is
/// valid for the kernel (it receives the same permutation for the activations); a stable sort
/// makes qtool's bytes reproducible.
pub fn sort_indices(g_idx: &[u32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..g_idx.len() as u32).collect();
    idx.sort_by_key(|&i| g_idx[i as usize]);
    idx
}

/// The tensors one Marlin linear layer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MarlinTensors {
    pub kind: MarlinKind,
    pub bits: Bits,
    pub n: usize,
    pub k: usize,
    pub group_size: GroupSize,
    /// `[K/16, 16N/pf]`.
    pub b: Vec<i32>,
    /// `[G, N]`, permuted.
    pub s: Vec<f32>,
    /// `[G, N/pf]` (AWQ-Marlin only).
    pub zp: Option<Vec<i32>>,
    /// Original `[K]` act-order map (GPTQ-Marlin only).
    pub g_idx: Option<Vec<u32>>,
    /// `argsort(g_idx)`: row r of `q_w` is original column `sort_indices[r]`.
    pub sort_indices: Option<Vec<u32>>,
}

impl MarlinTensors {
    /// `g_idx[sort_indices]`, the form vLLM hands the kernel.
    pub fn sorted_g_idx(&self) -> Option<Vec<u32>> {
        let (g, p) = (self.g_idx.as_ref()?, self.sort_indices.as_ref()?);
        Some(p.iter().map(|&i| g[i as usize]).collect())
    }

    pub fn b_shape(&self) -> [usize; 2] {
        [self.k / 16, b_row_words(self.n, self.bits)]
    }

    pub fn num_groups(&self) -> usize {
        self.s.len() / self.n.max(1)
    }
}

fn shape_of(q: &QuantizedInt) -> MarlinShape {
    MarlinShape {
        n: q.n,
        k: q.k,
        bits: q.bits.get(),
        group_size: q.group_size.to_i64(),
        symmetric: q.symmetric,
        act_order: q.g_idx.is_some(),
    }
}

/// Packs `q` for `kind` after the single-GPU pre-flight (use
/// [`check_marlin_shape`] with the deployment's `tp` before exporting).
pub fn pack_marlin(q: &QuantizedInt, kind: MarlinKind) -> IntResult<MarlinTensors> {
    q.validate()?;
    check_marlin_shape(&shape_of(q), kind, 1, Parallel::Column)?;
    let (n, k, bits) = (q.n, q.k, q.bits);
    let sort = q.g_idx.as_deref().map(sort_indices);
    // q_w[r][c] = codes[c][sort[r]]
    let mut q_w = vec![0u8; k * n];
    for r in 0..k {
        let src = sort.as_ref().map_or(r, |s| s[r] as usize);
        for c in 0..n {
            q_w[r * n + c] = q.codes[c * k + src];
        }
    }
    let zp = match kind {
        MarlinKind::Awq => Some(marlin_zero_points(&q.zeros, q.num_groups(), n, bits)?),
        MarlinKind::Gptq | MarlinKind::Legacy => None,
    };
    Ok(MarlinTensors {
        kind,
        bits,
        n,
        k,
        group_size: q.group_size,
        b: marlin_permute_weights(&q_w, k, n, bits)?,
        s: marlin_permute_scales(&q.scales, q.num_groups(), n, k, q.group_size)?,
        zp,
        g_idx: q.g_idx.clone(),
        sort_indices: sort,
    })
}

fn check_tensors(t: &MarlinTensors) -> IntResult<usize> {
    let (n, k, bits) = (t.n, t.k, t.bits);
    if n == 0 || k == 0 {
        return Err(IntError::EmptyShape { n, k });
    }
    check_tiles(k, n)?;
    let groups = t.group_size.num_groups(k)?;
    check_len("B", k / 16, b_row_words(n, bits), t.b.len())?;
    check_len("s", groups, n, t.s.len())?;
    if let Some(zp) = &t.zp {
        check_len("zp", groups, n / bits.per_word(), zp.len())?;
    }
    if let Some(g) = &t.g_idx {
        super::rtn::check_g_idx(g, k, groups)?;
        let sort = t.sort_indices.as_ref().ok_or(IntError::MissingSortIndices)?;
        check_len("sort_indices", 1, k, sort.len())?;
        let mut seen = vec![false; k];
        for (i, &s) in sort.iter().enumerate() {
            if s as usize >= k || std::mem::replace(&mut seen[s as usize], true) {
                return Err(IntError::SortIndicesNotPermutation { index: i, value: s, k });
            }
        }
    }
    Ok(groups)
}

/// Inverse of [`pack_marlin`].
pub fn unpack_marlin(t: &MarlinTensors) -> IntResult<QuantizedInt> {
    let groups = check_tensors(t)?;
    let (n, k, bits) = (t.n, t.k, t.bits);
    let q_w = marlin_unpermute_weights(&t.b, k, n, bits)?;
    let mut codes = vec![0u8; n * k];
    for r in 0..k {
        let dst = t.sort_indices.as_ref().map_or(r, |s| s[r] as usize);
        for c in 0..n {
            codes[c * k + dst] = q_w[r * n + c];
        }
    }
    let (symmetric, zeros) = match &t.zp {
        Some(zp) => {
            let zeros = marlin_unpermute_zero_points(zp, groups, n, bits)?;
            (check_symmetric(&zeros, n, bits).is_ok(), zeros)
        }
        None => (true, vec![bits.mid() as u8; groups * n]),
    };
    let q = QuantizedInt {
        bits,
        n,
        k,
        group_size: t.group_size,
        symmetric,
        codes,
        scales: marlin_unpermute_scales(&t.s, groups, n, k, t.group_size)?,
        zeros,
        g_idx: t.g_idx.clone(),
    };
    q.validate()?;
    Ok(q)
}

/// Dequantizes straight from the Marlin words to `W[N, K]`: for every element it computes
/// where the layout put its code, scale and zero (inverse permutations, no unpacked copy), so
/// it checks the layout independently of [`unpack_marlin`].
pub fn marlin_dequantize(t: &MarlinTensors) -> IntResult<Vec<f32>> {
    check_tensors(t)?;
    let (n, k, bits) = (t.n, t.k, t.bits);
    let (pf, b) = (bits.per_word(), bits.get());
    let inv_perm = inverse(&marlin_weight_perm(bits));
    let scale_perm = scale_perm_for(t.group_size, k);
    let inv_scale = inverse(&scale_perm);
    let inv_zp_scale = inverse(&marlin_scale_perm());
    let il = interleave(bits);
    let inv_il = inverse(il);
    // Sorted position of each original column.
    let mut pos = (0..k).collect::<Vec<_>>();
    if let Some(s) = &t.sort_indices {
        for (r, &c) in s.iter().enumerate() {
            pos[c as usize] = r;
        }
    }
    let cols = t.group_size.columns(k);
    let row_words = b_row_words(n, bits);
    let field = |word: i32, i: usize| (word as u32 >> (b * i as u32)) & bits.mask();
    let mut out = vec![0.0f32; n * k];
    for kk in 0..k {
        let r = pos[kk];
        let (kt, rr) = (r / 16, r % 16);
        let g = t.g_idx.as_ref().map_or(kk / cols, |g| g[kk] as usize);
        for c in 0..n {
            let idx = (c / 16) * 256 + rr * 16 + c % 16;
            let x = (idx / PERM_LEN) * PERM_LEN + inv_perm[idx % PERM_LEN];
            let code = field(t.b[kt * row_words + x / pf], x % pf);
            let f = g * n + c;
            let l = scale_perm.len();
            let scale = t.s[(f / l) * l + inv_scale[f % l]];
            let zero = match &t.zp {
                None => bits.mid(),
                Some(zp) => {
                    let y = (f / 64) * 64 + inv_zp_scale[f % 64];
                    let y = (y / il.len()) * il.len() + inv_il[y % il.len()];
                    let (zr, zc) = (y / n, y % n);
                    field(zp[zr * (n / pf) + zc / pf], zc % pf)
                }
            };
            out[c * k + kk] = (code as f32 - zero as f32) * scale;
        }
    }
    Ok(out)
}
