//! GGUF metadata values: the thirteen value types, typed scalars and arrays, their encoding and
//! their display form.
//!
//! Arrays are kept as typed vectors (`Vec<u32>`, `Vec<String>`, ...) rather than as a vector of
//! [`Value`]s: a tokenizer's score array then costs 4 bytes per entry instead of a 32-byte enum
//! slot, so memory stays proportional to the file and a byte-exact rewrite needs no guessing about
//! element types.

use std::fmt;

/// A GGUF value type id (`gguf_type` in ggml's `gguf.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(id as usize).copied()
    }

    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name gguf-py gives the type (`GGUFValueType`), used in dumps and messages.
    pub const fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// Bytes one value of this type occupies at least. For fixed-size types that is its size;
    /// a string needs its 8-byte length, an array its 4-byte element type and 8-byte count. The
    /// reader multiplies a claimed count by this before allocating anything, so a lying count is
    /// refused by comparing it with the bytes that are really left.
    pub const fn min_encoded_len(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
///
/// Equality compares floats by their bits, so a value read back from a file equals the one
/// written even when it is a NaN (a container must preserve bytes, not arithmetic meaning).
#[derive(Clone, Debug)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous array; nested arrays carry their own element type each.
#[derive(Clone, Debug)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type whose value is representable as `u64` (files disagree on the width they
    /// store counts in; the typed getters of `GgufFile` stay strict).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Appends the little-endian encoding of the value (without its type id).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => encode_str(s, out),
            Value::Array(a) => a.encode(out),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// Display form: scalars as JSON scalars, arrays of at most [`INLINE_ARRAY_MAX`] elements
    /// inline, longer ones summarised (see the module doc of `gguf`).
    pub fn to_display_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::U8(v) => J::from(*v),
            Value::I8(v) => J::from(*v),
            Value::U16(v) => J::from(*v),
            Value::I16(v) => J::from(*v),
            Value::U32(v) => J::from(*v),
            Value::I32(v) => J::from(*v),
            Value::F32(v) => float_json(f64::from(*v)),
            Value::Bool(v) => J::from(*v),
            Value::String(s) => J::from(s.as_str()),
            Value::Array(a) => a.to_display_json(),
            Value::U64(v) => J::from(*v),
            Value::I64(v) => J::from(*v),
            Value::F64(v) => float_json(*v),
        }
    }

    /// Full, lossless JSON form: `{"type": NAME, "value": ...}`; arrays as
    /// `{"type": "ARRAY", "element_type": NAME, "value": [...]}` with nested arrays in the same
    /// form. Non-finite floats become the strings `"nan"`, `"inf"`, `"-inf"`.
    pub fn to_typed_json(&self) -> serde_json::Value {
        match self {
            Value::Array(a) => a.to_typed_json(),
            scalar => serde_json::json!({
                "type": scalar.value_type().name(),
                "value": match scalar {
                    Value::F32(v) => float_json(f64::from(*v)),
                    Value::F64(v) => float_json(*v),
                    other => other.to_display_json(),
                },
            }),
        }
    }
}

/// Longest array shown in full by [`Value::to_display_json`].
pub const INLINE_ARRAY_MAX: usize = 16;
/// Elements of a long array shown in its summary's `head`.
pub const SUMMARY_HEAD: usize = 4;

macro_rules! array_dispatch {
    ($arr:expr, $v:ident => $body:expr) => {
        match $arr {
            Array::U8($v) => $body,
            Array::I8($v) => $body,
            Array::U16($v) => $body,
            Array::I16($v) => $body,
            Array::U32($v) => $body,
            Array::I32($v) => $body,
            Array::F32($v) => $body,
            Array::Bool($v) => $body,
            Array::String($v) => $body,
            Array::Array($v) => $body,
            Array::U64($v) => $body,
            Array::I64($v) => $body,
            Array::F64($v) => $body,
        }
    };
}

impl Array {
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        array_dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (cloned; for display and generic access, not bulk reads).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// Appends element type, count and elements.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.element_type().id().to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        match self {
            Array::U8(v) => out.extend_from_slice(v),
            Array::I8(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::Bool(v) => v.iter().for_each(|x| out.push(u8::from(*x))),
            Array::String(v) => v.iter().for_each(|s| encode_str(s, out)),
            Array::Array(v) => v.iter().for_each(|a| a.encode(out)),
            Array::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    fn display_items(&self, n: usize) -> Vec<serde_json::Value> {
        (0..n.min(self.len())).filter_map(|i| self.get(i)).map(|v| v.to_display_json()).collect()
    }

    fn to_display_json(&self) -> serde_json::Value {
        if self.len() <= INLINE_ARRAY_MAX {
            return serde_json::Value::Array(self.display_items(INLINE_ARRAY_MAX));
        }
        serde_json::json!({
            "type": "array",
            "element_type": self.element_type().name().to_ascii_lowercase(),
            "len": self.len(),
            "head": self.display_items(SUMMARY_HEAD),
        })
    }

    fn to_typed_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = match self {
            Array::Array(v) => v.iter().map(Array::to_typed_json).collect(),
            Array::F32(v) => v.iter().map(|x| float_json(f64::from(*x))).collect(),
            Array::F64(v) => v.iter().map(|x| float_json(*x)).collect(),
            other => {
                (0..other.len()).filter_map(|i| other.get(i)).map(|v| v.to_display_json()).collect()
            }
        };
        serde_json::json!({
            "type": "ARRAY",
            "element_type": self.element_type().name(),
            "value": items,
        })
    }
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Finite floats as JSON numbers (serde_json prints the shortest string that round-trips, so an
/// f32 widened to f64 stays exact); non-finite ones as strings, which JSON has no number for.
fn float_json(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map_or_else(|| nonfinite_json(v), serde_json::Value::Number)
}

fn nonfinite_json(v: f64) -> serde_json::Value {
    let s = if v.is_nan() {
        "nan"
    } else if v > 0.0 {
        "inf"
    } else {
        "-inf"
    };
    serde_json::Value::from(s)
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::U8(a), Value::U8(b)) => a == b,
            (Value::I8(a), Value::I8(b)) => a == b,
            (Value::U16(a), Value::U16(b)) => a == b,
            (Value::I16(a), Value::I16(b)) => a == b,
            (Value::U32(a), Value::U32(b)) => a == b,
            (Value::I32(a), Value::I32(b)) => a == b,
            (Value::F32(a), Value::F32(b)) => a.to_bits() == b.to_bits(),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::U64(a), Value::U64(b)) => a == b,
            (Value::I64(a), Value::I64(b)) => a == b,
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            _ => false,
        }
    }
}

impl PartialEq for Array {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Array::U8(a), Array::U8(b)) => a == b,
            (Array::I8(a), Array::I8(b)) => a == b,
            (Array::U16(a), Array::U16(b)) => a == b,
            (Array::I16(a), Array::I16(b)) => a == b,
            (Array::U32(a), Array::U32(b)) => a == b,
            (Array::I32(a), Array::I32(b)) => a == b,
            (Array::F32(a), Array::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Array::Bool(a), Array::Bool(b)) => a == b,
            (Array::String(a), Array::String(b)) => a == b,
            (Array::Array(a), Array::Array(b)) => a == b,
            (Array::U64(a), Array::U64(b)) => a == b,
            (Array::I64(a), Array::I64(b)) => a == b,
            (Array::F64(a), Array::F64(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_arrays_are_summarised_short_ones_inline() {
        let short = Value::Array(Array::U32((0..16).collect()));
        assert_eq!(short.to_display_json(), serde_json::json!((0..16).collect::<Vec<u32>>()));
        let long = Value::Array(Array::String((0..17).map(|i| format!("t{i}")).collect()));
        assert_eq!(
            long.to_display_json(),
            serde_json::json!({"type": "array", "element_type": "string", "len": 17,
                               "head": ["t0", "t1", "t2", "t3"]})
        );
    }

    #[test]
    fn nan_equals_itself_bitwise_and_json_is_a_string() {
        assert_eq!(Value::F32(f32::NAN), Value::F32(f32::NAN));
        assert_ne!(Value::F32(0.0), Value::F32(-0.0));
        assert_eq!(Value::F64(f64::NEG_INFINITY).to_display_json(), serde_json::json!("-inf"));
    }

    #[test]
    fn encoding_of_nested_array() {
        let v = Value::Array(Array::Array(vec![Array::U8(vec![7]), Array::Bool(vec![])]));
        let mut out = Vec::new();
        v.encode(&mut out);
        let mut want = Vec::new();
        want.extend_from_slice(&9u32.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(7);
        want.extend_from_slice(&7u32.to_le_bytes());
        want.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(out, want);
    }
}
