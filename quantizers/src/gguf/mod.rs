//! GGML block codecs, one file per family, behind the [`BlockCodec`] trait.
//!
//! Block structs are `#[repr(C)]` with alignment 1 (fp16 fields stored as `[u8; 2]`), so a
//! block slice can be viewed straight out of any mmap'd byte slice with `bytemuck`, whatever
//! the tensor's offset.

use qtool_formats::GgmlType;

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
}
