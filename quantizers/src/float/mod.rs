//! Floating-point microformats and the scaled schemes built on them: FP8 (E4M3/E5M2) with
//! per-tensor, per-channel and 128×128 block scales; NVFP4 (E2M1 in 16-element blocks with E4M3
//! block scales and an FP32 tensor scale); MXFP4 and MXFP8 (32-element blocks, E8M0 scales).
//! CPU reference implementations of the quantization schemes qtool reads and writes.
//!
//! Everything here is pure computation over slices: no files, no printing, no GPU. Each scheme
//! can both quantize and dequantize, so `diff`, `verify` and `inspect --stats` can decode any
//! tensor qtool knows back to `f32`.
//!
//! # Why there are several functions per scheme
//!
//! The producers that write these formats (ComfyUI/comfy-kitchen, compressed-tensors, ModelOpt,
//! ggml) agree on the storage types but not on the arithmetic that picks the scales: where a
//! reciprocal is taken, in which dtype a division is rounded, what a zero block gets, how a tie is
//! broken. A checkpoint is only byte-identical to the producer's own output if every one of those
//! steps is reproduced, so each producer's rule is a separate, named function, and the functions
//! take a [`ComputeDType`]: torch does arithmetic on a bf16 tensor in bf16 (each operation computed
//! in f32 and rounded to bf16), and that rounding is visible in the scales. The facts and their
//! sources are in `/work/shared/formats.md` (§1.1–1.3, §2.1–2.5, §5); each function cites the
//! section it implements. `tests/crosscheck/test_float_schemes.py` checks every scheme byte for
//! byte against an independent numpy + ml_dtypes implementation and, where PyTorch is installed,
//! against the producers' torch code paths run by torch itself.
//!
//! # Non-finite input
//!
//! A NaN or ±inf weight has no meaningful quantized value, and every producer silently turns it
//! into garbage (an amax of NaN poisons the whole tensor's scale). So by default every quantizer
//! returns [`FloatError::NonFinite`] naming the first bad element. With
//! [`Options::allow_nonfinite`] the tensor is quantized anyway under one documented policy:
//! non-finite elements are left out of every amax (so the scales are those of the finite
//! elements), ±inf saturates to the largest code of its sign, and NaN becomes the format's NaN
//! code where it has one (E4M3/E5M2 data); E2M1 has none, and NaN becomes what the producer's
//! rounding makes of it (a signed zero under the sign-bit rule, +6 under ModelOpt's
//! `searchsorted`; see [`e2m1`]). One exception: where the producer writes a block whose
//! finite elements are all zero as zeros whole (ComfyUI NVFP4, MXFP8), an inf in it becomes 0.

pub mod e2m1;
pub mod e8m0;
mod error;
pub mod fp8_scaled;
pub mod mx;
pub mod nvfp4;
pub mod swizzle;

use std::borrow::Cow;

use half::f16;

pub use error::FloatError;
pub use qtool_formats::codec::Fp8Format;

/// The dtype in which a producer does its tensor arithmetic: the dtype of the weight it was
/// handed. Every intermediate that torch would hold in that dtype is rounded to it (nearest-even).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ComputeDType {
    #[default]
    F32,
    F16,
    BF16,
}

impl ComputeDType {
    /// Rounds an `f32` to this dtype and widens it back (exact for F32).
    ///
    /// For F16/BF16 this is what torch does with the f32 result of every elementwise operation
    /// on a half tensor (the operation is computed in f32, then rounded once).
    #[inline(always)]
    pub fn round(self, x: f32) -> f32 {
        match self {
            ComputeDType::F32 => x,
            ComputeDType::F16 => f16::from_f32(x).to_f32(),
            ComputeDType::BF16 => round_bf16(x),
        }
    }

    /// Machine epsilon (`torch.finfo(dtype).eps`): what compressed-tensors puts in place of a
    /// zero scale.
    pub const fn eps(self) -> f32 {
        match self {
            ComputeDType::F32 => f32::EPSILON,
            ComputeDType::F16 => 0.000_976_562_5,
            ComputeDType::BF16 => 0.007_812_5,
        }
    }

    /// Smallest positive normal (`torch.finfo(dtype).tiny`).
    pub const fn tiny(self) -> f32 {
        match self {
            ComputeDType::F32 => f32::MIN_POSITIVE,
            ComputeDType::F16 => 6.103_515_6e-5,
            ComputeDType::BF16 => f32::MIN_POSITIVE,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ComputeDType::F32 => "F32",
            ComputeDType::F16 => "F16",
            ComputeDType::BF16 => "BF16",
        }
    }
}

impl std::fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// f32 → bf16 → f32, nearest-even, as `half::bf16::from_f32` (NaN stays NaN, quieted; overflow
/// gives ±inf) but branch-light, because it runs on every element of every bf16 weight.
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        return f32::from_bits((b | 0x0040_0000) & 0xFFFF_0000);
    }
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// Elements per parallel work item: large enough to amortize scheduling, small enough to
/// spread a single layer over every core.
const PAR_CHUNK: usize = 1 << 16;

/// Settings shared by every quantizer in this module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The weight's own dtype; see [`ComputeDType`]. Input values are first rounded to it, which
    /// is exact when the weight was stored in that dtype.
    pub compute: ComputeDType,
    /// Quantize NaN/±inf elements under the policy in the module doc instead of failing.
    pub allow_nonfinite: bool,
}

/// A row-major `[rows, cols]` matrix of `f32` borrowed from the caller: `rows` is N (output
/// features), `cols` is K (the axis every block runs along).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, FloatError> {
        match rows.checked_mul(cols) {
            Some(n) if n == data.len() => Ok(Matrix { data, rows, cols }),
            expected => Err(FloatError::Shape { rows, cols, expected, got: data.len() }),
        }
    }

    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Applies the non-finite policy and rounds the values to the compute dtype.
///
/// Fails on the first NaN/inf unless allowed, and on a finite value that the compute dtype
/// cannot hold (an f32 beyond 65504 claimed to be an F16 weight): rounding it would invent an
/// infinity the producer never saw.
///
/// The common case — every value finite and already exact in the compute dtype, as for a weight
/// stored in that dtype — is found by one parallel scan and borrows the input: no copy, so a
/// layer costs its f32 decode and its outputs, nothing more. Anything else takes the sequential
/// path below, which names the first offending element.
fn prepare<'a>(m: &Matrix<'a>, opts: &Options) -> Result<Cow<'a, [f32]>, FloatError> {
    Ok(prepare_amax(m, opts)?.0)
}

/// [`prepare`] plus the [`finite_amax`] of the prepared values, from the same scan.
fn prepare_amax<'a>(m: &Matrix<'a>, opts: &Options) -> Result<(Cow<'a, [f32]>, f32), FloatError> {
    use rayon::prelude::*;
    let scan = m
        .data
        .par_chunks(PAR_CHUNK)
        .map(|c| Scan::of(c, opts.compute))
        .reduce(Scan::default, Scan::merge);
    if scan.inexact == 0 && (scan.nonfinite == 0 || opts.allow_nonfinite) {
        let amax = if scan.nonfinite == 0 {
            f32::from_bits(scan.max_abs_bits)
        } else {
            par_finite_amax(m.data)
        };
        return Ok((Cow::Borrowed(m.data), amax));
    }
    let x = prepare_slow(m, opts)?;
    let amax = par_finite_amax(&x);
    Ok((x, amax))
}

/// What one pass over the raw values finds: whether any is not exact in the compute dtype or
/// not finite, and the largest magnitude's bit pattern (for non-negative floats the bit
/// patterns order like the values). Branch-free so the compiler vectorizes it.
#[derive(Clone, Copy, Default)]
struct Scan {
    inexact: u32,
    nonfinite: u32,
    max_abs_bits: u32,
}

impl Scan {
    /// The baseline x86-64 target (SSE2) has no vector unsigned `max`, so this loop stays scalar
    /// there; the AVX2 build of the same integer code, picked at run time, is ~3× faster on
    /// bf16/f32 weights and gives the same result.
    fn of(c: &[f32], dt: ComputeDType) -> Scan {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { Scan::of_avx2(c, dt) };
        }
        Scan::of_body(c, dt)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn of_avx2(c: &[f32], dt: ComputeDType) -> Scan {
        Scan::of_body(c, dt)
    }

    #[inline(always)]
    fn of_body(c: &[f32], dt: ComputeDType) -> Scan {
        // One loop per dtype, so each vectorizes on its own.
        let (mut inexact, nonfinite, max_abs) = match dt {
            ComputeDType::F32 => Scan::lanes(c, |_, _| 0),
            // bf16 is the upper half of an f32: exact iff the lower half is zero.
            ComputeDType::BF16 => Scan::lanes(c, |_, b| b & 0xFFFF),
            ComputeDType::F16 => {
                Scan::lanes(c, |x, _| u32::from(dt.round(x).to_bits() != x.to_bits()))
            }
        };
        // NaN and ±inf need no rounding; only finite inexact values matter.
        if nonfinite != 0 && dt != ComputeDType::F32 {
            inexact = u32::from(c.iter().any(|&x| x.is_finite() && dt.round(x) != x));
        }
        Scan { inexact, nonfinite, max_abs_bits: max_abs }
    }

    /// (inexact, nonfinite, largest `|x|` bits) with `inexact_of(x, |x| bits)` per element.
    #[inline(always)]
    fn lanes(c: &[f32], inexact_of: impl Fn(f32, u32) -> u32) -> (u32, u32, u32) {
        let (mut inexact, mut nonfinite, mut max_abs) = (0u32, 0u32, 0u32);
        for &x in c {
            let b = x.to_bits() & 0x7FFF_FFFF;
            nonfinite |= u32::from(b >= 0x7F80_0000);
            max_abs = max_abs.max(b);
            inexact |= inexact_of(x, b);
        }
        (inexact, nonfinite, max_abs)
    }

    fn merge(a: Scan, b: Scan) -> Scan {
        Scan {
            inexact: a.inexact | b.inexact,
            nonfinite: a.nonfinite | b.nonfinite,
            max_abs_bits: a.max_abs_bits.max(b.max_abs_bits),
        }
    }
}

fn prepare_slow<'a>(m: &Matrix<'a>, opts: &Options) -> Result<Cow<'a, [f32]>, FloatError> {
    let cols = m.cols.max(1);
    if !opts.allow_nonfinite {
        if let Some(index) = m.data.iter().position(|x| !x.is_finite()) {
            let value = m.data[index];
            return Err(FloatError::NonFinite {
                index,
                row: index / cols,
                col: index % cols,
                value,
            });
        }
    }
    if opts.compute == ComputeDType::F32 {
        return Ok(Cow::Borrowed(m.data));
    }
    let mut out = Vec::with_capacity(m.data.len());
    for (index, &x) in m.data.iter().enumerate() {
        let r = opts.compute.round(x);
        if x.is_finite() && !r.is_finite() {
            return Err(FloatError::OutOfRange {
                index,
                row: index / cols,
                col: index % cols,
                value: x,
                dtype: opts.compute,
            });
        }
        out.push(r);
    }
    Ok(Cow::Owned(out))
}

/// Largest finite magnitude, ignoring NaN and ±inf (see the non-finite policy); 0 for none.
#[inline]
fn finite_amax(xs: impl IntoIterator<Item = f32>) -> f32 {
    // Selects instead of a filter (NaN and ±inf count as 0), so block loops vectorize.
    xs.into_iter().fold(0.0f32, |m, x| {
        let a = x.abs();
        let a = if a < f32::INFINITY { a } else { 0.0 };
        if a > m {
            a
        } else {
            m
        }
    })
}

/// [`finite_amax`] of a whole tensor, in parallel (max is exact, so the result does not depend
/// on the split).
fn par_finite_amax(xs: &[f32]) -> f32 {
    use rayon::prelude::*;
    xs.par_chunks(PAR_CHUNK).map(|c| finite_amax(c.iter().copied())).reduce(|| 0.0, f32::max)
}

/// `x.clamp(-max, max)` that lets NaN through, as `torch.clamp` does.
#[inline]
fn clamp_sym(x: f32, max: f32) -> f32 {
    if x > max {
        max
    } else if x < -max {
        -max
    } else {
        x
    }
}

fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Saturates instead of overflowing: a lying shape then fails the length checks that follow
/// rather than panicking here.
fn roundup(a: usize, m: usize) -> usize {
    a.div_ceil(m).saturating_mul(m)
}

/// `log2` of an `f32`, rounded once to `f32` — what a correctly rounded `log2f` (glibc, torch's
/// CPU kernels on the values that matter here) returns. Exact for powers of two. The rounding is
/// visible: for `x` a few ulps away from `2^k` (|k| ≥ 4) the result is exactly `k`, which moves
/// a `floor`/`ceil` taken on it; the MX rules below inherit that from their producers.
fn log2_f32(x: f32) -> f32 {
    (x as f64).log2() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_rejects_wrong_length_and_overflowing_shape() {
        let d = [0.0f32; 6];
        assert!(Matrix::new(&d, 2, 3).is_ok());
        assert_eq!(
            Matrix::new(&d, 4, 2).unwrap_err(),
            FloatError::Shape { rows: 4, cols: 2, expected: Some(8), got: 6 }
        );
        assert!(matches!(
            Matrix::new(&d, usize::MAX, 2),
            Err(FloatError::Shape { expected: None, .. })
        ));
    }

    #[test]
    fn prepare_names_the_first_nonfinite_element() {
        let d = [1.0, 2.0, 3.0, f32::INFINITY, f32::NAN, 0.0];
        let m = Matrix::new(&d, 2, 3).unwrap();
        let err = prepare(&m, &Options::default()).unwrap_err();
        assert!(matches!(err, FloatError::NonFinite { index: 3, row: 1, col: 0, .. }), "{err}");
        let ok = prepare(&m, &Options { allow_nonfinite: true, ..Default::default() }).unwrap();
        assert_eq!(ok.len(), 6);
    }

    #[test]
    fn prepare_rejects_values_the_compute_dtype_cannot_hold() {
        let d = [1.0, 70000.0];
        let m = Matrix::new(&d, 1, 2).unwrap();
        let opts = Options { compute: ComputeDType::F16, allow_nonfinite: false };
        let err = prepare(&m, &opts).unwrap_err();
        assert!(matches!(err, FloatError::OutOfRange { index: 1, .. }), "{err}");
        let opts = Options { compute: ComputeDType::BF16, allow_nonfinite: false };
        assert_eq!(prepare(&m, &opts).unwrap()[1], 70144.0, "bf16 rounds, it does not overflow");
    }

    #[test]
    fn bf16_round_equals_the_half_crate_on_every_kind_of_input() {
        let mut x = 0x0001_2345u32;
        let specials =
            [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE];
        for i in 0..2_000_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v =
                if i < specials.len() as u32 { specials[i as usize] } else { f32::from_bits(x) };
            let want = half::bf16::from_f32(v).to_f32();
            let got = round_bf16(v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{v:e} ({:#x}): {got:e} vs {want:e}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn prepare_borrows_exact_values_and_copies_otherwise() {
        let d = [1.0f32, -0.5, 3.0];
        let m = Matrix::new(&d, 1, 3).unwrap();
        let bf = Options { compute: ComputeDType::BF16, allow_nonfinite: false };
        assert!(matches!(prepare(&m, &bf).unwrap(), Cow::Borrowed(_)));
        let d = [1.0f32, 1.0 + 1.0 / 1024.0];
        let m = Matrix::new(&d, 1, 2).unwrap();
        let p = prepare(&m, &bf).unwrap();
        assert!(matches!(p, Cow::Owned(_)));
        assert_eq!(&*p, &[1.0, 1.0]);
        assert_eq!(par_finite_amax(&[1.0, f32::NAN, -7.0, f32::INFINITY]), 7.0);
    }

    #[test]
    fn compute_round_is_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
        assert_eq!(ComputeDType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(ComputeDType::BF16.round(1.0 + 3.0 / 256.0), 1.015625);
        assert_eq!(ComputeDType::F16.round(1.0 + 1.0 / 2048.0), 1.0);
        assert_eq!(ComputeDType::F32.round(0.1), 0.1);
    }

    #[test]
    fn finite_amax_skips_nonfinite() {
        assert_eq!(finite_amax([1.0, -3.0, f32::NAN, f32::NEG_INFINITY]), 3.0);
        assert_eq!(finite_amax([]), 0.0);
    }
}
