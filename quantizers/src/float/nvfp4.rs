//! NVFP4: E2M1 elements in blocks of 16 along K, one E4M3 scale per block, one F32 scale per
//! tensor. Three producers write it, each with its own scale arithmetic and storage layout; all
//! three are reproduced here (formats.md §1.3.2, §2.4, §5.2, §5.3).
//!
//! | step | ModelOpt (§5.2) | compressed-tensors (§2.4) | ComfyUI / comfy-kitchen (§1.3.2) |
//! |------|-----------------|---------------------------|----------------------------------|
//! | tensor scale | `ws2 = amax/2688` (f32) | `gs = (1/max(amax, tiny))·2688`, each step in the weight's dtype, non-finite → 1 | `ts = amax/2688` in the weight's dtype |
//! | stored as | multiplier `weight_scale_2` | divisor `weight_global_scale` | multiplier `weight_scale_2` |
//! | block scale | `bamax / (6·ws2)`, exact zero → 1.0, then E4M3 | `gs · (bamax/6 in the weight's dtype)`, clamp ±448, E4M3, zero → 0.125 (E4M3 eps) | `min((bamax/6)/ts, 448)`, E4M3 |
//! | element | `x / (bs·ws2)` | `x / (bs/gs)`, clamp ±6 | `x / (ts·bs)`, clamp ±6; block with `ts·bs = 0` → zeros |
//! | E2M1 sign of zero | `x < 0` ([`e2m1::encode_lt0`]) | `x < 0` | sign bit ([`e2m1::encode`]) |
//! | nibbles | even → low | even → low | even → **high** |
//! | block scales | row-major `[N, K/16]` | row-major `[N, K/16]` | `to_blocked` swizzle, `[roundup(Np,128), roundup(Kp/16,4)]` |
//! | padding | K % 16 = 0 required | K % 16 = 0 required | N, K zero-padded to multiples of 16 |
//!
//! All divisions/products above are single f32 operations in the order written; "in the weight's
//! dtype" means the result is rounded to it (torch arithmetic on the observed bf16/f16 tensor —
//! compressed-tensors' observers take `amin`/`amax` of the weight itself, ComfyUI divides the
//! weight's own `amax`). Dequantization: `e2m1 · (bs·ws2)` (ModelOpt, ComfyUI `ts·bs`) or
//! `e2m1 · (bs/gs)` (compressed-tensors), in f32.
//!
//! `fp4_experimental` (the ComfyUI-style seed name) is ComfyUI's arithmetic with the tensor
//! scale fixed at 1.0: block scales are then `bamax/6` itself, clamped to 448 (blocks with
//! amax > 2688 saturate) and flushed to zero below E4M3's half-smallest subnormal (`bamax/6 <
//! 2^-10`, i.e. blocks with amax below ~0.0059 quantize to all zeros). Use `fp4_scaled` unless the
//! weights are known to sit in that window.
//!
//! Where a producer's own output would be garbage, qtool writes something sane and says so:
//! an all-zero tensor (ModelOpt: `0/0` scales, NaN bytes; ComfyUI: the same) is written as zero
//! codes with block scale 1.0 (ModelOpt) or 0 (ComfyUI) and tensor scale 0; a non-zero tensor
//! whose ComfyUI tensor scale rounds to zero in F16 (amax < ~8e-5) is an error.
//!
//! ModelOpt's zero rule acts before the E4M3 cast, so a block whose scale is non-zero but
//! rounds to E4M3 zero (`bamax/(6·ws2) ≤ 2^-10`, block amax below ~1/458752 of the tensor amax)
//! gets scale byte 0 and elements `x/0`: ±inf → ±6 codes, `0/0` → code 7, all dequantizing to 0.
//! qtool writes exactly that.
//!
//! The layouts convert into each other without touching an element code or block scale byte
//! ([`Nvfp4Tensor::to_layout`]): nibble swap, swizzle/unswizzle with padding, and for
//! compressed-tensors the reciprocal of the tensor scale — the one lossy step, since `1/(1/x)`
//! in f32 can be one ulp off `x` (exact for powers of two).

use qtool_formats::codec::{Fp8Format, Overflow};

use super::e2m1::{self, NibbleOrder};
use super::swizzle;
use rayon::prelude::*;

use super::{
    clamp_sym, finite_amax, prepare_amax, roundup, ComputeDType, FloatError, Matrix, Options,
};

/// Elements per block.
pub const BLOCK: usize = 16;
/// `448 · 6`: E4M3 max times E2M1 max.
pub const FP8_FP4_MAX: f32 = 2688.0;
const E4M3: Fp8Format = Fp8Format::E4M3Fn;

/// Whose arithmetic picks the scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Producer {
    ModelOpt,
    CompressedTensors,
    Comfy,
    /// ComfyUI arithmetic with the tensor scale fixed at 1.0 (`fp4_experimental`).
    ComfyExperimental,
}

/// How the parts are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `weight` `[N, K/2]` even→low, `weight_scale` `[N, K/16]`, `weight_scale_2` = multiplier.
    ModelOpt,
    /// `weight_packed` `[N, K/2]` even→low, `weight_scale` `[N, K/16]`, `weight_global_scale` =
    /// divisor.
    CompressedTensors,
    /// `weight` `[Np, Kp/2]` even→high, `weight_scale` swizzled, `weight_scale_2` = multiplier.
    Comfy,
}

impl Producer {
    pub const fn layout(self) -> Layout {
        match self {
            Producer::ModelOpt => Layout::ModelOpt,
            Producer::CompressedTensors => Layout::CompressedTensors,
            Producer::Comfy | Producer::ComfyExperimental => Layout::Comfy,
        }
    }
}

/// A quantized NVFP4 tensor in one layout, container-agnostic.
#[derive(Clone, Debug, PartialEq)]
pub struct Nvfp4Tensor {
    pub layout: Layout,
    /// Logical shape `[N, K]` of the weight.
    pub rows: usize,
    pub cols: usize,
    /// Packed E2M1 codes.
    pub packed: Vec<u8>,
    pub packed_shape: [usize; 2],
    /// E4M3 block-scale bytes.
    pub block_scales: Vec<u8>,
    pub block_scales_shape: [usize; 2],
    /// The tensor scale as stored: a multiplier (ModelOpt, Comfy) or a divisor
    /// (compressed-tensors).
    pub global_scale: f32,
}

/// Shapes of the stored parts: (packed, block scales).
fn part_shapes(
    layout: Layout,
    rows: usize,
    cols: usize,
) -> Result<([usize; 2], [usize; 2]), FloatError> {
    match layout {
        Layout::ModelOpt | Layout::CompressedTensors => {
            if cols % BLOCK != 0 {
                return Err(FloatError::Unsupported {
                    scheme: if layout == Layout::ModelOpt { "nvfp4 (modelopt)" } else { "nvfp4 (compressed-tensors)" },
                    reason: format!("in_features {cols} is not a multiple of {BLOCK} (vLLM requires it; only the ComfyUI layout pads)"),
                });
            }
            Ok(([rows, cols / 2], [rows, cols / BLOCK]))
        }
        Layout::Comfy => {
            let (np, kp) = (roundup(rows, BLOCK), roundup(cols, BLOCK));
            Ok(([np, kp / 2], swizzle::blocked_shape(np, kp / BLOCK)))
        }
    }
}

/// Quantizes a `[N, K]` weight the way `producer` does.
pub fn quantize(
    m: &Matrix<'_>,
    producer: Producer,
    opts: &Options,
) -> Result<Nvfp4Tensor, FloatError> {
    let layout = producer.layout();
    let (packed_shape, block_scales_shape) = part_shapes(layout, m.rows(), m.cols())?;
    let (x, amax) = prepare_amax(m, opts)?;
    let dt = opts.compute;
    let (rows, cols) = (m.rows(), m.cols());
    // Working grid: [rows_p, cols_p], zero-padded (padding only for ComfyUI).
    let (rows_p, cols_p) = match layout {
        Layout::Comfy => (roundup(rows, BLOCK), roundup(cols, BLOCK)),
        _ => (rows, cols),
    };
    let nb = cols_p / BLOCK;

    // The tensor-level numbers first; then every block depends only on its 16 values and
    // these, so rows are quantized in parallel without changing a byte.
    let rule = match producer {
        Producer::ModelOpt => {
            let ws2 = amax / FP8_FP4_MAX;
            BlockRule::ModelOpt { ws2, d6: 6.0 * ws2, zero_tensor: amax == 0.0 }
        }
        Producer::CompressedTensors => {
            // `448 * 6 / max_val_pos` is a Python scalar divided by a tensor, which torch
            // evaluates as `max_val_pos.reciprocal() * 2688` (`Tensor.__rtruediv__`): two
            // roundings in the weight's dtype, not one correctly rounded quotient.
            let mut gs = dt.round(dt.round(1.0 / amax.max(dt.tiny())) * FP8_FP4_MAX);
            if !gs.is_finite() {
                gs = 1.0;
            }
            BlockRule::CompressedTensors {
                gs,
                dt,
                eps_code: E4M3.encode(0.125, Overflow::Saturate),
            }
        }
        Producer::Comfy | Producer::ComfyExperimental => {
            let ts = if producer == Producer::Comfy { dt.round(amax / FP8_FP4_MAX) } else { 1.0 };
            if ts == 0.0 && amax > 0.0 {
                return Err(FloatError::Unsupported {
                    scheme: "nvfp4 (comfy)",
                    reason: format!(
                        "the tensor scale amax/2688 = {} rounds to zero in {dt}; quantize in F32",
                        amax / FP8_FP4_MAX
                    ),
                });
            }
            BlockRule::Comfy { ts }
        }
    };
    let global_scale = match rule {
        BlockRule::ModelOpt { ws2, .. } => ws2,
        BlockRule::CompressedTensors { gs, .. } => gs,
        BlockRule::Comfy { ts } => ts,
    };
    let order = if layout == Layout::Comfy { NibbleOrder::EvenHigh } else { NibbleOrder::EvenLow };
    let mut packed = vec![0u8; rows_p * cols_p / 2];
    let mut scales = vec![0u8; rows_p * nb];
    packed.par_chunks_mut(cols_p / 2).zip(scales.par_chunks_mut(nb)).enumerate().for_each(
        |(r, (prow, srow))| {
            let mut block = [0.0f32; BLOCK];
            let mut codes = [0u8; BLOCK];
            // ComfyUI's whole blocks (every block but a padded tail) take the vectorized row
            // kernel; it computes the same bytes as `BlockRule::block` (tested below).
            let mut first = 0;
            if let (BlockRule::Comfy { ts }, true) = (rule, r < rows) {
                if ts != 0.0 {
                    first = cols / BLOCK;
                    comfy_row(
                        &x[r * cols..][..first * BLOCK],
                        ts,
                        &mut prow[..first * BLOCK / 2],
                        &mut srow[..first],
                    );
                }
            }
            for (b, scale) in srow.iter_mut().enumerate().skip(first) {
                let c0 = b * BLOCK;
                if r < rows && c0 + BLOCK <= cols {
                    block.copy_from_slice(&x[r * cols + c0..][..BLOCK]);
                } else {
                    fill(&mut block, |i| {
                        if r < rows && c0 + i < cols {
                            x[r * cols + c0 + i]
                        } else {
                            0.0
                        }
                    });
                }
                *scale = rule.block(&block, &mut codes);
                for (o, p) in prow[c0 / 2..][..BLOCK / 2].iter_mut().zip(codes.chunks_exact(2)) {
                    *o = match order {
                        NibbleOrder::EvenLow => p[0] | (p[1] << 4),
                        NibbleOrder::EvenHigh => (p[0] << 4) | p[1],
                    };
                }
            }
        },
    );
    let block_scales = match layout {
        Layout::Comfy => swizzle::to_blocked(&scales, rows_p, nb)?,
        _ => scales,
    };
    debug_assert_eq!(packed.len(), packed_shape[0] * packed_shape[1]);
    debug_assert_eq!(block_scales.len(), block_scales_shape[0] * block_scales_shape[1]);
    Ok(Nvfp4Tensor {
        layout,
        rows,
        cols,
        packed,
        packed_shape,
        block_scales,
        block_scales_shape,
        global_scale,
    })
}

/// ComfyUI's arithmetic (`BlockRule::Comfy` with `ts != 0`, even→high nibbles) over a row of
/// whole blocks: `x.len() == 16·srow.len() == 2·prow.len()`.
///
/// The same source is compiled twice, once with AVX2 (picked at run time) and once for the
/// baseline target; every operation in it is an exact IEEE operation (division, comparison,
/// bit logic), so the vector and scalar builds give the same bytes — the division stays a
/// division, as the producers write it.
fn comfy_row(x: &[f32], ts: f32, prow: &mut [u8], srow: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { comfy_row_avx2(x, ts, prow, srow) };
        return;
    }
    comfy_row_body(x, ts, prow, srow);
}

/// [`comfy_row_body`] with the block amax and the element loop in AVX2 intrinsics (LLVM leaves
/// the amax reduction and the nibble pairing scalar). The scale arithmetic is the same scalar
/// code; the element steps are the same IEEE operations lane by lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn comfy_row_avx2(x: &[f32], ts: f32, prow: &mut [u8], srow: &mut [u8]) {
    use std::arch::x86_64::*;
    let abs_mask = _mm256_set1_epi32(0x7FFF_FFFF);
    let inf_bits = _mm256_set1_epi32(0x7F80_0000);
    // Magnitude boundaries: `>` for ties that go down, `>=` for ties that go up (e2m1.rs).
    let (b1, b2, b3) = (_mm256_set1_ps(0.25), _mm256_set1_ps(0.75), _mm256_set1_ps(1.25));
    let (b4, b5, b6) = (_mm256_set1_ps(1.75), _mm256_set1_ps(2.5), _mm256_set1_ps(3.5));
    let b7 = _mm256_set1_ps(5.0);
    // `16·even + odd` in each 16-bit pair: the even→high byte.
    let pair = _mm256_set1_epi32(0x0001_0010);
    let pick = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let blocks = x.chunks_exact(BLOCK).zip(prow.chunks_exact_mut(BLOCK / 2));
    for ((xb, pb), scale) in blocks.zip(srow.iter_mut()) {
        // SAFETY (all loads/stores): `xb` has 16 f32 and `pb` 8 bytes (chunks_exact).
        let (v0, v1) =
            unsafe { (_mm256_loadu_ps(xb.as_ptr()), _mm256_loadu_ps(xb.as_ptr().add(8))) };
        // Finite amax on the bit patterns, as `block_amax`.
        let finite = |v: __m256| {
            let b = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
            _mm256_and_si256(b, _mm256_cmpgt_epi32(inf_bits, b))
        };
        let m = _mm256_max_epu32(finite(v0), finite(v1));
        let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0b01_00_11_10));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0b10_11_00_01));
        let amax = f32::from_bits(_mm_cvtsi128_si32(m) as u32);
        let bs = ((amax / 6.0) / ts).min(448.0);
        let code = E4M3.encode(bs, Overflow::Saturate);
        *scale = code;
        let total = ts * E4M3.decode(code);
        if total == 0.0 {
            pb.copy_from_slice(&[0; BLOCK / 2]);
            continue;
        }
        let t = _mm256_set1_ps(total);
        let codes = |v: __m256| {
            let q = _mm256_div_ps(v, t);
            let a = _mm256_and_ps(q, _mm256_castsi256_ps(abs_mask));
            let gt = |b| _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(a, b));
            let ge = |b| _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(a, b));
            // Each true comparison is -1: subtracting counts the boundaries below `a`.
            let n = _mm256_add_epi32(_mm256_add_epi32(gt(b1), ge(b2)), gt(b3));
            let n = _mm256_add_epi32(_mm256_add_epi32(n, ge(b4)), gt(b5));
            let n = _mm256_add_epi32(_mm256_add_epi32(n, ge(b6)), gt(b7));
            let mag = _mm256_sub_epi32(_mm256_setzero_si256(), n);
            let sign = _mm256_slli_epi32::<3>(_mm256_srli_epi32::<31>(_mm256_castps_si256(q)));
            _mm256_or_si256(sign, mag)
        };
        // 16 codes as i16, in element order: packus interleaves 128-bit lanes, permute undoes it.
        let c16 = _mm256_packus_epi32(codes(v0), codes(v1));
        let c16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(c16);
        // Pairs → `16·c[2i] + c[2i+1]` in 8 i32 lanes; take the low byte of each.
        let bytes = _mm256_shuffle_epi8(_mm256_madd_epi16(c16, pair), pick);
        let packed =
            _mm_unpacklo_epi32(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
        unsafe { _mm_storel_epi64(pb.as_mut_ptr().cast(), packed) };
    }
}

#[inline(always)]
fn comfy_row_body(x: &[f32], ts: f32, prow: &mut [u8], srow: &mut [u8]) {
    let blocks = x.chunks_exact(BLOCK).zip(prow.chunks_exact_mut(BLOCK / 2));
    for ((xb, pb), scale) in blocks.zip(srow.iter_mut()) {
        let Ok(xb) = <&[f32; BLOCK]>::try_from(xb) else { continue };
        let bs = ((block_amax(xb) / 6.0) / ts).min(448.0);
        let code = E4M3.encode(bs, Overflow::Saturate);
        *scale = code;
        let total = ts * E4M3.decode(code);
        let bytes = if total == 0.0 { [0; BLOCK / 2] } else { e2m1_even_high(xb, total) };
        pb.copy_from_slice(&bytes);
    }
}

/// [`finite_amax`] of one block on the bit patterns (non-negative floats order like their
/// bits; NaN and ±inf count as 0), so it is a vector `max`.
#[inline(always)]
fn block_amax(xb: &[f32; BLOCK]) -> f32 {
    let mut m = 0u32;
    for &v in xb {
        let b = v.to_bits() & 0x7FFF_FFFF;
        m = m.max(if b < 0x7F80_0000 { b } else { 0 });
    }
    f32::from_bits(m)
}

/// `e2m1::encode(clamp_sym(v / total, 6))` for the 16 elements, packed even→high. The clamp
/// is left out: it changes no code (beyond ±5 the magnitude is 7 either way, and the sign is
/// kept). Computed in 32-bit lanes so that it vectorizes.
#[inline(always)]
fn e2m1_even_high(xb: &[f32; BLOCK], total: f32) -> [u8; BLOCK / 2] {
    let mut c = [0u32; BLOCK];
    for (o, &v) in c.iter_mut().zip(xb) {
        let b = (v / total).to_bits();
        let a = f32::from_bits(b & 0x7FFF_FFFF);
        // The comparisons of `e2m1::magnitude`: ties to the even code.
        let mag = u32::from(a > 0.25)
            + u32::from(a >= 0.75)
            + u32::from(a > 1.25)
            + u32::from(a >= 1.75)
            + u32::from(a > 2.5)
            + u32::from(a >= 3.5)
            + u32::from(a > 5.0);
        *o = ((b >> 31) << 3) | mag;
    }
    let mut out = [0u8; BLOCK / 2];
    for (o, p) in out.iter_mut().zip(c.chunks_exact(2)) {
        *o = ((p[0] << 4) | p[1]) as u8;
    }
    out
}

fn fill(block: &mut [f32; BLOCK], f: impl Fn(usize) -> f32) {
    for (i, v) in block.iter_mut().enumerate() {
        *v = f(i);
    }
}

/// Each producer's arithmetic for one 16-element block, given its tensor-level numbers.
#[derive(Clone, Copy, Debug)]
enum BlockRule {
    /// `ws2 = amax/2688`, `bs = bamax/(6·ws2)` (1.0 when it is 0), codes of `v/(e4m3(bs)·ws2)`.
    ModelOpt { ws2: f32, d6: f32, zero_tensor: bool },
    /// `s = gs · round_dt(bamax/6)` cast to E4M3 (eps 0.125 for zero), codes of
    /// `clamp(v/(e4m3(s)/gs), ±6)`.
    CompressedTensors { gs: f32, dt: ComputeDType, eps_code: u8 },
    /// `bs = min((bamax/6)/ts, 448)`, codes of `clamp(v/(ts·e4m3(bs)), ±6)`; a zero total
    /// scale gives zero codes.
    Comfy { ts: f32 },
}

impl BlockRule {
    /// Writes the block's E2M1 codes and returns its E4M3 scale code.
    #[inline]
    fn block(self, block: &[f32; BLOCK], codes: &mut [u8; BLOCK]) -> u8 {
        match self {
            BlockRule::ModelOpt { ws2, d6, zero_tensor } => {
                if zero_tensor {
                    // ModelOpt computes 0/0 here; qtool writes zeros under scale 1.0.
                    for (o, &v) in codes.iter_mut().zip(block) {
                        *o = if v.is_finite() { 0 } else { e2m1::encode_lt0(v) };
                    }
                    return E4M3.encode(1.0, Overflow::Saturate);
                }
                let mut bs = finite_amax(*block) / d6;
                if bs == 0.0 {
                    bs = 1.0;
                }
                let code = E4M3.encode(bs, Overflow::Saturate);
                let divisor = E4M3.decode(code) * ws2;
                for (o, &v) in codes.iter_mut().zip(block) {
                    *o = e2m1::encode_lt0(v / divisor);
                }
                code
            }
            BlockRule::CompressedTensors { gs, dt, eps_code } => {
                let s = gs * dt.round(finite_amax(*block) / 6.0);
                let mut code = E4M3.encode(clamp_sym(s, 448.0), Overflow::Saturate);
                if code & 0x7F == 0 {
                    code = eps_code;
                }
                let eff = E4M3.decode(code) / gs;
                for (o, &v) in codes.iter_mut().zip(block) {
                    *o = e2m1::encode_lt0(clamp_sym(v / eff, e2m1::MAX));
                }
                code
            }
            BlockRule::Comfy { ts } => {
                if ts == 0.0 {
                    // All-zero tensor: ComfyUI would compute 0/0; zeros under scale 0.
                    for (o, &v) in codes.iter_mut().zip(block) {
                        *o = if v.is_finite() { 0 } else { e2m1::encode(v) };
                    }
                    return 0;
                }
                let bs = ((finite_amax(*block) / 6.0) / ts).min(448.0);
                let code = E4M3.encode(bs, Overflow::Saturate);
                let total = ts * E4M3.decode(code);
                if total == 0.0 {
                    *codes = [0; BLOCK];
                    return code;
                }
                for (o, &v) in codes.iter_mut().zip(block) {
                    *o = e2m1::encode(clamp_sym(v / total, e2m1::MAX));
                }
                code
            }
        }
    }
}

/// The layout-independent content: codes `[rows, cols_p]` row-major, block scales
/// `[rows, cols_p/16]` row-major, tensor scale as a multiplier or divisor.
struct Canonical {
    cols_p: usize,
    codes: Vec<u8>,
    scales: Vec<u8>,
}

impl Nvfp4Tensor {
    /// Reassembles a tensor read from a checkpoint, checking every part's length.
    pub fn from_parts(
        layout: Layout,
        rows: usize,
        cols: usize,
        packed: Vec<u8>,
        block_scales: Vec<u8>,
        global_scale: f32,
    ) -> Result<Self, FloatError> {
        let (packed_shape, block_scales_shape) = part_shapes(layout, rows, cols)?;
        let np = packed_shape[0].checked_mul(packed_shape[1]);
        let ns = block_scales_shape[0].checked_mul(block_scales_shape[1]);
        let (Some(np), Some(ns)) = (np, ns) else {
            return Err(FloatError::Shape { rows, cols, expected: None, got: packed.len() });
        };
        if packed.len() != np {
            return Err(FloatError::PartLength {
                part: "nvfp4 packed weight",
                expected: np,
                got: packed.len(),
            });
        }
        if block_scales.len() != ns {
            return Err(FloatError::PartLength {
                part: "nvfp4 block scales",
                expected: ns,
                got: block_scales.len(),
            });
        }
        Ok(Nvfp4Tensor {
            layout,
            rows,
            cols,
            packed,
            packed_shape,
            block_scales,
            block_scales_shape,
            global_scale,
        })
    }

    fn canonical(&self) -> Result<Canonical, FloatError> {
        let order = match self.layout {
            Layout::Comfy => NibbleOrder::EvenHigh,
            _ => NibbleOrder::EvenLow,
        };
        let cols_p = self.packed_shape[1] * 2;
        let mut codes = e2m1::unpack(&self.packed, order);
        codes.truncate(self.rows * cols_p); // Comfy: drop the padded rows
        let scales = match self.layout {
            Layout::Comfy => {
                let all = swizzle::from_blocked(
                    &self.block_scales,
                    self.packed_shape[0],
                    cols_p / BLOCK,
                )?;
                all[..self.rows * (cols_p / BLOCK)].to_vec()
            }
            _ => self.block_scales.clone(),
        };
        Ok(Canonical { cols_p, codes, scales })
    }

    /// The tensor scale as a multiplier (`ws2`), whatever the layout stores.
    pub fn tensor_scale_multiplier(&self) -> f32 {
        match self.layout {
            Layout::CompressedTensors => 1.0 / self.global_scale,
            _ => self.global_scale,
        }
    }

    /// Dequantizes to row-major `[rows, cols]` f32 (padding dropped).
    pub fn dequantize(&self) -> Result<Vec<f32>, FloatError> {
        let c = self.canonical()?;
        let nb = c.cols_p / BLOCK;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for k in 0..self.cols {
                let bs = E4M3.decode(c.scales[r * nb + k / BLOCK]);
                let scale = match self.layout {
                    Layout::CompressedTensors => bs / self.global_scale,
                    _ => self.global_scale * bs,
                };
                out.push(e2m1::decode(c.codes[r * c.cols_p + k]) * scale);
            }
        }
        Ok(out)
    }

    /// The same quantized content in another layout. Codes and block-scale bytes are moved, never
    /// recomputed; only the compressed-tensors tensor scale is a reciprocal (see the module doc).
    pub fn to_layout(&self, target: Layout) -> Result<Nvfp4Tensor, FloatError> {
        if target == self.layout {
            return Ok(self.clone());
        }
        let (packed_shape, block_scales_shape) = part_shapes(target, self.rows, self.cols)?;
        let c = self.canonical()?;
        let nb = c.cols_p / BLOCK;
        let (packed, block_scales) = match target {
            Layout::Comfy => {
                let np = packed_shape[0];
                let mut codes = c.codes;
                codes.resize(np * c.cols_p, 0);
                let mut scales = c.scales;
                scales.resize(np * nb, 0);
                (e2m1::pack(&codes, NibbleOrder::EvenHigh), swizzle::to_blocked(&scales, np, nb)?)
            }
            _ => (e2m1::pack(&c.codes, NibbleOrder::EvenLow), c.scales),
        };
        let global_scale = match (self.layout, target) {
            (Layout::CompressedTensors, _) | (_, Layout::CompressedTensors) => {
                1.0 / self.global_scale
            }
            _ => self.global_scale,
        };
        Ok(Nvfp4Tensor {
            layout: target,
            rows: self.rows,
            cols: self.cols,
            packed,
            packed_shape,
            block_scales,
            block_scales_shape,
            global_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::ComputeDType;

    fn sample(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if i % 97 == 5 {
                    u * 40.0
                } else {
                    u
                }
            })
            .collect()
    }

    #[test]
    fn modelopt_known_block() {
        // amax 6·448 = 2688 → ws2 = 1; block amax 6 → bs = 1.0; elements are their own codes.
        let mut w = vec![0.0f32; 32];
        w[..8].copy_from_slice(&[6.0, -3.0, 0.75, -0.25, 1.25, 5.0, 0.0, -0.0]);
        w[16] = 2688.0;
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize(&m, Producer::ModelOpt, &Options::default()).unwrap();
        assert_eq!(q.global_scale, 1.0);
        assert_eq!(q.block_scales, [0x38, 0x7E]);
        // codes 7, 13(−3), 2, 8(−0 via x<0), 2, 6, 0, 0 (−0.0 → 0 under x<0)
        assert_eq!(&q.packed[..4], &[0xD7, 0x82, 0x62, 0x00]);
        assert_eq!(q.packed_shape, [1, 16]);
        assert_eq!(q.block_scales_shape, [1, 2]);
    }

    /// Blocks that stress every branch of the ComfyUI arithmetic: exact E2M1 ties and their
    /// neighbours, signed zeros, f32 subnormals, NaN/±inf (the allow-non-finite policy),
    /// scales that clamp at 448 or round to E4M3 zero, and random values.
    fn adversarial_blocks() -> Vec<[f32; BLOCK]> {
        let ties = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
        let mut out = vec![[0.0; BLOCK], [-0.0; BLOCK]];
        for e in [-12i32, -9, -3, 0, 1, 5, 8, 20] {
            let p = 2f32.powi(e);
            for nudge in [0i32, -1, 1] {
                let mut b = [0.0f32; BLOCK];
                b[0] = 6.0 * p; // block amax 6·2^e: scale 2^e, exact in E4M3 for e in [-9, 8]
                for (i, t) in ties.iter().enumerate() {
                    let v = f32::from_bits(((t * p).to_bits() as i32 + nudge) as u32);
                    b[1 + i] = v;
                    b[8 + i] = -v;
                }
                b[15] = -6.0 * p;
                out.push(b);
            }
        }
        let mut sub = [0.0f32; BLOCK];
        for (i, v) in sub.iter_mut().enumerate() {
            *v = f32::from_bits(1 + 997 * i as u32) * if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        out.push(sub);
        let mut special = [1.0f32; BLOCK];
        special[..6].copy_from_slice(&[
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            3.0,
        ]);
        out.push(special);
        let mut nan_only = [f32::NAN; BLOCK];
        nan_only[3] = f32::NEG_INFINITY;
        out.push(nan_only);
        out.push([f32::MAX; BLOCK]);
        let mut mixed = [f32::MAX; BLOCK];
        mixed[1] = -f32::MAX;
        mixed[2] = 1e-3;
        out.push(mixed);
        for seed in 0..64 {
            let w = sample(1, BLOCK, seed);
            let scale = 2f32.powi(seed as i32 % 40 - 20);
            out.push(std::array::from_fn(|i| w[i] * scale));
        }
        out
    }

    #[test]
    fn comfy_row_kernel_equals_the_block_rule_bit_for_bit() {
        let blocks = adversarial_blocks();
        let x: Vec<f32> = blocks.iter().flatten().copied().collect();
        let n = blocks.len();
        let bf = ComputeDType::BF16;
        for ts in
            [1.0f32, 0.5, 3.0 / 1024.0, bf.round(0.0123), 1e-30, 7.0, 448.0, f32::MIN_POSITIVE]
        {
            // The reference: `BlockRule::block`, then even→high packing.
            let (mut want_p, mut want_s) = (vec![0u8; n * 8], vec![0u8; n]);
            for (b, blk) in blocks.iter().enumerate() {
                let mut codes = [0u8; BLOCK];
                want_s[b] = BlockRule::Comfy { ts }.block(blk, &mut codes);
                for (i, p) in codes.chunks_exact(2).enumerate() {
                    want_p[b * 8 + i] = (p[0] << 4) | p[1];
                }
            }
            // The dispatched kernel (AVX2 where the CPU has it) and the baseline build.
            let (mut p, mut s) = (vec![0u8; n * 8], vec![0u8; n]);
            comfy_row(&x, ts, &mut p, &mut s);
            assert_eq!(s, want_s, "dispatched scales, ts {ts:e}");
            assert_eq!(p, want_p, "dispatched codes, ts {ts:e}");
            let (mut p, mut s) = (vec![0u8; n * 8], vec![0u8; n]);
            comfy_row_body(&x, ts, &mut p, &mut s);
            assert_eq!(s, want_s, "baseline scales, ts {ts:e}");
            assert_eq!(p, want_p, "baseline codes, ts {ts:e}");
        }
    }

    #[test]
    fn comfy_quantize_with_a_padded_tail_equals_the_block_rule() {
        // cols = 16·3 + 5: three whole blocks per row take the row kernel, the tail the
        // per-block path; rows 0..7 of 16 are real.
        let (rows, cols) = (7, 53);
        let w = sample(rows, cols, 5);
        let m = Matrix::new(&w, rows, cols).unwrap();
        let q = quantize(&m, Producer::Comfy, &Options::default()).unwrap();
        let ts = q.global_scale;
        let scales = swizzle::from_blocked(&q.block_scales, 16, 4).unwrap();
        for r in 0..16 {
            for b in 0..4 {
                let blk: [f32; BLOCK] = std::array::from_fn(|i| {
                    let c = b * BLOCK + i;
                    if r < rows && c < cols {
                        w[r * cols + c]
                    } else {
                        0.0
                    }
                });
                let mut codes = [0u8; BLOCK];
                let code = BlockRule::Comfy { ts }.block(&blk, &mut codes);
                assert_eq!(scales[r * 4 + b], code, "scale ({r}, {b})");
                for (i, p) in codes.chunks_exact(2).enumerate() {
                    assert_eq!(q.packed[r * 32 + b * 8 + i], (p[0] << 4) | p[1], "({r}, {b}, {i})");
                }
            }
        }
    }

    #[test]
    fn comfy_pads_swizzles_and_puts_even_high() {
        let w = sample(20, 40, 1);
        let m = Matrix::new(&w, 20, 40).unwrap();
        let q = quantize(&m, Producer::Comfy, &Options::default()).unwrap();
        assert_eq!(q.packed_shape, [32, 24]);
        assert_eq!(q.block_scales_shape, [128, 4]);
        // Padded rows are zero bytes, padded scales are zero.
        assert!(q.packed[20 * 24..].iter().all(|&b| b == 0));
        let mo = q.to_layout(Layout::ModelOpt);
        assert!(
            matches!(mo, Err(FloatError::Unsupported { .. })),
            "K = 40 is not a multiple of 16"
        );
        // First element's code is in the high nibble of byte 0.
        let ts = q.global_scale;
        let bs0 = E4M3.decode(q.block_scales[0]);
        assert_eq!(q.packed[0] >> 4, e2m1::encode(clamp_sym(w[0] / (ts * bs0), 6.0)));
    }

    #[test]
    fn layouts_round_trip_losslessly() {
        let w = sample(33, 64, 7);
        let m = Matrix::new(&w, 33, 64).unwrap();
        for p in [Producer::ModelOpt, Producer::CompressedTensors, Producer::Comfy] {
            let q = quantize(&m, p, &Options::default()).unwrap();
            let dq = q.dequantize().unwrap();
            for target in [Layout::ModelOpt, Layout::CompressedTensors, Layout::Comfy] {
                let t = q.to_layout(target).unwrap();
                let back = t.to_layout(q.layout).unwrap();
                assert_eq!(back.packed, q.packed, "{p:?} → {target:?} → back");
                assert_eq!(back.block_scales, q.block_scales);
                let g = back.global_scale;
                assert!((g - q.global_scale).abs() <= q.global_scale * 2.0 * f32::EPSILON);
                // The converted tensor decodes to the same numbers (up to the reciprocal's ulp).
                let d = t.dequantize().unwrap();
                for (a, b) in d.iter().zip(&dq) {
                    assert!((a - b).abs() <= b.abs() * 4.0 * f32::EPSILON, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn modelopt_to_comfy_swaps_nibbles_and_swizzles() {
        let w = sample(16, 32, 3);
        let m = Matrix::new(&w, 16, 32).unwrap();
        let mo = quantize(&m, Producer::ModelOpt, &Options::default()).unwrap();
        let c = mo.to_layout(Layout::Comfy).unwrap();
        let mut swapped = mo.packed.clone();
        e2m1::swap_nibbles(&mut swapped);
        assert_eq!(c.packed, swapped);
        assert_eq!(c.block_scales[swizzle::blocked_index(3, 1, 4)], mo.block_scales[3 * 2 + 1]);
        assert_eq!(c.global_scale, mo.global_scale);
    }

    #[test]
    fn ct_global_scale_is_reciprocal_and_zero_blocks_get_eps() {
        let mut w = vec![0.0f32; 32];
        w[0] = 2688.0;
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize(&m, Producer::CompressedTensors, &Options::default()).unwrap();
        assert_eq!(q.global_scale, 1.0);
        assert_eq!(q.block_scales, [0x7E, 0x20], "448, then eps 0.125 for the zero block");
        let w2: Vec<f32> = w.iter().map(|v| v / 4.0).collect();
        let q2 = quantize(
            &Matrix::new(&w2, 1, 32).unwrap(),
            Producer::CompressedTensors,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(q2.global_scale, 4.0, "divisor 2688/amax");
        assert_eq!(q2.tensor_scale_multiplier(), 0.25);
    }

    #[test]
    fn zero_tensors_quantize_to_zero_codes() {
        let w = vec![0.0f32; 64];
        let m = Matrix::new(&w, 2, 32).unwrap();
        for p in [
            Producer::ModelOpt,
            Producer::CompressedTensors,
            Producer::Comfy,
            Producer::ComfyExperimental,
        ] {
            let q = quantize(&m, p, &Options::default()).unwrap();
            assert!(q.packed.iter().all(|&b| b == 0), "{p:?}");
            assert!(q.dequantize().unwrap().iter().all(|&v| v == 0.0), "{p:?}");
        }
    }

    #[test]
    fn experimental_clamps_block_scales_at_448() {
        let mut w = vec![0.004f32; 32];
        w[0] = 6000.0;
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize(&m, Producer::ComfyExperimental, &Options::default()).unwrap();
        assert_eq!(q.global_scale, 1.0);
        let rm = swizzle::from_blocked(&q.block_scales, 16, 2).unwrap();
        assert_eq!(rm[0], 0x7E, "6000/6 clamps to 448");
        assert_eq!(rm[1], 0x00, "0.004/6 is below E4M3's smallest subnormal: the block is zeroed");
        assert_eq!(q.packed[0] >> 4, 7, "6000/448 saturates to 6");
    }

    #[test]
    fn comfy_tensor_scale_is_rounded_to_the_weight_dtype() {
        let w = sample(16, 32, 11);
        let m = Matrix::new(&w, 16, 32).unwrap();
        let opts = Options { compute: ComputeDType::BF16, allow_nonfinite: false };
        let q = quantize(&m, Producer::Comfy, &opts).unwrap();
        let amax = finite_amax(w.iter().map(|&v| ComputeDType::BF16.round(v)));
        assert_eq!(q.global_scale, ComputeDType::BF16.round(amax / 2688.0));
    }

    #[test]
    fn comfy_f16_tensor_scale_underflow_is_an_error() {
        let w = vec![1e-5f32; 32];
        let m = Matrix::new(&w, 1, 32).unwrap();
        let opts = Options { compute: ComputeDType::F16, allow_nonfinite: false };
        let err = quantize(&m, Producer::Comfy, &opts).unwrap_err();
        assert!(matches!(err, FloatError::Unsupported { .. }), "{err}");
        assert!(quantize(&m, Producer::Comfy, &Options::default()).is_ok());
    }

    #[test]
    fn modelopt_block_scale_rounding_to_zero_gives_saturated_codes() {
        // Block 1's amax is so small that bamax/(6·ws2) rounds to E4M3 zero: ModelOpt divides by
        // zero, ±inf → ±6 codes, 0/0 = NaN → code 7; all dequantize to 0.
        let mut w = vec![0.0f32; 32];
        w[0] = 2688.0;
        w[16] = 1e-4;
        w[17] = -1e-4;
        let m = Matrix::new(&w, 1, 32).unwrap();
        let q = quantize(&m, Producer::ModelOpt, &Options::default()).unwrap();
        assert_eq!(q.block_scales[1], 0);
        assert_eq!(q.packed[8], 0xF7);
        assert_eq!(q.packed[9], 0x77);
        assert!(q.dequantize().unwrap()[16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn from_parts_rejects_absurd_shapes_without_panicking() {
        for layout in [Layout::ModelOpt, Layout::CompressedTensors, Layout::Comfy] {
            for (rows, cols) in [(usize::MAX, 32), (32, usize::MAX - 7), (usize::MAX, usize::MAX)] {
                assert!(Nvfp4Tensor::from_parts(layout, rows, cols, vec![0; 4], vec![0; 4], 1.0)
                    .is_err());
            }
        }
    }

    #[test]
    fn from_parts_rejects_wrong_lengths() {
        let err = Nvfp4Tensor::from_parts(Layout::ModelOpt, 4, 32, vec![0; 63], vec![0; 8], 1.0)
            .unwrap_err();
        assert_eq!(
            err,
            FloatError::PartLength { part: "nvfp4 packed weight", expected: 64, got: 63 }
        );
        let err = Nvfp4Tensor::from_parts(Layout::Comfy, 4, 32, vec![0; 256], vec![0; 8], 1.0)
            .unwrap_err();
        assert_eq!(
            err,
            FloatError::PartLength { part: "nvfp4 block scales", expected: 512, got: 8 }
        );
        let err =
            Nvfp4Tensor::from_parts(Layout::CompressedTensors, 4, 24, vec![0; 48], vec![0; 8], 1.0)
                .unwrap_err();
        assert!(matches!(err, FloatError::Unsupported { .. }));
    }
}
