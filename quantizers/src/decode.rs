//! Decoding any tensor qtool can read to `f32`, a chunk at a time.
//!
//! One entry point for both containers: safetensors element types go through
//! [`qtool_formats::codec`], GGML types (plain and block-quantized) through the block-codec
//! dispatcher [`crate::gguf::dequantize`]. Callers decode in chunks so memory stays
//! O(chunk) whatever the tensor size; a chunk always starts and ends on a whole *granule* — a GGML
//! block, or the smallest run of a sub-byte type that fills whole bytes (2 elements of `F4`) —
//! so no block is ever split between two chunks.
//!
//! Everything is checked before any byte is read: the dtype is decodable, the tensor's byte
//! length agrees with its shape, the requested range lies inside the tensor and on granule
//! boundaries. Failures are [`DecodeError`]s naming the tensor and dtype, never panics.

use qtool_formats::codec::{self, CodecError};
use qtool_formats::{TensorDType, TensorRef};

use crate::gguf;

/// Why (part of) a tensor could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("tensor '{tensor}': qtool cannot decode dtype {dtype} to f32")]
    Unsupported { tensor: String, dtype: TensorDType },

    #[error("tensor '{tensor}': shape {shape:?} of {dtype} needs {need} of data, the view has {actual}", need = describe_len(*.expected))]
    DataLength {
        tensor: String,
        dtype: TensorDType,
        shape: Vec<u64>,
        expected: Option<u64>,
        actual: u64,
    },

    #[error("tensor '{tensor}': elements {start}..{end} lie outside its {numel} elements")]
    OutOfRange { tensor: String, start: u64, end: u64, numel: u64 },

    #[error(
        "tensor '{tensor}': elements {start}..{end} split a {granule}-element unit of {dtype}"
    )]
    Misaligned { tensor: String, dtype: TensorDType, start: u64, end: u64, granule: u64 },
}

fn describe_len(expected: Option<u64>) -> String {
    match expected {
        Some(n) => format!("{n} bytes"),
        None => "a byte count that is not a whole number or overflows".to_string(),
    }
}

/// The smallest run of elements that occupies whole bytes: `(elements, bytes)`.
///
/// For a GGML type this is one block; for safetensors types one element, except `F4` (2 per
/// byte) and the `F6` types (4 per 3 bytes).
pub fn granule(dtype: TensorDType) -> (u64, u64) {
    match dtype {
        TensorDType::Ggml(t) => (t.block_size(), t.type_size()),
        TensorDType::St(d) => {
            let bits = d.bits();
            let elems = 8 / gcd(bits, 8);
            (elems, elems * bits / 8)
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether [`decode_into`] can decode tensors of `dtype`.
pub fn can_decode(dtype: TensorDType) -> bool {
    match dtype {
        TensorDType::St(d) => codec::can_decode(d),
        TensorDType::Ggml(t) => gguf::can_dequantize(t),
    }
}

/// `target` rounded down to a whole number of granules of `dtype` (at least one granule), so
/// that chunks of this length never split a block.
pub fn chunk_len(dtype: TensorDType, target: usize) -> usize {
    let g = granule(dtype).0 as usize;
    (target / g).max(1) * g
}

/// Number of elements, `None` when the shape's product overflows (a description that did not
/// come from a reader could say anything).
fn numel(tensor: &TensorRef<'_>) -> Option<u64> {
    tensor.info.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Checks that `tensor` is decodable and its bytes match its shape; returns its element count.
pub fn validate(tensor: &TensorRef<'_>) -> Result<u64, DecodeError> {
    let info = tensor.info;
    if !can_decode(info.dtype) {
        return Err(DecodeError::Unsupported { tensor: info.name.clone(), dtype: info.dtype });
    }
    let n = numel(tensor);
    let (g_elems, g_bytes) = granule(info.dtype);
    let expected = n.filter(|n| n % g_elems == 0).and_then(|n| (n / g_elems).checked_mul(g_bytes));
    if expected != Some(tensor.data.len() as u64) {
        return Err(DecodeError::DataLength {
            tensor: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            expected,
            actual: tensor.data.len() as u64,
        });
    }
    // `expected` is Some, so `n` is.
    Ok(n.unwrap_or(0))
}

/// Decodes elements `start .. start + out.len()` of `tensor` (in storage order) into `out`.
///
/// `start` and `out.len()` must be multiples of [`granule`] (or `out` must end at the last
/// element). Memory: none beyond `out`.
pub fn decode_into(tensor: TensorRef<'_>, start: u64, out: &mut [f32]) -> Result<(), DecodeError> {
    let numel = validate(&tensor)?;
    decode_range(&tensor, numel, start, out)
}

fn decode_range(
    tensor: &TensorRef<'_>,
    numel: u64,
    start: u64,
    out: &mut [f32],
) -> Result<(), DecodeError> {
    let info = tensor.info;
    let end = start.checked_add(out.len() as u64).filter(|&e| e <= numel);
    let Some(end) = end else {
        return Err(DecodeError::OutOfRange {
            tensor: info.name.clone(),
            start,
            end: start.saturating_add(out.len() as u64),
            numel,
        });
    };
    let (g_elems, g_bytes) = granule(info.dtype);
    if start % g_elems != 0 || end % g_elems != 0 {
        return Err(DecodeError::Misaligned {
            tensor: info.name.clone(),
            dtype: info.dtype,
            start,
            end,
            granule: g_elems,
        });
    }
    // In range of a slice whose length `validate` checked, so these fit in usize.
    let b0 = (start / g_elems * g_bytes) as usize;
    let b1 = (end / g_elems * g_bytes) as usize;
    let bytes = &tensor.data[b0..b1];
    let unsupported = || DecodeError::Unsupported { tensor: info.name.clone(), dtype: info.dtype };
    match info.dtype {
        TensorDType::St(d) => codec::decode_f32(d, bytes, out).map_err(|e| match e {
            CodecError::Unsupported(_) => unsupported(),
            CodecError::Length { bytes, elems, .. } => DecodeError::DataLength {
                tensor: info.name.clone(),
                dtype: info.dtype,
                shape: vec![elems as u64],
                expected: d.byte_len(elems as u64),
                actual: bytes as u64,
            },
        }),
        // Lengths are whole blocks by construction, so the only refusal left is the type.
        TensorDType::Ggml(t) => gguf::dequantize(t, bytes, out).map_err(|_| unsupported()),
    }
}

/// Decodes the whole tensor into a new vector (memory O(tensor); prefer [`ChunkDecoder`] when
/// the tensor can be processed piecewise).
pub fn decode_all(tensor: TensorRef<'_>) -> Result<Vec<f32>, DecodeError> {
    let numel = validate(&tensor)?;
    // `validate` tied numel to the real byte length: at most 8 elements per byte (`F4`: 2,
    // Q1_0: 128/18), so this allocation is bounded by the data actually mapped.
    let mut out = vec![0f32; numel as usize];
    decode_range(&tensor, numel, 0, &mut out)?;
    Ok(out)
}

/// Decodes a tensor front to back in chunks of a fixed length, reusing one buffer.
///
/// ```ignore
/// let mut chunks = ChunkDecoder::new(tensor, 1 << 20)?;
/// while let Some((start, values)) = chunks.next_chunk()? { /* ... */ }
/// ```
#[derive(Debug)]
pub struct ChunkDecoder<'a> {
    tensor: TensorRef<'a>,
    numel: u64,
    next: u64,
    chunk: usize,
    buf: Vec<f32>,
}

impl<'a> ChunkDecoder<'a> {
    /// `chunk_elems` is rounded down to whole granules ([`chunk_len`]).
    pub fn new(tensor: TensorRef<'a>, chunk_elems: usize) -> Result<Self, DecodeError> {
        let numel = validate(&tensor)?;
        let chunk = chunk_len(tensor.info.dtype, chunk_elems);
        Ok(ChunkDecoder { tensor, numel, next: 0, chunk, buf: Vec::new() })
    }

    /// Total elements of the tensor.
    pub fn numel(&self) -> u64 {
        self.numel
    }

    /// The next chunk as `(first element index, values)`, or `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<(u64, &[f32])>, DecodeError> {
        if self.next >= self.numel {
            return Ok(None);
        }
        let start = self.next;
        let len = (self.numel - start).min(self.chunk as u64) as usize;
        self.buf.resize(len, 0.0);
        decode_range(&self.tensor, self.numel, start, &mut self.buf)?;
        self.next = start + len as u64;
        Ok(Some((start, &self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtool_formats::{DType, GgmlType, TensorInfo};

    fn info(name: &str, dtype: TensorDType, shape: &[u64], nbytes: usize) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            file: 0,
            offset: 0,
            nbytes: nbytes as u64,
        }
    }

    fn st(d: DType) -> TensorDType {
        TensorDType::St(d)
    }

    #[test]
    fn granules() {
        assert_eq!(granule(st(DType::F32)), (1, 4));
        assert_eq!(granule(st(DType::F4)), (2, 1));
        assert_eq!(granule(st(DType::F6E2M3)), (4, 3));
        assert_eq!(granule(st(DType::Bool)), (1, 1));
        assert_eq!(granule(TensorDType::Ggml(GgmlType::Q4_K)), (256, 144));
        assert_eq!(chunk_len(TensorDType::Ggml(GgmlType::Q8_0), 100), 96);
        assert_eq!(chunk_len(TensorDType::Ggml(GgmlType::Q8_0), 5), 32);
    }

    #[test]
    fn decodes_every_decodable_safetensors_dtype_through_the_codec() {
        // Byte pattern 0..n; each dtype must give what the codec gives for the same bytes.
        for d in DType::ALL {
            let n = 8u64;
            let nbytes = d.byte_len(n).unwrap() as usize;
            let data: Vec<u8> = (0..nbytes as u8).map(|b| b.wrapping_mul(37)).collect();
            let i = info("t", st(d), &[2, 4], nbytes);
            let t = TensorRef { info: &i, data: &data };
            if !codec::can_decode(d) {
                assert_eq!(
                    decode_all(t),
                    Err(DecodeError::Unsupported { tensor: "t".into(), dtype: st(d) }),
                    "{d}"
                );
                continue;
            }
            let mut want = vec![0f32; n as usize];
            codec::decode_f32(d, &data, &mut want).unwrap();
            let got = decode_all(t).unwrap();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{d}"
            );
            // Partial ranges agree with the whole.
            let g = granule(st(d)).0 as usize;
            let mut part = vec![0f32; g];
            decode_into(t, g as u64, &mut part).unwrap();
            assert_eq!(
                part.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want[g..2 * g].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{d}"
            );
        }
    }

    #[test]
    fn ggml_block_tensor_goes_through_the_dispatcher_in_chunks() {
        // Four Q8_0 blocks: scale 0.5 (f16 0x3800), quants i - 16 + block.
        let mut data = Vec::new();
        for b in 0..4i32 {
            data.extend_from_slice(&0x3800u16.to_le_bytes());
            data.extend((0..32).map(|i| (i - 16 + b) as i8 as u8));
        }
        let i = info("blk.0.w", TensorDType::Ggml(GgmlType::Q8_0), &[64, 2], data.len());
        let t = TensorRef { info: &i, data: &data };
        let all = decode_all(t).unwrap();
        let want: Vec<f32> =
            (0..4).flat_map(|b| (0..32).map(move |i| (i - 16 + b) as f32 * 0.5)).collect();
        assert_eq!(all, want);

        let mut dec = ChunkDecoder::new(t, 40).unwrap(); // rounds to 32: one block a chunk
        let mut seen = Vec::new();
        while let Some((start, vals)) = dec.next_chunk().unwrap() {
            assert_eq!(start as usize, seen.len());
            assert_eq!(vals.len(), 32);
            seen.extend_from_slice(vals);
        }
        assert_eq!(seen, want);

        let mut half_block = [0f32; 16];
        assert!(matches!(
            decode_into(t, 16, &mut half_block),
            Err(DecodeError::Misaligned { granule: 32, .. })
        ));
    }

    #[test]
    fn ggml_plain_types_decode() {
        let data: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        let i = info("w", TensorDType::Ggml(GgmlType::F32), &[2], 8);
        assert_eq!(decode_all(TensorRef { info: &i, data: &data }).unwrap(), [1.0, -2.5]);
    }

    #[test]
    fn unsupported_dtypes_name_tensor_and_dtype() {
        let i = info("freqs", st(DType::C64), &[2], 16);
        let msg = decode_all(TensorRef { info: &i, data: &[0; 16] }).unwrap_err().to_string();
        assert!(msg.contains("freqs") && msg.contains("C64"), "{msg}");
        // Whatever GGML types the block-codec dispatcher cannot decode are refused the same way.
        for &ty in GgmlType::ALL.iter().filter(|&&t| !gguf::can_dequantize(t)) {
            let n = ty.type_size() as usize;
            let data = vec![0u8; n];
            let i = info("blk.3.ffn", TensorDType::Ggml(ty), &[ty.block_size()], n);
            let err = decode_all(TensorRef { info: &i, data: &data }).unwrap_err();
            assert_eq!(
                err,
                DecodeError::Unsupported {
                    tensor: "blk.3.ffn".into(),
                    dtype: TensorDType::Ggml(ty)
                }
            );
            assert!(err.to_string().contains(ty.name()));
        }
    }

    #[test]
    fn data_length_disagreeing_with_shape_is_an_error() {
        let i = info("w", st(DType::F16), &[3], 4);
        let err = decode_all(TensorRef { info: &i, data: &[0; 4] }).unwrap_err();
        assert!(
            matches!(err, DecodeError::DataLength { expected: Some(6), actual: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn overflowing_shape_is_an_error_not_an_allocation() {
        let i = info("w", st(DType::F32), &[u64::MAX, 4], 16);
        let err = decode_all(TensorRef { info: &i, data: &[0; 16] }).unwrap_err();
        assert!(matches!(err, DecodeError::DataLength { expected: None, .. }), "{err}");
    }

    #[test]
    fn odd_f4_element_count_is_an_error() {
        let i = info("w", st(DType::F4), &[3], 2);
        assert!(matches!(
            decode_all(TensorRef { info: &i, data: &[0; 2] }),
            Err(DecodeError::DataLength { .. })
        ));
    }

    #[test]
    fn range_past_the_end_is_an_error() {
        let i = info("w", st(DType::U8), &[4], 4);
        let t = TensorRef { info: &i, data: &[1, 2, 3, 4] };
        let mut out = [0f32; 3];
        assert_eq!(
            decode_into(t, 2, &mut out),
            Err(DecodeError::OutOfRange { tensor: "w".into(), start: 2, end: 5, numel: 4 })
        );
        assert!(matches!(decode_into(t, u64::MAX, &mut out), Err(DecodeError::OutOfRange { .. })));
        decode_into(t, 1, &mut out).unwrap();
        assert_eq!(out, [2.0, 3.0, 4.0]);
    }

    #[test]
    fn empty_and_scalar_tensors() {
        let i = info("e", st(DType::F32), &[0, 5], 0);
        assert_eq!(decode_all(TensorRef { info: &i, data: &[] }).unwrap(), Vec::<f32>::new());
        let mut dec = ChunkDecoder::new(TensorRef { info: &i, data: &[] }, 8).unwrap();
        assert!(dec.next_chunk().unwrap().is_none());
        let i = info("s", st(DType::F32), &[], 4);
        let data = 7.0f32.to_le_bytes();
        assert_eq!(decode_all(TensorRef { info: &i, data: &data }).unwrap(), [7.0]);
    }
}
