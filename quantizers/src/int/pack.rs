//! Bit packing of unsigned codes into 32-bit words, the primitive under every int format.
//!
//! ```text
//!  one int32 word, 4-bit codes (pf = 32 / b = 8 fields), LSB first:
//!  bit 31                                                  bit 0
//!  ┌──────┬──────┬──────┬──────┬──────┬──────┬──────┬──────┐
//!  │ f7   │ f6   │ f5   │ f4   │ f3   │ f2   │ f1   │ f0   │   field i at bits b·i .. b·i+b−1
//!  └──────┴──────┴──────┴──────┴──────┴──────┴──────┴──────┘
//!  identity order: field i ← element pf·j + i   (GPTQ qweight/qzeros, CT, Marlin, formats.md §3.1, §2.3, §4)
//!  AWQ order:      field i ← element 8·j + [0,2,4,6,1,3,5,7][i]                  (formats.md §3.2)
//! ```
//!
//! For 4 and 8 bits a field never straddles two words, so compressed-tensors' "dense" packing
//! (element i at global bit i·b) and the per-word packing of GPTQ/CT-old are the same bytes
//! (formats.md §2.3). A ragged tail (length not a multiple of pf) leaves the unused high fields
//! zero, as compressed-tensors' zero padding does.
//!
//! Words are returned as `i32` because every checkpoint stores them as `torch.int32`; the bits
//! are those of the unsigned word.

use super::rtn::Bits;

/// Identity field order: field i holds element `pf·j + i`.
pub const IDENTITY_8: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
pub const IDENTITY_4: [usize; 4] = [0, 1, 2, 3];

/// AutoAWQ `order_map`: field i of a word holds logical column `8·j + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Inverse of [`AWQ_ORDER`] (AutoAWQ `AWQ_REVERSE_ORDER`): column `8·j + c` sits in field
/// `AWQ_REVERSE_ORDER[c]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

pub(crate) fn identity(bits: Bits) -> &'static [usize] {
    match bits {
        Bits::B4 => &IDENTITY_8,
        Bits::B8 => &IDENTITY_4,
    }
}

pub(crate) fn words_for(len: usize, bits: Bits) -> usize {
    len.div_ceil(bits.per_word())
}

/// Packs `values[rows][cols]` along the row axis: `out[r / pf][c]` field `r % pf` holds
/// `values[r][c]`. Output shape `[cdiv(rows, pf), cols]`.
pub(crate) fn pack_rows(values: &[u8], rows: usize, cols: usize, bits: Bits) -> Vec<i32> {
    debug_assert_eq!(values.len(), rows * cols);
    let pf = bits.per_word();
    let b = bits.get();
    let mut out = vec![0u32; words_for(rows, bits) * cols];
    for r in 0..rows {
        let shift = b * (r % pf) as u32;
        let dst = &mut out[(r / pf) * cols..(r / pf + 1) * cols];
        for (d, &v) in dst.iter_mut().zip(&values[r * cols..(r + 1) * cols]) {
            *d |= u32::from(v) << shift;
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// Inverse of [`pack_rows`] for `rows` logical rows.
pub(crate) fn unpack_rows(words: &[i32], rows: usize, cols: usize, bits: Bits) -> Vec<u8> {
    debug_assert_eq!(words.len(), words_for(rows, bits) * cols);
    let pf = bits.per_word();
    let b = bits.get();
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        let shift = b * (r % pf) as u32;
        let src = &words[(r / pf) * cols..(r / pf + 1) * cols];
        for (o, &w) in out[r * cols..(r + 1) * cols].iter_mut().zip(src) {
            *o = ((w as u32 >> shift) & bits.mask()) as u8;
        }
    }
    out
}

/// Packs `values[rows][cols]` along the column axis: `out[r][j]` field `i` holds
/// `values[r][pf·j + order[i]]`. Output shape `[rows, cdiv(cols, pf)]`. A non-identity order
/// needs `cols % pf == 0` (the caller checks).
pub(crate) fn pack_cols(
    values: &[u8],
    rows: usize,
    cols: usize,
    bits: Bits,
    order: &[usize],
) -> Vec<i32> {
    debug_assert_eq!(values.len(), rows * cols);
    let pf = bits.per_word();
    let b = bits.get();
    let wpr = words_for(cols, bits);
    let mut out = vec![0i32; rows * wpr];
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        for (j, word) in out[r * wpr..(r + 1) * wpr].iter_mut().enumerate() {
            let mut acc = 0u32;
            for (i, &o) in order.iter().enumerate() {
                let c = pf * j + o;
                if c < cols {
                    acc |= u32::from(row[c]) << (b * i as u32);
                }
            }
            *word = acc as i32;
        }
    }
    out
}

/// Inverse of [`pack_cols`].
pub(crate) fn unpack_cols(
    words: &[i32],
    rows: usize,
    cols: usize,
    bits: Bits,
    order: &[usize],
) -> Vec<u8> {
    let pf = bits.per_word();
    let b = bits.get();
    let wpr = words_for(cols, bits);
    debug_assert_eq!(words.len(), rows * wpr);
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        let row = &mut out[r * cols..(r + 1) * cols];
        for (j, &word) in words[r * wpr..(r + 1) * wpr].iter().enumerate() {
            for (i, &o) in order.iter().enumerate() {
                let c = pf * j + o;
                if c < cols {
                    row[c] = ((word as u32 >> (b * i as u32)) & bits.mask()) as u8;
                }
            }
        }
    }
    out
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    debug_assert_eq!(m.len(), rows * cols);
    let mut out = Vec::with_capacity(m.len());
    for c in 0..cols {
        out.extend((0..rows).map(|r| m[r * cols + c]));
    }
    out
}

/// Little-endian bytes of int32 words, as safetensors stores `I32`.
pub fn i32_le_bytes(words: &[i32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Little-endian bytes of f32 values.
pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|w| w.to_le_bytes()).collect()
}
