//! Round-to-nearest group quantization of a weight `W[N, K]` into unsigned integer codes, with
//! the scale/zero conventions of the three producers qtool must match byte for byte.
//!
//! ```text
//!            K (in_features) ──────────────────────────►
//!      N   ┌──────────┬──────────┬──────────┬──────────┐
//!      │   │ group 0  │ group 1  │   ...    │ group G-1│   one (scale, zero) per (group, row)
//!      ▼   │ k < G    │ G ≤ k<2G │          │          │   stored [G, N] (GPTQ/AWQ orientation)
//!          └──────────┴──────────┴──────────┴──────────┘
//!  act-order: column k belongs to group g_idx[k] instead of k / G (GPTQ desc_act).
//! ```
//!
//! Conventions (formats.md §3.1, §3.2, §2.1; the source file is named on each):
//!
//! | convention | range | scale | zero (unsigned) | code |
//! |---|---|---|---|---|
//! | GPTQ sym (AutoGPTQ `quantizer.py::find_params`) | `[min(min,0), max(max,0)]`, `xmax = max(|xmin|, xmax)`, `xmin = -xmax` if `xmin < 0` | `(xmax - xmin) / maxq` | `(maxq + 1) / 2` | `clamp(round(x/s) + z, 0, maxq)` |
//! | GPTQ asym | `[min(min,0), max(max,0)]` | `(xmax - xmin) / maxq` | `round(-xmin / s)` | same |
//! | AWQ (`quantizer.py::pseudo_quantize_tensor`, zero_point) | `[min, max]` | `max(max - min, 1e-5) / maxq` | `clamp(-round(min / s), 0, maxq)` | same |
//! | compressed-tensors sym (`helpers.py::calculate_qparams`) | `[min(min,0), max(max,0)]` | `amax / ((qmax - qmin) / 2)` (= amax/7.5 for int4) | `2^(b-1)` (signed zp 0) | `round(clamp(x/s + zp, qmin, qmax)) + 2^(b-1)` |
//! | compressed-tensors asym | same | `(xmax - xmin) / (qmax - qmin)` | `round(clamp(qmin - xmin/s, qmin, qmax)) + 2^(b-1)` | same |
//!
//! `round` is `torch.round`, i.e. half to even (`f32::round_ties_even`); all arithmetic is f32 as
//! in the sources (GPTQ casts the layer to float first). Two quirks are reproduced on purpose:
//! GPTQ-sym leaves `xmin = 0` for a group with no negative value (so its scale is `amax/maxq`,
//! not `2·amax/maxq`), and an all-zero group becomes `[-1, 1]` there. For compressed-tensors a
//! zero scale is replaced by `f32::EPSILON` (the source uses the eps of the scale dtype, which is
//! the weight dtype; qtool quantizes from f32), and an all-zero asymmetric group, where the source
//! computes `0/0`, gets signed zero point 0 so it dequantizes to exact zeros.

use rayon::prelude::*;

use super::error::{IntError, IntResult};

/// Code width. Only the widths every target runtime loads are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    B4,
    B8,
}

impl Bits {
    pub fn from_u32(bits: u32) -> IntResult<Self> {
        match bits {
            4 => Ok(Bits::B4),
            8 => Ok(Bits::B8),
            _ => Err(IntError::UnsupportedBits { bits }),
        }
    }

    pub const fn get(self) -> u32 {
        match self {
            Bits::B4 => 4,
            Bits::B8 => 8,
        }
    }

    /// Largest unsigned code, `2^b - 1`.
    pub const fn max_code(self) -> u32 {
        (1 << self.get()) - 1
    }

    /// The unsigned code of signed zero, `2^(b-1)`: the symmetric zero point of every format.
    pub const fn mid(self) -> u32 {
        1 << (self.get() - 1)
    }

    /// Codes per 32-bit word.
    pub const fn per_word(self) -> usize {
        (32 / self.get()) as usize
    }

    pub const fn mask(self) -> u32 {
        self.max_code()
    }
}

/// Columns per (scale, zero) pair along K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// One group per output row (`group_size = -1`, "channel" strategy).
    PerChannel,
    Size(usize),
}

impl GroupSize {
    /// `-1` means per-channel, as in every `quantize_config.json`.
    pub fn from_i64(value: i64) -> IntResult<Self> {
        match value {
            -1 => Ok(GroupSize::PerChannel),
            v if v > 0 => Ok(GroupSize::Size(v as usize)),
            _ => Err(IntError::ZeroGroupSize),
        }
    }

    pub fn to_i64(self) -> i64 {
        match self {
            GroupSize::PerChannel => -1,
            GroupSize::Size(g) => g as i64,
        }
    }

    /// Number of groups along `k`; the group must divide `k` (AWQ asserts it, Marlin requires
    /// it, and a ragged last group would give GPTQ and compressed-tensors different shapes).
    pub fn num_groups(self, k: usize) -> IntResult<usize> {
        match self {
            GroupSize::PerChannel => Ok(1),
            GroupSize::Size(0) => Err(IntError::ZeroGroupSize),
            GroupSize::Size(g) if k % g != 0 => Err(IntError::GroupDoesNotDivide { group: g, k }),
            GroupSize::Size(g) => Ok(k / g),
        }
    }

    /// Columns per group for a row of length `k`.
    pub fn columns(self, k: usize) -> usize {
        match self {
            GroupSize::PerChannel => k,
            GroupSize::Size(g) => g,
        }
    }
}

/// Whose scale/zero formula (and code rounding order) to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Convention {
    Gptq,
    Awq,
    CompressedTensors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtnConfig {
    pub bits: Bits,
    pub group_size: GroupSize,
    pub symmetric: bool,
    pub convention: Convention,
}

/// A group-quantized weight in the one representation every packer consumes.
///
/// `w[n][k] ≈ scales[g][n] · (codes[n][k] − zeros[g][n])` with `g = g_idx[k]` (or `k / G`).
/// Codes and zeros are unsigned (`0..=2^b−1`): compressed-tensors' signed values are stored
/// here as `q + 2^(b−1)`, which is exactly what it writes to disk.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedInt {
    pub bits: Bits,
    /// out_features.
    pub n: usize,
    /// in_features.
    pub k: usize,
    pub group_size: GroupSize,
    /// True when every zero is `2^(b−1)`: the only form GPTQ-Marlin and CT symmetric store.
    pub symmetric: bool,
    /// `[N, K]` row-major.
    pub codes: Vec<u8>,
    /// `[G, N]` row-major.
    pub scales: Vec<f32>,
    /// `[G, N]` row-major, unsigned true zero points.
    pub zeros: Vec<u8>,
    /// `[K]` column → group under act-order; `None` when it is the default `k / G`.
    pub g_idx: Option<Vec<u32>>,
}

impl QuantizedInt {
    pub fn num_groups(&self) -> usize {
        self.scales.len() / self.n.max(1)
    }

    /// Group of column `k`; call on a [`validated`](Self::validate) value.
    pub fn group_of(&self, k: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[k] as usize,
            None => k / self.group_size.columns(self.k),
        }
    }

    /// Checks every length, range and the symmetric promise; packers call it first so that no
    /// packer indexes out of bounds on a hand-built value.
    pub fn validate(&self) -> IntResult<()> {
        let (n, k) = (self.n, self.k);
        if n == 0 || k == 0 {
            return Err(IntError::EmptyShape { n, k });
        }
        let groups = self.group_size.num_groups(k)?;
        check_len("codes", n, k, self.codes.len())?;
        check_len("scales", groups, n, self.scales.len())?;
        check_len("zeros", groups, n, self.zeros.len())?;
        let max = self.bits.max_code();
        for (what, values) in [("codes", &self.codes), ("zeros", &self.zeros)] {
            if let Some(i) = values.iter().position(|&c| u32::from(c) > max) {
                return Err(IntError::CodeOutOfRange {
                    what,
                    index: i,
                    value: values[i].into(),
                    bits: self.bits.get(),
                    max,
                });
            }
        }
        for (i, &s) in self.scales.iter().enumerate() {
            if !s.is_finite() || s == 0.0 {
                return Err(IntError::BadScale { group: i / n, col: i % n, value: s });
            }
        }
        if self.symmetric {
            check_symmetric(&self.zeros, n, self.bits)?;
        }
        if let Some(g_idx) = &self.g_idx {
            check_g_idx(g_idx, k, groups)?;
        }
        Ok(())
    }
}

pub(crate) fn check_len(what: &'static str, rows: usize, cols: usize, got: usize) -> IntResult<()> {
    let expected = rows.saturating_mul(cols);
    if got != expected {
        return Err(IntError::LengthMismatch { what, rows, cols, expected, got });
    }
    Ok(())
}

pub(crate) fn check_symmetric(zeros: &[u8], n: usize, bits: Bits) -> IntResult<()> {
    let mid = bits.mid() as u8;
    match zeros.iter().position(|&z| z != mid) {
        Some(i) => Err(IntError::NotSymmetric { group: i / n, col: i % n, value: zeros[i], mid }),
        None => Ok(()),
    }
}

pub(crate) fn check_g_idx(g_idx: &[u32], k: usize, groups: usize) -> IntResult<()> {
    if g_idx.len() != k {
        return Err(IntError::GIdxLength { got: g_idx.len(), k });
    }
    match g_idx.iter().position(|&g| g as usize >= groups) {
        Some(i) => Err(IntError::GIdxOutOfRange { index: i, value: g_idx[i].into(), groups }),
        None => Ok(()),
    }
}

/// Reads a checkpoint's int32 `g_idx` (GPTQ, compressed-tensors `weight_g_idx`), rejecting
/// negative or out-of-range groups, and returns `None` when it is the default `k / G` so that
/// act-order is recorded only where it changes the layout.
pub fn g_idx_from_i32(
    g_idx: &[i32],
    k: usize,
    group_size: GroupSize,
) -> IntResult<Option<Vec<u32>>> {
    let groups = group_size.num_groups(k)?;
    if g_idx.len() != k {
        return Err(IntError::GIdxLength { got: g_idx.len(), k });
    }
    let mut out = Vec::with_capacity(k);
    for (i, &g) in g_idx.iter().enumerate() {
        if g < 0 || g as usize >= groups {
            return Err(IntError::GIdxOutOfRange { index: i, value: g.into(), groups });
        }
        out.push(g as u32);
    }
    Ok(normalize_g_idx(out, k, group_size))
}

/// The `g_idx` a checkpoint stores: the act-order map or the default `k / G`.
pub fn g_idx_or_default(g_idx: Option<&[u32]>, k: usize, group_size: GroupSize) -> Vec<u32> {
    match g_idx {
        Some(g) => g.to_vec(),
        None => {
            let cols = group_size.columns(k);
            (0..k).map(|i| (i / cols) as u32).collect()
        }
    }
}

pub(crate) fn normalize_g_idx(
    g_idx: Vec<u32>,
    k: usize,
    group_size: GroupSize,
) -> Option<Vec<u32>> {
    let cols = group_size.columns(k);
    if g_idx.iter().enumerate().all(|(i, &g)| g as usize == i / cols) {
        None
    } else {
        Some(g_idx)
    }
}

/// Validated inputs shared by [`quantize`] and [`quantize_with_params`].
fn check_inputs(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &RtnConfig,
    g_idx: Option<&[u32]>,
) -> IntResult<usize> {
    if n == 0 || k == 0 {
        return Err(IntError::EmptyShape { n, k });
    }
    check_len("weight", n, k, w.len())?;
    let groups = cfg.group_size.num_groups(k)?;
    if let Some(g) = g_idx {
        check_g_idx(g, k, groups)?;
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(IntError::NonFiniteWeight { row: i / k, col: i % k, value: w[i] });
    }
    if cfg.convention == Convention::Awq && cfg.symmetric {
        return Err(IntError::AwqSymmetric);
    }
    Ok(groups)
}

/// Quantizes `w` (`[N, K]` row-major f32) by round to nearest with the scale/zero formula of
/// `cfg.convention`. `g_idx` (`[K]`, column → group) gives act-order grouping.
pub fn quantize(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &RtnConfig,
    g_idx: Option<&[u32]>,
) -> IntResult<QuantizedInt> {
    let groups = check_inputs(w, n, k, cfg, g_idx)?;
    let cols = cfg.group_size.columns(k);
    let group_of = |c: usize| g_idx.map_or(c / cols, |g| g[c] as usize);

    // Per row: the (scale, zero) of each of its groups, then its codes.
    let rows: Vec<(Vec<f32>, Vec<u8>, Vec<u8>)> = w
        .par_chunks(k)
        .map(|row| {
            let mut lo = vec![f32::INFINITY; groups];
            let mut hi = vec![f32::NEG_INFINITY; groups];
            for (c, &x) in row.iter().enumerate() {
                let g = group_of(c);
                lo[g] = lo[g].min(x);
                hi[g] = hi[g].max(x);
            }
            let (scales, zeros): (Vec<f32>, Vec<u8>) =
                lo.iter().zip(&hi).map(|(&mn, &mx)| group_params(cfg, mn, mx)).unzip();
            let codes: Vec<u8> = row
                .iter()
                .enumerate()
                .map(|(c, &x)| {
                    let g = group_of(c);
                    encode(cfg, x, scales[g], zeros[g])
                })
                .collect();
            (scales, zeros, codes)
        })
        .collect();

    let mut q = QuantizedInt {
        bits: cfg.bits,
        n,
        k,
        group_size: cfg.group_size,
        symmetric: cfg.symmetric,
        codes: Vec::with_capacity(n * k),
        scales: vec![0.0; groups * n],
        zeros: vec![0; groups * n],
        g_idx: g_idx.and_then(|g| normalize_g_idx(g.to_vec(), k, cfg.group_size)),
    };
    for (r, (scales, zeros, codes)) in rows.into_iter().enumerate() {
        for g in 0..groups {
            q.scales[g * n + r] = scales[g];
            q.zeros[g * n + r] = zeros[g];
        }
        q.codes.extend_from_slice(&codes);
    }
    Ok(q)
}

/// Quantizes with scales and zeros chosen elsewhere (GPTQ's error-compensated search, AWQ's
/// clipped ranges), so those methods produce the same [`QuantizedInt`] every packer consumes.
/// `scales`/`zeros` are `[G, N]`; zeros are unsigned (for a symmetric config each must be
/// `2^(b−1)`). The code formula is the one of `cfg.convention`.
pub fn quantize_with_params(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &RtnConfig,
    g_idx: Option<&[u32]>,
    scales: &[f32],
    zeros: &[u8],
) -> IntResult<QuantizedInt> {
    let groups = check_inputs(w, n, k, cfg, g_idx)?;
    let mut q = QuantizedInt {
        bits: cfg.bits,
        n,
        k,
        group_size: cfg.group_size,
        symmetric: cfg.symmetric,
        codes: Vec::new(),
        scales: scales.to_vec(),
        zeros: zeros.to_vec(),
        g_idx: g_idx.and_then(|g| normalize_g_idx(g.to_vec(), k, cfg.group_size)),
    };
    check_len("scales", groups, n, scales.len())?;
    check_len("zeros", groups, n, zeros.len())?;
    q.codes = vec![0; n * k];
    // Codes are all zero here, so this checks exactly the caller's scales and zeros.
    q.validate()?;
    let cols = cfg.group_size.columns(k);
    q.codes.par_chunks_mut(k).zip(w.par_chunks(k)).enumerate().for_each(|(r, (out, row))| {
        for (c, (o, &x)) in out.iter_mut().zip(row).enumerate() {
            let g = g_idx.map_or(c / cols, |g| g[c] as usize);
            *o = encode(cfg, x, scales[g * n + r], zeros[g * n + r]);
        }
    });
    Ok(q)
}

/// The dtype a checkpoint stores scales in (GPTQ/AWQ: fp16; compressed-tensors: the weight's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDtype {
    F32,
    F16,
    BF16,
}

impl ScaleDtype {
    /// Rounds to the nearest representable value (ties to even), as `tensor.to(dtype)` does.
    pub fn round(self, x: f32) -> f32 {
        match self {
            ScaleDtype::F32 => x,
            ScaleDtype::F16 => half::f16::from_f32(x).to_f32(),
            ScaleDtype::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// Quantizes like [`quantize`], then rounds the scales to the dtype the file will hold and
/// recomputes the codes against those stored scales, so every runtime's dequantization of the
/// written tensors equals [`dequantize`] of the result exactly. (The reference tools compute
/// codes from the unrounded scale and store the rounded one, which leaves a small mismatch
/// between the codes and the scale they are read with.) A scale that rounds to zero or
/// infinity is an error naming its group and row.
pub fn quantize_for_storage(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &RtnConfig,
    g_idx: Option<&[u32]>,
    scale_dtype: ScaleDtype,
) -> IntResult<QuantizedInt> {
    let q = quantize(w, n, k, cfg, g_idx)?;
    if scale_dtype == ScaleDtype::F32 {
        return Ok(q);
    }
    let scales: Vec<f32> = q.scales.iter().map(|&s| scale_dtype.round(s)).collect();
    quantize_with_params(w, n, k, cfg, g_idx, &scales, &q.zeros)
}

/// `(scale, unsigned zero)` of one group from its observed `[min, max]`.
pub(crate) fn group_params(cfg: &RtnConfig, min: f32, max: f32) -> (f32, u8) {
    let maxq = cfg.bits.max_code() as f32;
    let mid = cfg.bits.mid() as f32;
    match cfg.convention {
        Convention::Gptq => {
            let mut xmin = min.min(0.0);
            let mut xmax = max.max(0.0);
            if cfg.symmetric {
                xmax = xmin.abs().max(xmax);
                if xmin < 0.0 {
                    xmin = -xmax;
                }
            }
            if xmin == 0.0 && xmax == 0.0 {
                xmin = -1.0;
                xmax = 1.0;
            }
            let scale = (xmax - xmin) / maxq;
            let zero = if cfg.symmetric { mid } else { (-xmin / scale).round_ties_even() };
            (scale, zero.clamp(0.0, maxq) as u8)
        }
        Convention::Awq => {
            let scale = (max - min).max(1e-5) / maxq;
            let zero = (-(min / scale).round_ties_even()).clamp(0.0, maxq);
            (scale, zero as u8)
        }
        Convention::CompressedTensors => {
            let (qmin, qmax) = (-mid, maxq - mid);
            let xmin = min.min(0.0);
            let xmax = max.max(0.0);
            let bit_range = maxq; // (qmax - qmin), computed in the source as a float
            if cfg.symmetric {
                let amax = xmin.abs().max(xmax.abs());
                let scale = amax / (bit_range / 2.0);
                (if scale == 0.0 { f32::EPSILON } else { scale }, mid as u8)
            } else {
                let scale = (xmax - xmin) / bit_range;
                if scale == 0.0 {
                    return (f32::EPSILON, mid as u8);
                }
                let zp = (qmin - xmin / scale).clamp(qmin, qmax).round_ties_even();
                (scale, (zp + mid) as u8)
            }
        }
    }
}

/// One code from one weight, with the rounding order of the convention.
#[inline]
pub(crate) fn encode(cfg: &RtnConfig, x: f32, scale: f32, zero: u8) -> u8 {
    let maxq = cfg.bits.max_code() as f32;
    match cfg.convention {
        // clamp(round(x / s) + z, 0, maxq)
        Convention::Gptq | Convention::Awq => {
            ((x / scale).round_ties_even() + f32::from(zero)).clamp(0.0, maxq) as u8
        }
        // round(clamp(x / s + zp, qmin, qmax)) with signed zp, stored + 2^(b-1)
        Convention::CompressedTensors => {
            let mid = cfg.bits.mid() as f32;
            let t = x / scale + (f32::from(zero) - mid);
            (t.clamp(-mid, maxq - mid).round_ties_even() + mid) as u8
        }
    }
}

/// `w[n][k] = scale · (code − zero)` in f32, `[N, K]` row-major. Every format's dequantizer
/// computes this (GPTQ `scales * (q − zeros)`, AWQ `(q − z)·s`, CT `(q − zp)·scale`).
pub fn dequantize(q: &QuantizedInt) -> IntResult<Vec<f32>> {
    q.validate()?;
    let (n, k) = (q.n, q.k);
    let mut out = vec![0.0f32; n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, row)| {
        for (c, o) in row.iter_mut().enumerate() {
            let g = q.group_of(c);
            let s = q.scales[g * n + r];
            let z = f32::from(q.zeros[g * n + r]);
            *o = (f32::from(q.codes[r * k + c]) - z) * s;
        }
    });
    Ok(out)
}
