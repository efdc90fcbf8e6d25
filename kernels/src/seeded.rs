//! Seeded pseudo-random inputs for the GPU tests and benchmarks (xorshift64*): the same values
//! on every machine, so a case that fails on the device can be rebuilt here bit for bit.

/// The generator's state after `seed` (never zero).
fn state(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// One xorshift64* step: the next 64 output bits.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// `len` values in [-1, 1): the top 24 output bits, scaled.
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = state(seed);
    (0..len).map(|_| (next(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()
}

/// `len` 32-bit words (raw bytes of any format: FP8, packed int4, GGUF blocks).
pub fn words(seed: u64, len: usize) -> Vec<u32> {
    let mut s = state(seed);
    (0..len).map(|_| (next(&mut s) >> 32) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_and_in_range() {
        let a = values(7, 1000);
        assert_eq!(a, values(7, 1000));
        assert_ne!(a, values(8, 1000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.1, "{mean}");
        let w = words(7, 4);
        // The same stream: the top 24 bits of each word give the value.
        for (v, w) in a.iter().zip(&w) {
            assert_eq!(*v, (w >> 8) as f32 / (1u64 << 23) as f32 - 1.0);
        }
    }
}
