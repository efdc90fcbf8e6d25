//! GGML block codecs, one file per family, behind the [`BlockCodec`] trait.
//!
//! Block structs are `#[repr(C)]` with alignment 1 (fp16 fields stored as `[u8; 2]`), so a
//! block slice can be viewed straight out of any mmap'd byte slice with `bytemuck`, whatever
//! the tensor's offset.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (`legacy`), Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (one file
//! each, shared searches in `common`), MXFP4; all both ways.
//!
//! The quantizers reproduce llama.cpp byte for byte: [`BlockCodec::quantize`] is
//! `quantize_row_*_ref` (what `ggml_quantize_chunk` runs without an importance matrix) and
//! [`BlockCodec::quantize_row_weighted`] is `quantize_row_*_impl` (with one). The dequantizers
//! reproduce `dequantize_row_*` bit for bit. All three are checked against llama.cpp's own
//! library and gguf-py in `tests/crosscheck/test_gguf_codecs.py`. Byte identity rests on doing
//! each f32 operation in ggml's order with no fused multiply-add, so keep that when editing.
//!
//! The hot searches (`make_qkx2_quants` for Q4_K/Q5_K, `make_qx_quants` for Q6_K) and the Q5_0
//! and Q8_0 reference quantizers have AVX2 versions in `simd`, chosen at run time, that do the
//! same f32 operations in the same order per group or element; the scalar code stays as the
//! reference and `tests_simd` compares the two bit for bit.
//!
//! Callers that only know a [`GgmlType`] at run time use [`dequantize`], [`quantize`],
//! [`quantize_rows`] and [`quantize_rows_weighted`]; those also accept the plain element types,
//! so one entry point decodes any GGUF tensor.

mod common;
mod legacy;
mod mxfp4;
mod plain;
mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;
mod simd;

use std::fmt;

use qtool_formats::GgmlType;
use rayon::prelude::*;

pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
pub use mxfp4::BlockMxfp4;
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_k::BlockQ4K;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_k::BlockQ8K;

/// One GGML block type: its layout, and the reference quantize/dequantize of ggml-quants.c.
pub trait BlockCodec: bytemuck::Pod + bytemuck::Zeroable + Copy + Send + Sync {
    /// The GGML type this block encodes.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK: usize;

    /// Decodes `blocks` into `out` (`out.len() == blocks.len() * BLOCK`).
    fn dequantize(blocks: &[Self], out: &mut [f32]);

    /// The reference quantizer (`quantize_row_*_ref`): `x.len() == out.len() * BLOCK`.
    fn quantize(x: &[f32], out: &mut [Self]);

    /// The importance-weighted quantizer llama.cpp runs when given an imatrix
    /// (`quantize_row_*_impl`) for ONE row of a weight matrix: `importance` holds the row's
    /// per-column importance (`importance.len() == row.len() == out.len() * BLOCK`). It is
    /// row-level because the legacy types scale their weights by the whole row's mean square.
    /// Types whose ggml quantizer ignores the imatrix (Q8_0, Q8_K, MXFP4) keep this default.
    fn quantize_row_weighted(row: &[f32], importance: &[f32], out: &mut [Self]) {
        let _ = importance;
        Self::quantize(row, out)
    }
}

/// What a caller asked a codec to do, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Quantize,
    Dequantize,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Quantize => "quantize to",
            Direction::Dequantize => "decode",
        })
    }
}

/// Why a run-time dispatched codec call was refused. Nothing is written to the output on error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// qtool has no codec for this type in this direction (e.g. the IQ types).
    #[error("qtool cannot {direction} GGML type {ty}")]
    UnsupportedType { ty: GgmlType, direction: Direction },
    /// The encoded bytes are not a whole number of blocks.
    #[error("{ty}: {bytes} bytes is not a whole number of {block_bytes}-byte blocks")]
    PartialBlock { ty: GgmlType, bytes: usize, block_bytes: usize },
    /// The value count is not a whole number of blocks, or not a whole number of rows.
    #[error("{ty}: {values} values is not a whole number of {unit}-value {what}")]
    PartialValues { ty: GgmlType, values: usize, unit: usize, what: &'static str },
    /// The importance vector is not one value per column.
    #[error("{ty}: the importance matrix entry has {actual} values, but rows have {expected}")]
    ImportanceLength { ty: GgmlType, expected: usize, actual: usize },
    /// The f32 side and the encoded side disagree on the number of values.
    #[error("{ty}: {bytes} encoded bytes hold {expected} values, but the f32 buffer has {actual}")]
    LengthMismatch { ty: GgmlType, bytes: usize, expected: usize, actual: usize },
}

impl CodecError {
    /// The GGML type the failed call was about.
    pub fn ggml_type(&self) -> GgmlType {
        match *self {
            CodecError::UnsupportedType { ty, .. }
            | CodecError::PartialBlock { ty, .. }
            | CodecError::PartialValues { ty, .. }
            | CodecError::ImportanceLength { ty, .. }
            | CodecError::LengthMismatch { ty, .. } => ty,
        }
    }
}

/// Monomorphised entry points of one block type, so dispatch is a single table lookup.
struct Codec {
    dequantize: fn(&[u8], &mut [f32]),
    quantize: fn(&[f32], &mut [u8]),
    quantize_row_weighted: fn(&[f32], &[f32], &mut [u8]),
}

fn dequantize_bytes<B: BlockCodec>(bytes: &[u8], out: &mut [f32]) {
    // Alignment-1 blocks: the cast only checks the length, which the caller already did.
    B::dequantize(bytemuck::cast_slice(bytes), out)
}

fn quantize_bytes<B: BlockCodec>(x: &[f32], out: &mut [u8]) {
    B::quantize(x, bytemuck::cast_slice_mut(out))
}

fn quantize_row_weighted_bytes<B: BlockCodec>(row: &[f32], importance: &[f32], out: &mut [u8]) {
    B::quantize_row_weighted(row, importance, bytemuck::cast_slice_mut(out))
}

const fn codec<B: BlockCodec>() -> Codec {
    Codec {
        dequantize: dequantize_bytes::<B>,
        quantize: quantize_bytes::<B>,
        quantize_row_weighted: quantize_row_weighted_bytes::<B>,
    }
}

fn block_codec(ty: GgmlType) -> Option<Codec> {
    Some(match ty {
        GgmlType::Q4_0 => codec::<BlockQ4_0>(),
        GgmlType::Q4_1 => codec::<BlockQ4_1>(),
        GgmlType::Q5_0 => codec::<BlockQ5_0>(),
        GgmlType::Q5_1 => codec::<BlockQ5_1>(),
        GgmlType::Q8_0 => codec::<BlockQ8_0>(),
        GgmlType::Q2_K => codec::<BlockQ2K>(),
        GgmlType::Q3_K => codec::<BlockQ3K>(),
        GgmlType::Q4_K => codec::<BlockQ4K>(),
        GgmlType::Q5_K => codec::<BlockQ5K>(),
        GgmlType::Q6_K => codec::<BlockQ6K>(),
        GgmlType::Q8_K => codec::<BlockQ8K>(),
        GgmlType::MXFP4 => codec::<BlockMxfp4>(),
        _ => return None,
    })
}

/// Whether [`dequantize`] decodes `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    block_codec(ty).is_some() || plain::can_decode(ty)
}

/// Whether [`quantize`] and [`quantize_rows`] encode to `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    block_codec(ty).is_some() || plain::can_encode(ty)
}

/// Checks that `bytes` encodes exactly `values` values of `ty`.
fn check_lengths(ty: GgmlType, bytes: usize, values: usize) -> Result<(), CodecError> {
    let block = ty.block_size() as usize;
    let block_bytes = ty.type_size() as usize;
    if bytes % block_bytes != 0 {
        return Err(CodecError::PartialBlock { ty, bytes, block_bytes });
    }
    if values % block != 0 {
        return Err(CodecError::PartialValues { ty, values, unit: block, what: "blocks" });
    }
    let expected = (bytes / block_bytes) * block;
    if expected != values {
        return Err(CodecError::LengthMismatch { ty, bytes, expected, actual: values });
    }
    Ok(())
}

/// Decodes a run of `ty` data (whole blocks) into `out`, which must hold exactly the encoded
/// number of values. Plain types (F32, F16, BF16, F64, I8..I64) are converted to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    let unsupported = CodecError::UnsupportedType { ty, direction: Direction::Dequantize };
    if !can_dequantize(ty) {
        return Err(unsupported);
    }
    check_lengths(ty, bytes.len(), out.len())?;
    match block_codec(ty) {
        Some(c) => (c.dequantize)(bytes, out),
        None => plain::decode(ty, bytes, out),
    }
    Ok(())
}

/// Encodes `x` (a whole number of blocks) as `ty` with llama.cpp's reference quantizer;
/// `out` must be exactly the encoded size. F32, F16 and BF16 are plain conversions.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    if !can_quantize(ty) {
        return Err(CodecError::UnsupportedType { ty, direction: Direction::Quantize });
    }
    check_lengths(ty, out.len(), x.len())?;
    match block_codec(ty) {
        Some(c) => (c.quantize)(x, out),
        None => plain::encode(ty, x, out),
    }
    Ok(())
}

/// Rows per rayon task: enough work per task to amortise scheduling, small enough to balance.
const ROWS_PER_TASK_MIN_VALUES: usize = 1 << 16;

/// Checks a row-matrix call and returns the encoded bytes per row.
fn check_rows(
    ty: GgmlType,
    values: usize,
    n_per_row: usize,
    out_len: usize,
) -> Result<usize, CodecError> {
    if !can_quantize(ty) {
        return Err(CodecError::UnsupportedType { ty, direction: Direction::Quantize });
    }
    let block = ty.block_size() as usize;
    if n_per_row == 0 || n_per_row % block != 0 {
        return Err(CodecError::PartialValues {
            ty,
            values: n_per_row,
            unit: block,
            what: "blocks (row length)",
        });
    }
    if values % n_per_row != 0 {
        return Err(CodecError::PartialValues { ty, values, unit: n_per_row, what: "rows" });
    }
    check_lengths(ty, out_len, values)?;
    Ok(n_per_row / block * ty.type_size() as usize)
}

/// [`quantize`] over a matrix of rows of `n_per_row` values, in parallel over rows.
///
/// Every reference quantizer works block by block, and rows are whole blocks, so each row's
/// bytes depend only on that row: the output is identical for any thread count.
pub fn quantize_rows(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let row_bytes = check_rows(ty, x.len(), n_per_row, out.len())?;
    let rows_per_task = (ROWS_PER_TASK_MIN_VALUES / n_per_row).max(1);
    x.par_chunks(rows_per_task * n_per_row)
        .zip(out.par_chunks_mut(rows_per_task * row_bytes))
        .for_each(|(xs, os)| match block_codec(ty) {
            Some(c) => (c.quantize)(xs, os),
            None => plain::encode(ty, xs, os),
        });
    Ok(())
}

/// [`quantize_rows`] with an importance matrix entry (one value per column, `n_per_row` long),
/// as `llama-quantize --imatrix` does: llama.cpp's `ggml_quantize_chunk` with `imatrix` set.
/// Plain types and types whose ggml quantizer ignores the imatrix give [`quantize_rows`]'s bytes.
pub fn quantize_rows_weighted(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    importance: &[f32],
    out: &mut [u8],
) -> Result<(), CodecError> {
    let row_bytes = check_rows(ty, x.len(), n_per_row, out.len())?;
    if importance.len() != n_per_row {
        return Err(CodecError::ImportanceLength {
            ty,
            expected: n_per_row,
            actual: importance.len(),
        });
    }
    x.par_chunks(n_per_row).zip(out.par_chunks_mut(row_bytes)).for_each(
        |(row, o)| match block_codec(ty) {
            Some(c) => (c.quantize_row_weighted)(row, importance, o),
            None => plain::encode(ty, row, o),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_simd;
