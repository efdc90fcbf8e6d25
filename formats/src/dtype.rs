//! Element types of the safetensors container, spelled as the container spells them.

use std::fmt;

/// An element type as it appears in a safetensors header (`"dtype": "BF16"`).
///
/// The list is the safetensors crate's (ST `safetensors/src/tensor.rs`); sub-byte types
/// (`F4`, `F6_*`) count their logical elements, so a tensor's byte size is
/// `numel * bits / 8` and must come out whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    F4,
    F6E2M3,
    F6E3M2,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl DType {
    pub const ALL: [DType; 22] = [
        DType::Bool,
        DType::F4,
        DType::F6E2M3,
        DType::F6E3M2,
        DType::U8,
        DType::I8,
        DType::F8E5M2,
        DType::F8E4M3,
        DType::F8E8M0,
        DType::F8E4M3Fnuz,
        DType::F8E5M2Fnuz,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::C64,
        DType::F64,
        DType::I64,
        DType::U64,
    ];

    /// The header spelling, e.g. `"F8_E4M3"`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::F4 => "F4",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E8M0 => "F8_E8M0",
            DType::F8E4M3Fnuz => "F8_E4M3FNUZ",
            DType::F8E5M2Fnuz => "F8_E5M2FNUZ",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::C64 => "C64",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// Bits per element.
    pub const fn bits(self) -> u64 {
        match self {
            DType::F4 => 4,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::Bool
            | DType::U8
            | DType::I8
            | DType::F8E5M2
            | DType::F8E4M3
            | DType::F8E8M0
            | DType::F8E4M3Fnuz
            | DType::F8E5M2Fnuz => 8,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 16,
            DType::I32 | DType::U32 | DType::F32 => 32,
            DType::C64 | DType::F64 | DType::I64 | DType::U64 => 64,
        }
    }

    /// Whether the type is a floating-point format (real-valued, any width).
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DType::F4
                | DType::F6E2M3
                | DType::F6E3M2
                | DType::F8E5M2
                | DType::F8E4M3
                | DType::F8E8M0
                | DType::F8E4M3Fnuz
                | DType::F8E5M2Fnuz
                | DType::F16
                | DType::BF16
                | DType::F32
                | DType::F64
        )
    }

    /// Byte length of `numel` elements, or `None` when it overflows or is not a whole number of
    /// bytes (possible only for the sub-byte types).
    pub fn byte_len(self, numel: u64) -> Option<u64> {
        let bits = numel.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        let mut names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DType::ALL.len());
        assert_eq!(DType::from_name("f32"), None, "names are case-sensitive like the container's");
    }

    #[test]
    fn byte_len_rejects_partial_bytes_and_overflow() {
        assert_eq!(DType::F4.byte_len(3), None);
        assert_eq!(DType::F4.byte_len(4), Some(2));
        assert_eq!(DType::F6E2M3.byte_len(4), Some(3));
        assert_eq!(DType::F64.byte_len(u64::MAX / 4), None);
        assert_eq!(DType::BF16.byte_len(10), Some(20));
    }
}
