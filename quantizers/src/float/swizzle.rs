//! The cuBLAS "blocked" (SWIZZLE_32_4_4) layout of block-scale matrices that ComfyUI stores for
//! NVFP4 and MXFP8 (formats.md §1.3.2, comfy-kitchen `to_blocked`/`from_blocked`).
//!
//! A row-major scale matrix `S[R, C]` is zero-padded to `[R', C'] = [roundup(R,128),
//! roundup(C,4)]` and cut into 128×4 tiles, stored tile after tile in row-major tile order; inside
//! a tile, row `r` is split as `r = 32·i + j` and the 4 scales of row `r` go to
//! `j·16 + i·4 .. +4`. So `S[r][c]` lands at
//!
//! ```text
//! ((r/128)·(C'/4) + c/4)·512 + (r%32)·16 + ((r%128)/32)·4 + c%4
//! ```
//!
//! which is what the tensor cores read: 32 rows × (4 row groups × 4 columns) per 512-byte tile.

use rayon::prelude::*;

use super::{roundup, FloatError};

/// Padded shape `[roundup(rows,128), roundup(cols,4)]` of a swizzled `[rows, cols]` matrix.
pub fn blocked_shape(rows: usize, cols: usize) -> [usize; 2] {
    [roundup(rows, 128), roundup(cols, 4)]
}

/// Flat position of `S[r][c]` in the swizzled buffer whose padded width is `cols_padded`.
#[inline]
pub fn blocked_index(r: usize, c: usize, cols_padded: usize) -> usize {
    ((r / 128) * (cols_padded / 4) + c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4
}

/// Row-major `[rows, cols]` bytes → swizzled `[roundup(rows,128), roundup(cols,4)]`, padding
/// zero.
pub fn to_blocked(src: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>, FloatError> {
    let expected = rows.checked_mul(cols).ok_or(FloatError::Shape {
        rows,
        cols,
        expected: None,
        got: src.len(),
    })?;
    if src.len() != expected {
        return Err(FloatError::PartLength { part: "row-major scales", expected, got: src.len() });
    }
    let [rp, cp] = blocked_shape(rows, cols);
    let mut out = vec![0u8; rp * cp];
    if out.is_empty() {
        return Ok(out);
    }
    // A band of 128 rows is `cp/4` whole 512-byte tiles, contiguous in the output, and a row's
    // four scales of one tile are contiguous too: bands are filled in parallel, four bytes at
    // a time (the same bytes as `blocked_index` element by element; tested below).
    out.par_chunks_mut(128 * cp).enumerate().for_each(|(t, band)| {
        for r in t * 128..rows.min(t * 128 + 128) {
            let rr = r % 128;
            let base = (rr % 32) * 16 + (rr / 32) * 4;
            for (g, q) in src[r * cols..][..cols].chunks(4).enumerate() {
                band[g * 512 + base..][..q.len()].copy_from_slice(q);
            }
        }
    });
    Ok(out)
}

/// Swizzled bytes (padded shape) → row-major `[rows, cols]`, dropping the padding.
pub fn from_blocked(src: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>, FloatError> {
    let [rp, cp] = blocked_shape(rows, cols);
    let expected = rp.checked_mul(cp).ok_or(FloatError::Shape {
        rows,
        cols,
        expected: None,
        got: src.len(),
    })?;
    if src.len() != expected {
        return Err(FloatError::PartLength { part: "swizzled scales", expected, got: src.len() });
    }
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            out.push(src[blocked_index(r, c, cp)]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_a_bijection_on_the_padded_shape() {
        for (rows, cols) in [(128, 4), (256, 8), (384, 12)] {
            let mut seen = vec![false; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let i = blocked_index(r, c, cols);
                    assert!(!seen[i], "({r},{c}) collides");
                    seen[i] = true;
                }
            }
        }
    }

    #[test]
    fn known_positions() {
        // First tile: row 0 → 0..4, row 32 → 4..8, row 1 → 16..20.
        assert_eq!(blocked_index(0, 0, 4), 0);
        assert_eq!(blocked_index(32, 0, 4), 4);
        assert_eq!(blocked_index(1, 3, 4), 19);
        assert_eq!(blocked_index(127, 3, 4), 31 * 16 + 3 * 4 + 3);
        // Second column tile comes before the second row tile.
        assert_eq!(blocked_index(0, 4, 8), 512);
        assert_eq!(blocked_index(128, 0, 8), 1024);
    }

    #[test]
    fn round_trip_with_padding() {
        for (rows, cols) in [(1, 1), (16, 3), (130, 5), (300, 17)] {
            let src: Vec<u8> = (0..rows * cols).map(|i| (i * 7 + 1) as u8).collect();
            let b = to_blocked(&src, rows, cols).unwrap();
            let [rp, cp] = blocked_shape(rows, cols);
            assert_eq!(b.len(), rp * cp);
            assert_eq!(from_blocked(&b, rows, cols).unwrap(), src);
            let nonzero = b.iter().filter(|&&x| x != 0).count();
            assert_eq!(nonzero, src.iter().filter(|&&x| x != 0).count(), "padding is zero");
        }
    }

    #[test]
    fn banded_copy_equals_the_index_formula() {
        for (rows, cols) in [(0, 3), (3, 0), (1, 1), (127, 4), (129, 6), (300, 17), (513, 320)] {
            let src: Vec<u8> = (0..rows * cols).map(|i| (i * 31 + 7) as u8 | 1).collect();
            let [rp, cp] = blocked_shape(rows, cols);
            let mut want = vec![0u8; rp * cp];
            for r in 0..rows {
                for c in 0..cols {
                    want[blocked_index(r, c, cp)] = src[r * cols + c];
                }
            }
            assert_eq!(to_blocked(&src, rows, cols).unwrap(), want, "{rows}x{cols}");
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(matches!(to_blocked(&[0; 5], 2, 3), Err(FloatError::PartLength { .. })));
        assert!(matches!(from_blocked(&[0; 5], 2, 3), Err(FloatError::PartLength { .. })));
    }
}
