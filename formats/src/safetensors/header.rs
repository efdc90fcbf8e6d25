//! One file's header: the 8-byte length, the JSON, and every rule that makes its offsets safe
//! to slice.
//!
//! The safetensors crate applies the same rules (ST `safetensors/src/tensor.rs`,
//! `SafeTensors::read_metadata` / `Metadata::validate`), but its errors do not say which tensor
//! broke which rule (`TensorInvalidInfo`, `MetadataIncompleteBuffer`) and its header map keeps
//! only the last of two equal keys. Parsing here keeps the header's own order, sees duplicate
//! keys, and names the file, the tensor and the numbers in every error. The crate stays the
//! independent referee: the tests check that it accepts everything the writer produces and
//! rejects every malformed case refused here.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::SafetensorsError;
use crate::dtype::DType;

/// Bytes of the little-endian header length that starts every file.
pub const LEN_PREFIX: u64 = 8;

/// The largest header the reference implementation accepts (`MAX_HEADER_SIZE`); files with a
/// larger one would not load anywhere else, and the cap bounds what a lying length can cost.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The key that holds the string-to-string metadata instead of a tensor.
pub const METADATA_KEY: &str = "__metadata__";

/// A validated header.
#[derive(Debug)]
pub(crate) struct FileHeader {
    pub header_len: u64,
    pub metadata: Map<String, Value>,
    /// Sorted by data offset; ties (zero-size tensors) keep header order.
    pub tensors: Vec<HeaderTensor>,
}

#[derive(Debug)]
pub(crate) struct HeaderTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Offsets relative to the start of the data section.
    pub begin: u64,
    pub end: u64,
}

impl FileHeader {
    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        LEN_PREFIX + self.header_len
    }
}

/// Parses and validates the header of `bytes`, the whole file (mapped, so a lying length or
/// offset costs nothing: only the header's actual bytes are ever parsed).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<FileHeader, SafetensorsError> {
    let file_len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..LEN_PREFIX as usize) else {
        return Err(SafetensorsError::Truncated { path: path.into(), len: file_len });
    };
    let header_len = u64::from_le_bytes(prefix.try_into().expect("slice of length 8"));
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge {
            path: path.into(),
            header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    if header_len > file_len - LEN_PREFIX {
        return Err(SafetensorsError::HeaderPastEnd { path: path.into(), header_len, file_len });
    }
    let data_start = LEN_PREFIX + header_len;
    let text = std::str::from_utf8(&bytes[LEN_PREFIX as usize..data_start as usize])
        .map_err(|e| SafetensorsError::HeaderNotUtf8 { path: path.into(), at: e.valid_up_to() })?;
    let entries = match serde_json::from_str::<RawHeader>(text) {
        Ok(RawHeader::Object(entries)) => entries,
        Ok(RawHeader::Other(found)) => {
            return Err(SafetensorsError::HeaderNotObject { path: path.into(), found })
        }
        Err(source) => return Err(SafetensorsError::HeaderNotJson { path: path.into(), source }),
    };

    let mut seen = HashSet::with_capacity(entries.len());
    for (key, _) in &entries {
        if !seen.insert(key.as_str()) {
            return Err(SafetensorsError::DuplicateKey { path: path.into(), key: key.clone() });
        }
    }
    drop(seen);

    let mut metadata = Map::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        if key == METADATA_KEY {
            metadata = parse_metadata(path, value)?;
        } else {
            tensors.push(parse_tensor(path, key, value)?);
        }
    }

    // Header order is arbitrary (the reference writer sorts by dtype, other writers by name);
    // the data section's order is the file's real order.
    tensors.sort_by_key(|t| (t.begin, t.end));
    check_layout(path, &tensors, file_len - data_start)?;
    Ok(FileHeader { header_len, metadata, tensors })
}

fn parse_metadata(path: &Path, value: Value) -> Result<Map<String, Value>, SafetensorsError> {
    let map = match value {
        // The reference reads `__metadata__` as an optional map, so `null` means none.
        Value::Null => return Ok(Map::new()),
        Value::Object(map) => map,
        other => {
            return Err(SafetensorsError::MetadataNotObject {
                path: path.into(),
                found: kind(&other),
            })
        }
    };
    for (key, v) in &map {
        if !v.is_string() {
            return Err(SafetensorsError::MetadataNotString {
                path: path.into(),
                key: key.clone(),
                found: kind(v),
            });
        }
    }
    Ok(map)
}

fn parse_tensor(path: &Path, name: String, value: Value) -> Result<HeaderTensor, SafetensorsError> {
    let bad = |name: &str, msg: String| SafetensorsError::BadTensorEntry {
        path: path.into(),
        tensor: name.to_owned(),
        msg,
    };
    let Value::Object(entry) = value else {
        return Err(bad(&name, format!("entry is {}, not an object", kind(&value))));
    };
    let field =
        |key: &str| entry.get(key).ok_or_else(|| bad(&name, format!("entry has no '{key}'")));

    let dtype_name = field("dtype")?
        .as_str()
        .ok_or_else(|| bad(&name, format!("dtype is {}, not a string", kind(&entry["dtype"]))))?;
    let Some(dtype) = DType::from_name(dtype_name) else {
        return Err(SafetensorsError::UnknownDtype {
            path: path.into(),
            tensor: name,
            dtype: dtype_name.to_owned(),
        });
    };

    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| bad(&name, format!("shape is {}, not an array", kind(&entry["shape"]))))?
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.as_u64().ok_or_else(|| {
                bad(&name, format!("shape[{i}] = {d} is not a non-negative integer"))
            })
        })
        .collect::<Result<Vec<u64>, _>>()?;

    let offsets = field("data_offsets")?;
    let (begin, end) = match offsets.as_array().map(Vec::as_slice) {
        Some([b, e]) => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => {
                return Err(bad(
                    &name,
                    format!("data_offsets {offsets} are not non-negative integers"),
                ))
            }
        },
        _ => return Err(bad(&name, format!("data_offsets {offsets} is not a [begin, end] pair"))),
    };

    let Some(numel) = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(SafetensorsError::ShapeOverflow { path: path.into(), tensor: name, shape });
    };
    let Some(bits) = numel.checked_mul(dtype.bits()) else {
        return Err(SafetensorsError::ShapeOverflow { path: path.into(), tensor: name, shape });
    };
    if bits % 8 != 0 {
        return Err(SafetensorsError::PartialBytes {
            path: path.into(),
            tensor: name,
            dtype,
            numel,
        });
    }
    if end < begin {
        return Err(SafetensorsError::EndBeforeBegin {
            path: path.into(),
            tensor: name,
            begin,
            end,
        });
    }
    if end - begin != bits / 8 {
        return Err(SafetensorsError::ByteCountMismatch {
            path: path.into(),
            tensor: name,
            dtype,
            shape,
            expected: bits / 8,
            actual: end - begin,
        });
    }
    Ok(HeaderTensor { name, dtype, shape, begin, end })
}

/// Tensors (sorted by offset) must tile the data section exactly: no overlap, no gap, nothing
/// past its end and nothing unused after the last tensor, as the reference requires.
fn check_layout(
    path: &Path,
    tensors: &[HeaderTensor],
    data_len: u64,
) -> Result<(), SafetensorsError> {
    let mut covered = 0u64;
    let mut previous: Option<&HeaderTensor> = None;
    for t in tensors {
        if t.begin < covered {
            let other = previous.expect("covered > 0 implies a previous tensor");
            return Err(SafetensorsError::Overlap {
                path: path.into(),
                tensor: t.name.clone(),
                begin: t.begin,
                end: t.end,
                other: other.name.clone(),
                other_end: covered,
            });
        }
        if t.begin > covered {
            return Err(SafetensorsError::Gap {
                path: path.into(),
                tensor: t.name.clone(),
                begin: t.begin,
                expected: covered,
            });
        }
        if t.end > data_len {
            return Err(SafetensorsError::OutOfRange {
                path: path.into(),
                tensor: t.name.clone(),
                end: t.end,
                data_len,
            });
        }
        covered = t.end;
        previous = Some(t);
    }
    if covered != data_len {
        return Err(SafetensorsError::TrailingBytes {
            path: path.into(),
            data_len,
            used: covered,
            unused: data_len - covered,
        });
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The top level of a header, kept as the list of its entries so that duplicate keys (which a
/// map would silently collapse) can be reported, and any non-object is named rather than
/// rejected with a generic type error.
enum RawHeader {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        // No `size_hint` pre-allocation: the entries vector grows with what is really there.
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(RawHeader::Object(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawHeader, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawHeader::Other("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("a string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawHeader, E> {
        Ok(RawHeader::Other("null"))
    }
}
