//! Parsing a GGUF header out of a byte slice (the mapped file).
//!
//! Every length and count the file claims is compared with the bytes that are really left before
//! anything is allocated or looped over, so a hostile header costs at most its own size. Nothing
//! here indexes or slices without a check: a bad file is an error, never a panic.

use std::collections::HashSet;
use std::path::Path;

use super::value::{Array, Value, ValueType};
use super::{GgmlType, GgufError, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_STRING_LEN};
use crate::tensor::{TensorDType, TensorInfo};

/// Smallest possible KV: key length (8) + a one-byte key + value type (4) + a one-byte value.
const MIN_KV_LEN: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;

/// What the header says, validated against the file's length.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u32,
    pub data_offset: u64,
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

pub(crate) fn parse(path: &Path, buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0, path };

    let magic = c.take(4, || "magic".into())?;
    if magic != b"GGUF" {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::NotGguf { path: path.into(), found });
    }
    let version = c.u32(|| "version".into())?;
    match version {
        2 | 3 => {}
        // A big-endian writer stores the magic as the same four bytes but the version
        // byte-swapped, so 3 reads as 0x0300_0000 here.
        v if v & 0xFFFF == 0 && (1..=3).contains(&v.swap_bytes()) => {
            return Err(GgufError::BigEndian { path: path.into(), version: v.swap_bytes() })
        }
        v => return Err(GgufError::UnsupportedVersion { path: path.into(), version: v }),
    }
    let tensor_count = c.u64(|| "tensor count".into())?;
    let kv_count = c.u64(|| "metadata KV count".into())?;
    for (what, count, min) in [
        ("metadata KV count", kv_count, MIN_KV_LEN),
        ("tensor count", tensor_count, MIN_TENSOR_INFO_LEN),
    ] {
        if count.checked_mul(min).is_none_or(|need| need > c.left()) {
            return Err(GgufError::CountTooLarge {
                path: path.into(),
                what,
                count,
                left: c.left(),
            });
        }
    }

    let mut kvs: Vec<(String, Value)> = Vec::new();
    let mut seen_keys: HashSet<&str> = HashSet::new();
    for _ in 0..kv_count {
        let at = c.pos as u64;
        let key = c.utf8(|| "metadata key".into())?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { path: path.into(), offset: at });
        }
        if !seen_keys.insert(key) {
            return Err(GgufError::DuplicateKey { path: path.into(), key: key.into() });
        }
        let type_id = c.u32(|| format!("value type of key '{key}'"))?;
        let value = c.value(key, type_id)?;
        kvs.push((key.to_owned(), value));
    }

    let alignment = match kvs.iter().find(|(k, _)| k == super::ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a,
        Some((_, Value::U32(a))) => {
            return Err(GgufError::BadAlignment {
                path: path.into(),
                msg: format!("general.alignment is {a}, not a power of two"),
            })
        }
        Some((_, other)) => {
            return Err(GgufError::BadAlignment {
                path: path.into(),
                msg: format!("general.alignment must be a UINT32, found {}", other.value_type()),
            })
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut seen_names: HashSet<&str> = HashSet::new();
    for i in 0..tensor_count {
        let name = c.utf8(|| format!("name of tensor #{i}"))?;
        if !seen_names.insert(name) {
            return Err(GgufError::DuplicateTensor { path: path.into(), tensor: name.into() });
        }
        tensors.push(c.tensor_info(name, alignment)?);
    }

    let data_offset =
        align_up(c.pos as u64, alignment.into()).ok_or_else(|| GgufError::Truncated {
            path: path.into(),
            offset: c.pos as u64,
            what: "padding before the tensor data".into(),
            need: alignment.into(),
            left: c.left(),
        })?;
    let file_len = buf.len() as u64;
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.nbytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(GgufError::DataOutOfBounds {
                    path: path.into(),
                    tensor: t.name.clone(),
                    offset: t.offset,
                    nbytes: t.nbytes,
                    data_offset,
                    file_len,
                })
            }
        }
    }
    check_overlaps(path, &tensors)?;

    Ok(Parsed { version, alignment, data_offset, kvs, tensors })
}

/// Tensors may come in any order in the data section (only llama.cpp insists on info order),
/// but no byte may belong to two tensors.
fn check_overlaps(path: &Path, tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut by_start: Vec<&TensorInfo> = tensors.iter().filter(|t| t.nbytes > 0).collect();
    by_start.sort_by_key(|t| t.offset);
    for pair in by_start.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.nbytes {
            return Err(GgufError::Overlap {
                path: path.into(),
                tensor: b.name.clone(),
                other: a.name.clone(),
            });
        }
    }
    Ok(())
}

pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let rem = x % alignment;
    if rem == 0 {
        Some(x)
    } else {
        x.checked_add(alignment - rem)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// The next `n` bytes; `what` names the field for the error and is only built on failure.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                path: self.path.into(),
                offset: self.pos as u64,
                what: what(),
                need: n,
                left: self.left(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(bytes)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string's bytes, with the length checked against the 1 GiB limit and
    /// the bytes left.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let at = self.pos as u64;
        let len = self.u64(|| format!("length of {}", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong {
                path: self.path.into(),
                offset: at,
                what: what(),
                len,
            });
        }
        self.take(len, what)
    }

    fn utf8(&mut self, what: impl Fn() -> String) -> Result<&'a str, GgufError> {
        let at = self.pos as u64 + 8;
        let bytes = self.string_bytes(&what)?;
        std::str::from_utf8(bytes).map_err(|e| GgufError::NotUtf8 {
            path: self.path.into(),
            offset: at + e.valid_up_to() as u64,
            what: what(),
        })
    }

    fn value(&mut self, key: &str, type_id: u32) -> Result<Value, GgufError> {
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            path: self.path.into(),
            key: key.into(),
            id: type_id,
        })?;
        let what = || format!("value of key '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let [b] = self.array(what)?;
                Value::Bool(self.bool(key, b)?)
            }
            ValueType::String => Value::String(self.utf8(what)?.to_owned()),
            ValueType::Array => Value::Array(self.array_value(key, 1)?),
        })
    }

    fn bool(&self, key: &str, byte: u8) -> Result<bool, GgufError> {
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(GgufError::InvalidBool { path: self.path.into(), key: key.into(), byte }),
        }
    }

    /// Element type, count, elements. `depth` counts the arrays we are inside, so that a file
    /// of nothing but nested array headers cannot exhaust the stack.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep { path: self.path.into(), key: key.into() });
        }
        let elem_id = self.u32(|| format!("element type of array '{key}'"))?;
        let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
            path: self.path.into(),
            key: key.into(),
            id: elem_id,
        })?;
        let count = self.u64(|| format!("length of array '{key}'"))?;
        let min = elem.min_encoded_len();
        if count.checked_mul(min).is_none_or(|need| need > self.left()) {
            return Err(GgufError::ArrayTooLong {
                path: self.path.into(),
                key: key.into(),
                element_type: elem,
                count,
                left: self.left(),
            });
        }
        // From here on `count * min <= left`, so fixed-size arrays are read as one slice of
        // exactly that many bytes; variable-size ones grow as their elements really parse.
        let what = || format!("elements of array '{key}'");
        let fixed = |c: &mut Self| c.take(count * min, what);
        Ok(match elem {
            ValueType::U8 => Array::U8(fixed(self)?.to_vec()),
            ValueType::I8 => Array::I8(le_items(fixed(self)?, i8::from_le_bytes)),
            ValueType::U16 => Array::U16(le_items(fixed(self)?, u16::from_le_bytes)),
            ValueType::I16 => Array::I16(le_items(fixed(self)?, i16::from_le_bytes)),
            ValueType::U32 => Array::U32(le_items(fixed(self)?, u32::from_le_bytes)),
            ValueType::I32 => Array::I32(le_items(fixed(self)?, i32::from_le_bytes)),
            ValueType::F32 => Array::F32(le_items(fixed(self)?, f32::from_le_bytes)),
            ValueType::U64 => Array::U64(le_items(fixed(self)?, u64::from_le_bytes)),
            ValueType::I64 => Array::I64(le_items(fixed(self)?, i64::from_le_bytes)),
            ValueType::F64 => Array::F64(le_items(fixed(self)?, f64::from_le_bytes)),
            ValueType::Bool => {
                let bytes = fixed(self)?;
                Array::Bool(bytes.iter().map(|&b| self.bool(key, b)).collect::<Result<_, _>>()?)
            }
            ValueType::String => {
                let mut items = Vec::new();
                for i in 0..count {
                    items.push(self.utf8(|| format!("element {i} of array '{key}'"))?.to_owned());
                }
                Array::String(items)
            }
            ValueType::Array => {
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(items)
            }
        })
    }

    fn tensor_info(&mut self, name: &str, alignment: u32) -> Result<TensorInfo, GgufError> {
        let path = self.path;
        let n_dims = self.u32(|| format!("n_dims of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { path: path.into(), tensor: name.into(), n_dims });
        }
        let dims = self.take(u64::from(n_dims) * 8, || format!("dimensions of tensor '{name}'"))?;
        let shape: Vec<u64> = le_items(dims, u64::from_le_bytes);
        let type_id = self.u32(|| format!("type of tensor '{name}'"))?;
        let offset = self.u64(|| format!("offset of tensor '{name}'"))?;

        // ggml keeps element counts in int64_t, so the product must fit there too.
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(|| GgufError::ShapeOverflow {
                path: path.into(),
                tensor: name.into(),
                shape: shape.clone(),
            })?;
        let ggml = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            path: path.into(),
            tensor: name.into(),
            id: type_id,
        })?;
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % ggml.block_size() != 0 {
            return Err(GgufError::PartialBlock {
                path: path.into(),
                tensor: name.into(),
                ggml_type: ggml,
                ne0,
            });
        }
        let nbytes = ggml.byte_len(ne0, numel).ok_or_else(|| GgufError::ShapeOverflow {
            path: path.into(),
            tensor: name.into(),
            shape: shape.clone(),
        })?;
        if offset % u64::from(alignment) != 0 {
            return Err(GgufError::MisalignedOffset {
                path: path.into(),
                tensor: name.into(),
                offset,
                alignment,
            });
        }
        Ok(TensorInfo {
            name: name.to_owned(),
            dtype: TensorDType::Ggml(ggml),
            shape,
            file: 0,
            // Relative for now; made absolute once the data section's start is known.
            offset,
            nbytes,
        })
    }
}

/// Decodes a slice whose length is a multiple of `N` into little-endian items.
fn le_items<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}
