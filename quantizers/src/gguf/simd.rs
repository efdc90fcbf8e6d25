//! The k-quant scale searches for eight groups at once (the sub-blocks of a super-block), one
//! group per f32 lane of an AVX2 register.
//!
//! Why lanes are groups and not candidates: ggml's `make_qkx2_quants` updates `min` whenever a
//! candidate wins, and every later candidate's inverse scale and levels are computed from that
//! updated `min`, so the candidates of one group form a chain. The groups of a super-block, in
//! contrast, are independent. Each lane therefore runs the scalar search of its group exactly:
//! the same f32 operations (IEEE add/mul/div, no fused multiply-add, no reassociation) in the
//! same order, comparisons with the scalar code's NaN behaviour (ordered compares, `!=` as
//! unordered-or-not-equal), and selects instead of branches. The results are the scalar
//! functions' bit for bit; [`make_qkx2_quants_x8_scalar`] and [`make_qx_quants_x8_scalar`] stay
//! as the oracles the tests compare against (`super::tests_simd`).
//!
//! Without AVX2 (detected at run time) or off x86-64, the `_x8` entry points run the scalar
//! functions group by group.

use super::common::{make_qkx2_quants, make_qx_quants, Qkx2Search, ScaleMin};
use super::legacy::{quantize_q5_0_block, quantize_q8_0_block, BlockQ5_0, BlockQ8_0};

/// Groups per call.
pub(crate) const LANES: usize = 8;

/// Longest group the lane-parallel code takes (the k-quants use 16 and 32).
const MAX_GROUP: usize = 32;

/// `make_qkx2_quants` on the eight consecutive groups of `x` (each `x.len() / 8` long), with
/// `weights` laid out like `x`; levels go to `l` in the same layout.
pub(crate) fn make_qkx2_quants_x8(
    p: Qkx2Search,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
) -> [ScaleMin; LANES] {
    let n = x.len() / LANES;
    assert!(n * LANES == x.len() && weights.len() == x.len() && l.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    if (1..=MAX_GROUP).contains(&n) && has_avx2() {
        // SAFETY: AVX2 is available (checked at run time); lengths are checked above.
        return unsafe { avx2::qkx2_x8(p, x, weights, l, n) };
    }
    make_qkx2_quants_x8_scalar(p, x, weights, l)
}

/// [`make_qkx2_quants_x8`] one group at a time with the scalar reference.
pub(crate) fn make_qkx2_quants_x8_scalar(
    p: Qkx2Search,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
) -> [ScaleMin; LANES] {
    let n = x.len() / LANES;
    let mut laux = [0u8; 256];
    let laux = &mut laux[..n];
    std::array::from_fn(|j| {
        let g = j * n..(j + 1) * n;
        make_qkx2_quants(p, &x[g.clone()], &weights[g.clone()], &mut l[g], laux)
    })
}

/// `make_qx_quants(nmax, ...)` on the eight consecutive groups of `x`; `qw` (importance
/// weights, laid out like `x`) or `x²` weigh the error. Returns the eight scales.
pub(crate) fn make_qx_quants_x8(
    nmax: i32,
    x: &[f32],
    l: &mut [u8],
    qw: Option<&[f32]>,
) -> [f32; LANES] {
    let n = x.len() / LANES;
    assert!(n * LANES == x.len() && l.len() == x.len());
    assert!(qw.is_none_or(|q| q.len() == x.len()));
    #[cfg(target_arch = "x86_64")]
    if (1..=MAX_GROUP).contains(&n) && has_avx2() {
        // SAFETY: AVX2 is available (checked at run time); lengths are checked above.
        return unsafe { avx2::qx_x8(nmax, x, qw, l, n) };
    }
    make_qx_quants_x8_scalar(nmax, x, l, qw)
}

/// [`make_qx_quants_x8`] one group at a time with the scalar reference.
pub(crate) fn make_qx_quants_x8_scalar(
    nmax: i32,
    x: &[f32],
    l: &mut [u8],
    qw: Option<&[f32]>,
) -> [f32; LANES] {
    let n = x.len() / LANES;
    std::array::from_fn(|j| {
        let g = j * n..(j + 1) * n;
        make_qx_quants(nmax, &x[g.clone()], &mut l[g.clone()], qw.map(|q| &q[g]))
    })
}

/// `quantize_row_q5_0_ref` over whole blocks (`x.len() == 32 * out.len()`).
pub(crate) fn quantize_q5_0(x: &[f32], out: &mut [BlockQ5_0]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available (checked at run time).
        return unsafe { avx2::q5_0_rows(x, out) };
    }
    quantize_q5_0_scalar(x, out);
}

/// [`quantize_q5_0`] with the scalar reference.
pub(crate) fn quantize_q5_0_scalar(x: &[f32], out: &mut [BlockQ5_0]) {
    for (x, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        *b = quantize_q5_0_block(x);
    }
}

/// `quantize_row_q8_0_ref` over whole blocks (`x.len() == 32 * out.len()`).
pub(crate) fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available (checked at run time).
        return unsafe { avx2::q8_0_rows(x, out) };
    }
    quantize_q8_0_scalar(x, out);
}

/// [`quantize_q8_0`] with the scalar reference.
pub(crate) fn quantize_q8_0_scalar(x: &[f32], out: &mut [BlockQ8_0]) {
    for (x, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        *b = quantize_q8_0_block(x);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, MAX_GROUP};
    use crate::gguf::common::{f32_to_fp16, Qkx2Search, ScaleMin, GROUP_MAX_EPS};
    use crate::gguf::legacy::{
        inverse_scale, quantize_q5_0_block, quantize_q8_0_block, BlockQ5_0, BlockQ8_0,
    };

    /// One 32-element block as four vectors, or `None` when it holds a NaN: the reference
    /// scans for the largest magnitude in an order-dependent way around NaN, so such blocks
    /// take the scalar code.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_block(x: &[f32]) -> Option<[__m256; 4]> {
        assert!(x.len() == 32);
        // SAFETY: `x` holds 32 f32 (asserted).
        let v: [__m256; 4] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) });
        let nan = _mm256_or_ps(
            _mm256_or_ps(
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v[0], v[0]),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v[1], v[1]),
            ),
            _mm256_or_ps(
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v[2], v[2]),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v[3], v[3]),
            ),
        );
        (_mm256_movemask_ps(nan) == 0).then_some(v)
    }

    /// The largest magnitude of a NaN-free block (max is exact and order-free without NaN).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn block_absmax(a: &[__m256; 4]) -> f32 {
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        to_array(m).into_iter().fold(0.0f32, f32::max)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn to_i32s(v: __m256i) -> [i32; LANES] {
        let mut a = [0i32; LANES];
        // SAFETY: `a` is 8 writable i32.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) };
        a
    }

    /// `quantize_row_q5_0_ref`: `d = max / -16` where `max` is the first element of largest
    /// magnitude, levels `MIN(31, (int8_t)(x·id + 16.5))`.
    #[target_feature(enable = "avx2")]
    pub(super) fn q5_0_rows(x: &[f32], out: &mut [BlockQ5_0]) {
        for (x, b) in x.chunks_exact(32).zip(out.iter_mut()) {
            let Some(v) = load_block(x) else {
                *b = quantize_q5_0_block(x);
                continue;
            };
            let a = v.map(|vk| abs(vk));
            let amax = block_absmax(&a);
            // The reference keeps max = 0 unless some |x| > 0, then takes the first element
            // reaching the largest magnitude.
            let mut max = 0.0f32;
            if amax > 0.0 {
                for (k, ak) in a.iter().enumerate() {
                    let hit =
                        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*ak, _mm256_set1_ps(amax)));
                    if hit != 0 {
                        max = x[8 * k + hit.trailing_zeros() as usize];
                        break;
                    }
                }
            }
            let d = max / -16.0;
            let id = _mm256_set1_ps(inverse_scale(d));
            let q = v.map(|vk| {
                let t = _mm256_add_ps(_mm256_mul_ps(vk, id), _mm256_set1_ps(16.5));
                // (int8_t) of the truncated int32 (0x80000000 for NaN/out of range, as cvttss2si).
                let i = _mm256_cvttps_epi32(t);
                let i = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(i));
                _mm256_min_epi32(i, _mm256_set1_epi32(31))
            });
            let mut qh = 0u32;
            for (k, &qk) in q.iter().enumerate() {
                let bit4 = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<27>(qk)));
                qh |= (bit4 as u32) << (8 * k);
            }
            let nib = _mm256_set1_epi32(0x0F);
            let low = |lo: __m256i, hi: __m256i| {
                _mm256_or_si256(
                    _mm256_and_si256(lo, nib),
                    _mm256_slli_epi32::<4>(_mm256_and_si256(hi, nib)),
                )
            };
            let (r0, r1) = (to_i32s(low(q[0], q[2])), to_i32s(low(q[1], q[3])));
            let mut qs = [0u8; 16];
            for j in 0..8 {
                qs[j] = r0[j] as u8;
                qs[j + 8] = r1[j] as u8;
            }
            *b = BlockQ5_0 { d: f32_to_fp16(d), qh: qh.to_le_bytes(), qs };
        }
    }

    /// `quantize_row_q8_0_ref`: `d = amax / 127`, levels `(int8_t)roundf(x·id)`, with `roundf`
    /// (half away from zero) as truncation plus one step where the dropped fraction is ≥ 0.5
    /// (`y − trunc(y)` is exact).
    #[target_feature(enable = "avx2")]
    pub(super) fn q8_0_rows(x: &[f32], out: &mut [BlockQ8_0]) {
        let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        for (x, b) in x.chunks_exact(32).zip(out.iter_mut()) {
            let Some(v) = load_block(x) else {
                *b = quantize_q8_0_block(x);
                continue;
            };
            let d = block_absmax(&v.map(|vk| abs(vk))) / 127.0;
            let id = _mm256_set1_ps(inverse_scale(d));
            let mut qs = [0i8; 32];
            for (k, &vk) in v.iter().enumerate() {
                let y = _mm256_mul_ps(vk, id);
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
                let up = _mm256_cmp_ps::<_CMP_GE_OQ>(abs(_mm256_sub_ps(y, t)), _mm256_set1_ps(0.5));
                let step = _mm256_or_ps(_mm256_and_ps(y, sign), _mm256_set1_ps(1.0));
                let r = _mm256_add_ps(t, _mm256_and_ps(up, step));
                for (j, &i) in to_i32s(_mm256_cvttps_epi32(r)).iter().enumerate() {
                    qs[8 * k + j] = i as i8;
                }
            }
            *b = BlockQ8_0 { d: f32_to_fp16(d), qs };
        }
    }

    /// Element `i` of each of the eight groups of length `n` in `x`, as one vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(x: &[f32], n: usize, out: &mut [__m256; MAX_GROUP]) {
        for (i, o) in out.iter_mut().enumerate().take(n) {
            let lanes: [f32; LANES] = std::array::from_fn(|j| x[j * n + i]);
            // SAFETY: `lanes` is 8 readable f32.
            *o = unsafe { _mm256_loadu_ps(lanes.as_ptr()) };
        }
    }

    /// Lane `j` of `levels[i]` to `l[j * n + i]`, lanes in `zero` (all ones) written as 0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_levels(levels: &[__m256i], zero: __m256, n: usize, offset: i32, l: &mut [u8]) {
        let keep = _mm256_castps_si256(zero);
        for (i, &v) in levels.iter().enumerate().take(n) {
            let v = _mm256_andnot_si256(keep, _mm256_add_epi32(v, _mm256_set1_epi32(offset)));
            let mut lanes = [0i32; LANES];
            // SAFETY: `lanes` is 8 writable i32.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
            for (j, &q) in lanes.iter().enumerate() {
                l[j * n + i] = q as u8;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn to_array(v: __m256) -> [f32; LANES] {
        let mut a = [0.0f32; LANES];
        // SAFETY: `a` is 8 writable f32.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a
    }

    /// ggml's `nearest_int` per lane: add 1.5·2^23, keep the mantissa bits, subtract 2^22.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest_int(v: __m256) -> __m256i {
        let val = _mm256_add_ps(v, _mm256_set1_ps(12_582_912.0));
        let bits = _mm256_and_si256(_mm256_castps_si256(val), _mm256_set1_epi32(0x007f_ffff));
        _mm256_sub_epi32(bits, _mm256_set1_epi32(0x0040_0000))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn clamp(v: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
        _mm256_min_epi32(_mm256_max_epi32(v, lo), hi)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn abs(v: __m256) -> __m256 {
        _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
    }

    /// `a < b` (false when either is NaN, like Rust's `<`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn gt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
    }

    /// `mask ? b : a` per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn select(a: __m256, b: __m256, mask: __m256) -> __m256 {
        _mm256_blendv_ps(a, b, mask)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn select_i(a: __m256i, b: __m256i, mask: __m256) -> __m256i {
        _mm256_blendv_epi8(a, b, _mm256_castps_si256(mask))
    }

    /// `common::make_qkx2_quants` per lane; see that function for the algorithm.
    #[target_feature(enable = "avx2")]
    pub(super) fn qkx2_x8(
        p: Qkx2Search,
        x: &[f32],
        weights: &[f32],
        l: &mut [u8],
        n: usize,
    ) -> [ScaleMin; LANES] {
        let zero = _mm256_setzero_ps();
        let mut xt = [zero; MAX_GROUP];
        let mut wt = [zero; MAX_GROUP];
        transpose(x, n, &mut xt);
        transpose(weights, n, &mut wt);
        let err = |d: __m256| if p.use_mad { abs(d) } else { _mm256_mul_ps(d, d) };
        let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(p.nmax));
        let level =
            |iscale: __m256, xm: __m256| clamp(nearest_int(_mm256_mul_ps(iscale, xm)), lo, hi);

        let mut min = xt[0];
        let mut max = xt[0];
        let mut sum_w = wt[0];
        let mut sum_x = _mm256_mul_ps(sum_w, xt[0]);
        for i in 1..n {
            let xi = xt[i];
            min = select(min, xi, lt(xi, min));
            max = select(max, xi, gt(xi, max));
            sum_w = _mm256_add_ps(sum_w, wt[i]);
            sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wt[i], xi));
        }
        min = select(min, zero, gt(min, zero));
        // `max == min`: the group ends here with zero levels and scale.
        let done = _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min);

        let nmax_f = p.nmax as f32;
        let iscale = _mm256_div_ps(_mm256_set1_ps(nmax_f), _mm256_sub_ps(max, min));
        let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
        let mut best_error = zero;
        let mut lv = [lo; MAX_GROUP];
        for i in 0..n {
            let q = level(iscale, _mm256_sub_ps(xt[i], min));
            lv[i] = q;
            let diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(q)), min),
                xt[i],
            );
            best_error = _mm256_add_ps(best_error, _mm256_mul_ps(wt[i], err(diff)));
        }
        if p.nstep >= 1 {
            let mut laux = [lo; MAX_GROUP];
            for is in 0..=p.nstep {
                let num = p.rmin + p.rdelta * is as f32 + nmax_f;
                let iscale = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(max, min));
                let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
                for i in 0..n {
                    let q = level(iscale, _mm256_sub_ps(xt[i], min));
                    laux[i] = q;
                    let qf = _mm256_cvtepi32_ps(q);
                    let wq = _mm256_mul_ps(wt[i], qf);
                    sum_l = _mm256_add_ps(sum_l, wq);
                    sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wq, qf));
                    sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wq, xt[i]));
                }
                let det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
                let valid = _mm256_andnot_ps(done, gt(det, zero));
                if _mm256_movemask_ps(valid) == 0 {
                    continue;
                }
                let mut this_scale = _mm256_div_ps(
                    _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
                    det,
                );
                let mut this_min = _mm256_div_ps(
                    _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
                    det,
                );
                let positive = gt(this_min, zero);
                this_min = select(this_min, zero, positive);
                this_scale = select(this_scale, _mm256_div_ps(sum_xl, sum_l2), positive);
                let mut cur_error = zero;
                for i in 0..n {
                    let diff = _mm256_sub_ps(
                        _mm256_add_ps(
                            _mm256_mul_ps(this_scale, _mm256_cvtepi32_ps(laux[i])),
                            this_min,
                        ),
                        xt[i],
                    );
                    cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(wt[i], err(diff)));
                }
                let better = _mm256_and_ps(valid, lt(cur_error, best_error));
                if _mm256_movemask_ps(better) == 0 {
                    continue;
                }
                best_error = select(best_error, cur_error, better);
                scale = select(scale, this_scale, better);
                min = select(min, this_min, better);
                for i in 0..n {
                    lv[i] = select_i(lv[i], laux[i], better);
                }
            }
        }
        store_levels(&lv, done, n, 0, l);
        let scale = to_array(select(scale, zero, done));
        let min = to_array(min);
        std::array::from_fn(|j| ScaleMin { scale: scale[j], min: -min[j] })
    }

    /// `common::make_qx_quants` per lane; see that function for the algorithm.
    #[target_feature(enable = "avx2")]
    pub(super) fn qx_x8(
        nmax: i32,
        x: &[f32],
        qw: Option<&[f32]>,
        l: &mut [u8],
        n: usize,
    ) -> [f32; LANES] {
        let zero = _mm256_setzero_ps();
        let mut xt = [zero; MAX_GROUP];
        let mut wt = [zero; MAX_GROUP];
        transpose(x, n, &mut xt);
        match qw {
            Some(q) => transpose(q, n, &mut wt),
            None => {
                for i in 0..n {
                    wt[i] = _mm256_mul_ps(xt[i], xt[i]);
                }
            }
        }
        let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
        let level =
            |iscale: __m256, v: __m256| clamp(nearest_int(_mm256_mul_ps(iscale, v)), lo, hi);
        let sums = |iscale: __m256| {
            let (mut sumlx, mut suml2) = (zero, zero);
            for i in 0..n {
                let q = _mm256_cvtepi32_ps(level(iscale, xt[i]));
                let w = wt[i];
                sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, xt[i]), q));
                suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, q), q));
            }
            (sumlx, suml2)
        };

        let (mut max, mut amax) = (zero, zero);
        for &v in &xt[..n] {
            let ax = abs(v);
            let bigger = gt(ax, amax);
            amax = select(amax, ax, bigger);
            max = select(max, v, bigger);
        }
        let done = lt(amax, _mm256_set1_ps(GROUP_MAX_EPS));

        let mut chosen = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32)), max);
        let (sumlx, suml2) = sums(chosen);
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
        let mut scale = select(zero, _mm256_div_ps(sumlx, suml2), nonzero);
        let mut best = _mm256_mul_ps(scale, sumlx);
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let num = -(nmax as f32 + 0.1f32 * is as f32);
            let iscale = _mm256_div_ps(_mm256_set1_ps(num), max);
            let (sumlx, suml2) = sums(iscale);
            let better = _mm256_and_ps(
                gt(suml2, zero),
                gt(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)),
            );
            if _mm256_movemask_ps(better) == 0 {
                continue;
            }
            let new_scale = _mm256_div_ps(sumlx, suml2);
            chosen = select(chosen, iscale, better);
            scale = select(scale, new_scale, better);
            best = select(best, _mm256_mul_ps(new_scale, sumlx), better);
        }
        let mut lv = [_mm256_setzero_si256(); MAX_GROUP];
        for i in 0..n {
            lv[i] = level(chosen, xt[i]);
        }
        store_levels(&lv, done, n, nmax, l);
        to_array(select(scale, zero, done))
    }
}
