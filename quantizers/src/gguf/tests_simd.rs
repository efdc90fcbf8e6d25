//! The lane-parallel k-quant searches (`simd`) against the scalar reference, bit for bit: the
//! scales, mins and every level, on random groups and on groups built to hit each branch
//! (constant groups, `det <= 0`, `this_min > 0`, all-zero and tiny groups, huge outliers,
//! subnormals, NaN and Inf), with groups of different kinds side by side in one call.

use super::common::{Qkx2Search, ScaleMin};
use super::simd::{
    make_qkx2_quants_x8, make_qkx2_quants_x8_scalar, make_qx_quants_x8, make_qx_quants_x8_scalar,
    LANES,
};

/// Every search the codecs run: Q4_K, Q5_K, Q2_K (absolute error), and the weighted one.
const SEARCHES: [Qkx2Search; 5] = [
    Qkx2Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false },
    Qkx2Search { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false },
    Qkx2Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true },
    Qkx2Search { nmax: 15, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false },
    Qkx2Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 0, use_mad: false },
];

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly normal (sum of uniforms), times `scale`.
    fn value(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum();
        (s - 2.0) * scale
    }
}

/// One group of `n` values of the given kind.
fn group(kind: usize, n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut g: Vec<f32> = (0..n).map(|_| rng.value(0.05)).collect();
    match kind {
        0 => {}
        1 => g.fill(0.0),
        2 => g.fill(0.25),
        3 => g.fill(-0.75),
        4 => g.iter_mut().for_each(|v| *v = -v.abs() - 1e-3), // all negative
        5 => g.iter_mut().for_each(|v| *v = v.abs() + 0.5),   // all positive: min > 0
        6 => g[n / 3] = 1.0e4,                                // huge outlier
        7 => g[1] = -3.0e38,
        8 => g.iter_mut().for_each(|v| *v *= 1.0e-39), // subnormal
        9 => {
            g.fill(0.0);
            g[n - 1] = 1.0e-3; // a single non-zero value
        }
        10 => g[2] = f32::NAN,
        11 => g[0] = f32::INFINITY,
        12 => g[n / 2] = f32::NEG_INFINITY,
        13 => g.iter_mut().for_each(|v| *v *= 1.0e-17), // below GROUP_MAX_EPS
        14 => {
            // Two levels only: many ties on the rounding grid.
            for (i, v) in g.iter_mut().enumerate() {
                *v = if i % 2 == 0 { 0.5 } else { -0.25 };
            }
        }
        15 => g.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 0.125 - 1.0),
        _ => unreachable!(),
    }
    g
}

const KINDS: usize = 16;

/// Eight groups: one of each kind in turn, mixed with random groups.
fn batches(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for round in 0..64 {
        let mut x = Vec::with_capacity(LANES * n);
        for lane in 0..LANES {
            let kind = if round < KINDS {
                (round + lane * 3) % KINDS
            } else {
                (rng.next() % 4) as usize * 5 % KINDS
            };
            x.extend(group(if round >= 2 * KINDS { 0 } else { kind }, n, &mut rng));
        }
        out.push(x);
    }
    out
}

fn weights_for(x: &[f32], rng: &mut Rng) -> Vec<f32> {
    x.iter().map(|v| v.abs() + (rng.next() >> 40) as f32 / (1u64 << 24) as f32).collect()
}

fn bits(s: &[ScaleMin; LANES]) -> Vec<(u32, u32)> {
    s.iter().map(|s| (s.scale.to_bits(), s.min.to_bits())).collect()
}

#[test]
fn qkx2_lanes_equal_the_scalar_search_bit_for_bit() {
    let mut rng = Rng(7);
    let mut checked = 0;
    for n in [16, 32] {
        for (b, x) in batches(n, n as u64).iter().enumerate() {
            let w = weights_for(x, &mut rng);
            for p in SEARCHES {
                let (mut fast, mut slow) = (vec![0u8; x.len()], vec![0u8; x.len()]);
                let a = make_qkx2_quants_x8(p, x, &w, &mut fast);
                let b_ = make_qkx2_quants_x8_scalar(p, x, &w, &mut slow);
                assert_eq!(bits(&a), bits(&b_), "n {n} batch {b} {p:?}");
                assert_eq!(fast, slow, "levels, n {n} batch {b} {p:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 64 * SEARCHES.len());
}

#[test]
fn qx_lanes_equal_the_scalar_search_bit_for_bit() {
    let mut rng = Rng(11);
    for n in [16, 32] {
        for (b, x) in batches(n, 100 + n as u64).iter().enumerate() {
            let w = weights_for(x, &mut rng);
            for nmax in [32, 16, 8, 4] {
                for qw in [None, Some(&w[..])] {
                    let (mut fast, mut slow) = (vec![0u8; x.len()], vec![0u8; x.len()]);
                    let a = make_qx_quants_x8(nmax, x, &mut fast, qw);
                    let s = make_qx_quants_x8_scalar(nmax, x, &mut slow, qw);
                    let (a, s): (Vec<u32>, Vec<u32>) = (
                        a.iter().map(|v| v.to_bits()).collect(),
                        s.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(a, s, "n {n} batch {b} nmax {nmax} weighted {}", qw.is_some());
                    assert_eq!(fast, slow, "levels, n {n} batch {b} nmax {nmax}");
                }
            }
        }
    }
}

/// The searches above exercise both sides of every selection: a batch where some lanes take a
/// later candidate and some keep the first (otherwise equal results could hide a wrong mask).
#[test]
fn random_groups_take_later_candidates_in_some_lanes_only() {
    let x = &batches(32, 3)[40];
    let w = vec![1.0f32; x.len()];
    let p = SEARCHES[0];
    let mut l = vec![0u8; x.len()];
    let found = make_qkx2_quants_x8_scalar(p, x, &w, &mut l);
    // The first candidate's scale is exactly (max - min) / nmax; a later winner differs.
    let first: Vec<bool> = (0..LANES)
        .map(|j| {
            let g = &x[32 * j..32 * j + 32];
            let max = g.iter().cloned().fold(f32::MIN, f32::max);
            let min = g.iter().cloned().fold(f32::MAX, f32::min).min(0.0);
            found[j].scale == 1.0 / (15.0 / (max - min))
        })
        .collect();
    assert!(first.iter().any(|&f| !f), "no lane took a later candidate: {first:?}");
}

/// F16 decoding goes through `half`'s vectorised slice conversion when the bytes are 2-byte
/// aligned: every one of the 65536 bit patterns (NaN payloads included) must decode to the
/// bits the element-wise conversion gives, aligned or not.
#[test]
fn f16_slice_decoding_equals_element_decoding_for_every_pattern() {
    use super::common::fp16_to_f32;
    let mut bytes = vec![0u8; 2 * 65536 + 1];
    for (i, c) in bytes[1..].chunks_exact_mut(2).enumerate() {
        c.copy_from_slice(&(i as u16).to_le_bytes());
    }
    let expected: Vec<u32> =
        bytes[1..].chunks_exact(2).map(|c| fp16_to_f32([c[0], c[1]]).to_bits()).collect();
    let aligned = bytes[1..].to_vec(); // a fresh Vec<u8>: the allocator aligns it
    for input in [&aligned[..], &bytes[1..]] {
        let mut out = vec![0.0f32; 65536];
        super::dequantize(qtool_formats::GgmlType::F16, input, &mut out).unwrap();
        let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
        assert!(got == expected, "F16 decoding differs from the element conversion");
    }
}

/// 32-element blocks for the legacy quantizers: the group kinds above plus blocks aimed at
/// their own corners (magnitude ties of opposite sign, negative zeros, exact halves for
/// `roundf`, values whose scaled level leaves the int32 range).
fn legacy_blocks() -> Vec<f32> {
    let mut rng = Rng(23);
    let mut x = Vec::new();
    for kind in 0..KINDS {
        for _ in 0..4 {
            x.extend(group(kind, 32, &mut rng));
        }
    }
    let mut tie = group(0, 32, &mut rng);
    (tie[3], tie[9]) = (-0.5, 0.5);
    x.extend(&tie);
    (tie[3], tie[9]) = (0.5, -0.5);
    x.extend(&tie);
    x.extend([-0.0f32; 32]);
    let mut zeros = [0.0f32; 32];
    zeros[5] = -0.0;
    x.extend(zeros);
    // Levels landing exactly on .5 after scaling by 127/amax (amax 127: id = 1).
    x.extend((0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }));
    x.extend((0..32).map(|i| if i == 31 { -127.0 } else { -(i as f32) * 0.5 }));
    x.extend((0..32).map(|i| if i % 2 == 0 { 3.0e38 } else { 1.0e-45 }));
    x.extend((0..32).map(|i| (i as f32 - 16.0) * 1.0e-40));
    for _ in 0..200 {
        x.extend(group(0, 32, &mut rng));
    }
    x
}

#[test]
fn legacy_q5_0_and_q8_0_fast_paths_equal_the_scalar_reference() {
    use super::legacy::{BlockQ5_0, BlockQ8_0};
    use super::simd::{quantize_q5_0, quantize_q5_0_scalar, quantize_q8_0, quantize_q8_0_scalar};
    use bytemuck::Zeroable;
    let x = legacy_blocks();
    let n = x.len() / 32;
    let (mut a, mut b) = (vec![BlockQ5_0::zeroed(); n], vec![BlockQ5_0::zeroed(); n]);
    quantize_q5_0(&x, &mut a);
    quantize_q5_0_scalar(&x, &mut b);
    for i in 0..n {
        assert_eq!(bytemuck::bytes_of(&a[i]), bytemuck::bytes_of(&b[i]), "Q5_0 block {i}");
    }
    let (mut a, mut b) = (vec![BlockQ8_0::zeroed(); n], vec![BlockQ8_0::zeroed(); n]);
    quantize_q8_0(&x, &mut a);
    quantize_q8_0_scalar(&x, &mut b);
    for i in 0..n {
        assert_eq!(bytemuck::bytes_of(&a[i]), bytemuck::bytes_of(&b[i]), "Q8_0 block {i}");
    }
}
