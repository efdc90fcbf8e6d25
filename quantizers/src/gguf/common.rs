//! Scalar helpers shared by the GGML block codecs: half/bfloat16/E8M0 conversions, ggml's
//! rounding trick and the scale searches of the k-quants.
//!
//! Byte identity with llama.cpp depends on doing every f32 operation in the order the reference
//! does (sums accumulated left to right, `a*b*c` as `(a*b)*c`, no fused multiply-add), so these
//! functions spell the order out rather than using iterator sums that might be reassociated
//! by a later refactor.

use half::f16;

/// Elements per k-quant super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;

/// Below this absolute maximum a k-quant group counts as all zero (`GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Little-endian fp16 bytes to f32 (exact).
#[inline]
pub(crate) fn fp16_to_f32(h: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(h)).to_f32()
}

/// f32 to little-endian fp16 bytes as ggml rounds it: round to nearest even (subnormals too),
/// overflow to infinity, and every NaN to the canonical quiet NaN `0x7E00` with its sign (the
/// `half` crate would keep the payload instead).
#[inline]
pub(crate) fn f32_to_fp16(x: f32) -> [u8; 2] {
    let bits = if x.is_nan() {
        (((x.to_bits() >> 16) & 0x8000) as u16) | 0x7E00
    } else {
        f16::from_f32(x).to_bits()
    };
    bits.to_le_bytes()
}

/// bfloat16 bits to f32 (exact).
#[inline]
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 to bfloat16 bits as ggml's reference row conversion does: round to nearest even, and a
/// NaN keeps its top bits with the quiet bit forced on.
#[inline]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Half of the E8M0 scale `2^(e-127)`, the factor MXFP4 multiplies its doubled E2M1 values by.
/// Codes 0 and 1 give the subnormals 2^-128 and 2^-127; 0xFF is not treated as NaN (ggml
/// rejects it at validation, not at decode).
#[inline]
pub(crate) fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { u32::from(e - 1) << 23 };
    f32::from_bits(bits)
}

/// ggml's `nearest_int`: adding 1.5·2^23 pushes the fraction out of the mantissa, so the FPU's
/// round-to-nearest-even does the rounding. Exact for |f| ≤ 2^22 - 1; outside that range the
/// result is the same garbage ggml computes, which keeps the bytes identical.
#[inline]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0f32;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's `(int8_t)(float)` as x86-64 compilers emit it: truncate toward zero to 32 bits
/// (`cvttss2si`, which gives `i32::MIN` for NaN and out-of-range values), then keep the low byte.
#[inline]
pub(crate) fn trunc_to_i8(f: f32) -> i8 {
    let wide = if !(-2_147_483_648.0..2_147_483_648.0).contains(&f) { i32::MIN } else { f as i32 };
    wide as i8
}

/// The min/scale pair found by [`make_qkx2_quants`]: `x ≈ scale·L - min` (min is returned
/// positive, as the block stores it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleMin {
    pub scale: f32,
    pub min: f32,
}

/// Search parameters of [`make_qkx2_quants`] (`rmin`, `rdelta`, `nstep`, `use_mad`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Qkx2Search {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Weighted absolute error instead of weighted squared error.
    pub use_mad: bool,
}

/// Asymmetric quantization of one group to `0..=nmax` with a weighted least-squares search over
/// `nstep + 1` candidate inverse scales around `nmax / (max - min)` (`make_qkx2_quants`).
/// Writes the chosen levels into `l`; `laux` is scratch of the same length.
///
/// ggml's `make_qkx3_quants` with explicit weights is the same computation (its `max <= min`
/// early exit equals `max == min` because max ≥ min, NaN making both tests false), so the
/// importance-weighted quantizers use this function with their own search parameters.
pub(crate) fn make_qkx2_quants(
    p: Qkx2Search,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
) -> ScaleMin {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return ScaleMin { scale: 0.0, min: -min };
    }
    let nmax_f = p.nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if p.nstep < 1 {
        return ScaleMin { scale, min: -min };
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let qf = q as f32;
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    ScaleMin { scale, min: -min }
}

/// The element of largest magnitude (the first one on ties, with its sign) and that magnitude:
/// the symmetric searches scale by the signed extreme so that it lands on `-nmax` exactly.
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric quantization of one group to `-nmax..nmax-1` (stored shifted by `nmax`), trying
/// 19 inverse scales around `-nmax / max` and keeping the weighted least-squares best
/// (`make_qx_quants` with `rmse_type = 1`): weights are the importance `qw` when given, else
/// `x²`. Returns the scale; a group below [`GROUP_MAX_EPS`] gets levels 0 and scale 0.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: Option<&[f32]>) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let weight = |i: usize| match qw {
        Some(q) => q[i],
        None => x[i] * x[i],
    };
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = level(iscale, v) as f32;
            let w = weight(i);
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (level(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantizes non-negative values (the sub-block scales or mins of a k-quant super-block) to
/// `0..=nmax` against their maximum, weighted by `qw` (`make_qp_quants`): a coarse search over
/// nine inverse scales, then up to five passes of coordinate descent. Returns the scale.
///
/// ggml keeps the levels in bytes and clamps only from above, so a negative input wraps; that
/// is reproduced because the bytes feed the block.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax_f) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..x.len() {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let qf = q as f32;
        sumlx += qw[i] * x[i] * qf;
        suml2 += qw[i] * qf * qf;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let w = qw[i];
            let cur = l[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(l[i]) {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Importance weights of the weighted quantizers: `qw · sqrt(sigma2 + x²)`.
pub(crate) fn importance_weights(x: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &v), &q) in out.iter_mut().zip(x).zip(qw) {
        *o = q * (sigma2 + v * v).sqrt();
    }
}

/// Σx² accumulated in order, as every weighted quantizer computes it before its `sigma2`.
pub(crate) fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Sum accumulated in order.
pub(crate) fn sum_in_order(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v;
    }
    s
}

/// Packs eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes (the inverse of
/// [`get_scale_min_k4`]). Bits above the sixth are shifted out as ggml's byte stores do.
pub(crate) fn pack_k4_levels(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    packed
}

/// Symmetric 3-bit search of Q3_K (`make_q3_quants` with `do_rmse`): start from `-nmax / max`,
/// then up to five passes of coordinate descent on the `x²`-weighted error. Levels are stored
/// shifted by `nmax`.
pub(crate) fn make_q3_quants_rmse(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        let qf = q as f32;
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = f32::from(*li);
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*li) {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Reads the 6-bit scale and min of sub-block `j` from the 12-byte packed array of Q4_K/Q5_K.
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The super-block half of Q4_K/Q5_K quantization shared by both: quantize the eight sub-block
/// scales and mins to 6 bits against their maxima, pack them, and return `(d, dmin, scales)`.
pub(crate) fn pack_k4_scales(scales: &[f32; 8], mins: &[f32; 8]) -> ([u8; 2], [u8; 2], [u8; 12]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t before clamping, so negatives wrap first.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_k4_levels(&ls, &lm);
    (f32_to_fp16(max_scale / 63.0), f32_to_fp16(max_min / 63.0), packed)
}

/// Per-sub-block weights of Q4_K/Q5_K: `sqrt(mean(x²)) + |x|`.
pub(crate) fn rms_plus_abs_weights(x: &[f32; 32]) -> [f32; 32] {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let av_x = (sum_x2 / 32.0).sqrt();
    let mut w = [0.0f32; 32];
    for (wi, &v) in w.iter_mut().zip(x) {
        *wi = av_x + v.abs();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn fp16_rounding_is_nearest_even_including_subnormals() {
        // 1 + 2^-11 is halfway between 1 and the next half; ties go to the even mantissa (1).
        assert_eq!(f32_to_fp16(1.0 + 2f32.powi(-11)), 0x3C00u16.to_le_bytes());
        assert_eq!(f32_to_fp16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02u16.to_le_bytes());
        // Smallest subnormal half is 2^-24; half of it rounds to zero (even), 0.75 of it up.
        assert_eq!(f32_to_fp16(2f32.powi(-25)), [0, 0]);
        assert_eq!(f32_to_fp16(1.5 * 2f32.powi(-25)), 1u16.to_le_bytes());
        assert_eq!(f32_to_fp16(3.0 * 2f32.powi(-25)), 2u16.to_le_bytes());
        assert_eq!(f32_to_fp16(65520.0), 0x7C00u16.to_le_bytes());
        assert_eq!(f32_to_fp16(65519.0), 0x7BFFu16.to_le_bytes());
        assert_eq!(f32_to_fp16(-0.0), 0x8000u16.to_le_bytes());
        assert_eq!(f32_to_fp16(f32::from_bits(0xFFC1_2345)), 0xFE00u16.to_le_bytes());
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
    }

    #[test]
    fn e8m0_half_covers_subnormal_codes() {
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    }

    #[test]
    fn trunc_to_i8_matches_c_cast() {
        assert_eq!(trunc_to_i8(8.99), 8);
        assert_eq!(trunc_to_i8(-0.7), 0);
        assert_eq!(trunc_to_i8(f32::NAN), 0);
        assert_eq!(trunc_to_i8(300.0), 44);
    }

    #[test]
    fn k4_scale_packing_round_trips() {
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let mins = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        let (_, _, packed) = pack_k4_scales(&scales, &mins);
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &packed);
            assert_eq!(sc as f32, (63.0 * scales[j] / 8.0f32).round_ties_even(), "scale {j}");
            assert_eq!(m as f32, (63.0 * mins[j] / 8.0f32).round_ties_even(), "min {j}");
        }
    }
}
