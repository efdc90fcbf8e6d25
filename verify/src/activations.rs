//! Seeded activations: the same layer name, batch size and width give the same numbers on every
//! machine and thread count, so a failing layer can be re-run and a report compared across runs.
//!
//! The generator is SplitMix64 (Steele, Lea, Flood 2014: a 64-bit counter through a bijective
//! mixer), seeded with an FNV-1a hash of the layer name and the batch size. Values are standard
//! normal by the Box–Muller transform: real activations are roughly bell-shaped around zero,
//! and a zero-mean input keeps a per-row weight offset (a GPTQ zero-point mix-up) from hiding in
//! a bias that normalisation would cancel.

/// FNV-1a over bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (Box–Muller takes its logarithm).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal samples, two per Box–Muller step.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let (u1, u2) = (self.next_open01(), self.next_open01());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (r * t.sin()) as f32;
            }
        }
    }
}

/// The seed of a layer's activations at batch size `m`.
pub fn seed(layer: &str, m: usize) -> u64 {
    fnv1a(layer.as_bytes()) ^ (m as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `[m, k]` row-major standard-normal activations for `layer`, each rounded by `round` (the
/// kernel's activation dtype), so the kernel and the CPU reference see identical inputs.
pub fn activations(layer: &str, m: usize, k: usize, round: impl Fn(f32) -> f32) -> Vec<f32> {
    let mut x = vec![0f32; m * k];
    SplitMix64::new(seed(layer, m)).fill_normal(&mut x);
    for v in &mut x {
        *v = round(*v);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // First outputs for seed 1234567 from the reference C implementation (splitmix64.c).
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
        assert_eq!(g.next_u64(), 9817491932198370423);
    }

    #[test]
    fn deterministic_and_distinct_per_layer_and_batch() {
        let a = activations("l.weight", 4, 64, |x| x);
        assert_eq!(a, activations("l.weight", 4, 64, |x| x));
        assert_ne!(a, activations("m.weight", 4, 64, |x| x));
        assert_ne!(a[..64], activations("l.weight", 1, 64, |x| x)[..]);
    }

    #[test]
    fn roughly_standard_normal() {
        let x = activations("stats", 64, 1024, |x| x);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }

    #[test]
    fn rounding_is_applied() {
        let x = activations("r", 2, 33, |v| half::bf16::from_f32(v).to_f32());
        assert!(x.iter().all(|&v| half::bf16::from_f32(v).to_f32() == v));
    }
}
