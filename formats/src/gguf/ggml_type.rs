//! The GGML tensor types: id, name, elements per block and bytes per block.
//!
//! Source: ggml `src/ggml.c` `type_traits` and `include/ggml.h` (GG @ d99724f2), cross-checked
//! against gguf-py's `GGML_QUANT_SIZES` in `tests/crosscheck`. Every id ggml defines is listed
//! (also the ones qtool cannot decode): a reader lists such tensors instead of rejecting the
//! file. Ids ggml removed (4, 5, 31-33, 36-38) are unknown.

use std::fmt;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:literal, $size:literal;)*) => {
        /// A GGML tensor type as stored in a GGUF tensor info.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType { $($variant),* }

        impl GgmlType {
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            pub const fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id),* }
            }

            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }

            /// The name ggml prints (`ggml_type_name`, upper case as gguf-py spells it).
            pub const fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name),* }
            }

            pub fn from_name(name: &str) -> Option<GgmlType> {
                GgmlType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
            }

            /// Elements per block (1 for plain element types).
            pub const fn block_size(self) -> u64 {
                match self { $(GgmlType::$variant => $block),* }
            }

            /// Bytes per block.
            pub const fn type_size(self) -> u64 {
                match self { $(GgmlType::$variant => $size),* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    // ggml's block_q8_1 is two halves + 32 int8 = 36 bytes; gguf-py 0.19 still says 40.
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18;
}

impl GgmlType {
    /// Whether elements are stored in quantized blocks (block size > 1).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `ne0` elements, or `None` when `ne0` is not a whole number of blocks.
    pub fn row_size(self, ne0: u64) -> Option<u64> {
        if ne0 % self.block_size() != 0 {
            return None;
        }
        (ne0 / self.block_size()).checked_mul(self.type_size())
    }

    /// Bytes of a tensor of `numel` elements laid out in rows of `ne0`; `None` on overflow or a
    /// row that is not a whole number of blocks.
    pub fn byte_len(self, ne0: u64, numel: u64) -> Option<u64> {
        let row = self.row_size(ne0)?;
        if ne0 == 0 {
            return Some(0);
        }
        row.checked_mul(numel / ne0)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000] {
            assert_eq!(GgmlType::from_id(removed), None, "id {removed}");
        }
    }

    #[test]
    fn row_sizes() {
        assert_eq!(GgmlType::Q4_K.row_size(576), None);
        assert_eq!(GgmlType::Q4_K.row_size(512), Some(288));
        assert_eq!(GgmlType::Q8_0.row_size(64), Some(68));
        assert_eq!(GgmlType::F16.byte_len(3, 12), Some(24));
        assert_eq!(GgmlType::Q8_0.byte_len(u64::MAX - 31, u64::MAX - 31), None);
    }
}
