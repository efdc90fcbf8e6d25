//! llama.cpp file types (`enum llama_ftype`): the recipe names users pass to `llama-quantize`,
//! the id written to `general.file_type`, and the GGML type each recipe starts every quantizable
//! tensor from (`llama_ftype_get_default_type`, LC `src/llama-quant.cpp`@007dbbf3).
//!
//! Only the recipes whose every possible target type qtool can encode are listed: the IQ
//! recipes need importance-matrix codecs and `Q2_K_S` needs an imatrix by rule, so they are
//! refused by name rather than half-supported.

use std::fmt;

use qtool_formats::GgmlType;

macro_rules! file_types {
    ($($variant:ident = $id:literal, $name:literal, $default:ident;)*) => {
        /// A llama.cpp quantization recipe ("file type").
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum FileType { $($variant),* }

        impl FileType {
            pub const ALL: &'static [FileType] = &[$(FileType::$variant),*];

            /// The `llama_ftype` value, written to `general.file_type`.
            pub const fn id(self) -> u32 {
                match self { $(FileType::$variant => $id),* }
            }

            /// The name `llama-quantize` accepts (`Q4_K_M`, `F16`, ...).
            pub const fn name(self) -> &'static str {
                match self { $(FileType::$variant => $name),* }
            }

            /// The type every quantizable tensor gets unless a rule says otherwise.
            pub const fn default_type(self) -> GgmlType {
                match self { $(FileType::$variant => GgmlType::$default),* }
            }
        }
    };
}

file_types! {
    AllF32 = 0, "F32", F32;
    MostlyF16 = 1, "F16", F16;
    Q4_0 = 2, "Q4_0", Q4_0;
    Q4_1 = 3, "Q4_1", Q4_1;
    Q8_0 = 7, "Q8_0", Q8_0;
    Q5_0 = 8, "Q5_0", Q5_0;
    Q5_1 = 9, "Q5_1", Q5_1;
    Q2_K = 10, "Q2_K", Q2_K;
    Q3_K_S = 11, "Q3_K_S", Q3_K;
    Q3_K_M = 12, "Q3_K_M", Q3_K;
    Q3_K_L = 13, "Q3_K_L", Q3_K;
    Q4_K_S = 14, "Q4_K_S", Q4_K;
    Q4_K_M = 15, "Q4_K_M", Q4_K;
    Q5_K_S = 16, "Q5_K_S", Q5_K;
    Q5_K_M = 17, "Q5_K_M", Q5_K;
    Q6_K = 18, "Q6_K", Q6_K;
    MostlyBF16 = 32, "BF16", BF16;
}

/// llama.cpp recipes qtool refuses, with the reason given to the user.
const REFUSED: &[(&str, &str)] = &[
    ("Q2_K_S", "llama.cpp requires an importance matrix for it"),
    ("IQ1_S", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ1_M", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ2_XXS", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ2_XS", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ2_S", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ2_M", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ3_XXS", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ3_XS", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ3_S", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ3_M", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ4_NL", "IQ types need importance-matrix codecs qtool does not have"),
    ("IQ4_XS", "IQ types need importance-matrix codecs qtool does not have"),
    ("TQ1_0", "qtool has no ternary codecs"),
    ("TQ2_0", "qtool has no ternary codecs"),
    ("MXFP4_MOE", "its rules are architecture-specific (MoE expert detection) and not implemented"),
    ("NVFP4", "qtool has no GGML NVFP4 encoder"),
    ("Q1_0", "qtool has no Q1_0 encoder"),
    ("Q2_0", "qtool has no Q2_0 encoder"),
];

/// Why a recipe name was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileTypeError {
    #[error("recipe {name} is not supported: {why}")]
    Refused { name: String, why: &'static str },
    #[error("unknown recipe {name:?} (known: {known})")]
    Unknown { name: String, known: String },
}

impl FileType {
    /// Parses a recipe name case-insensitively (`q4_k_m`, `Q8_0`, `f16`, `bf16`, `f32`).
    pub fn from_name(name: &str) -> Result<FileType, FileTypeError> {
        if let Some(t) = FileType::ALL.iter().find(|t| t.name().eq_ignore_ascii_case(name)) {
            return Ok(*t);
        }
        if let Some((n, why)) = REFUSED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(FileTypeError::Refused { name: (*n).to_owned(), why });
        }
        let known = FileType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
        Err(FileTypeError::Unknown { name: name.to_owned(), known })
    }

    pub fn from_id(id: u32) -> Option<FileType> {
        FileType::ALL.iter().copied().find(|t| t.id() == id)
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name ggml prints for a type (`ggml_type_name`): lower case except the `K` of k-quants
/// (`q4_K`, `q8_0`, `f16`), as llama.cpp's quantize log spells it.
pub fn ggml_log_name(ty: GgmlType) -> String {
    let lower = ty.name().to_ascii_lowercase();
    match lower.strip_suffix("_k") {
        Some(stem) if stem.starts_with('q') => format!("{stem}_K"),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_llama_h() {
        assert_eq!(FileType::Q4_K_M.id(), 15);
        assert_eq!(FileType::Q4_K_S.id(), 14);
        assert_eq!(FileType::Q6_K.id(), 18);
        assert_eq!(FileType::Q8_0.id(), 7);
        assert_eq!(FileType::Q5_0.id(), 8);
        assert_eq!(FileType::MostlyBF16.id(), 32);
        for t in FileType::ALL {
            assert_eq!(FileType::from_id(t.id()), Some(*t));
            assert_eq!(FileType::from_name(&t.name().to_lowercase()), Ok(*t));
        }
    }

    #[test]
    fn refused_and_unknown_names() {
        assert!(matches!(FileType::from_name("iq2_xs"), Err(FileTypeError::Refused { .. })));
        assert!(matches!(FileType::from_name("q4_k_x"), Err(FileTypeError::Unknown { .. })));
    }

    #[test]
    fn log_names() {
        assert_eq!(ggml_log_name(GgmlType::Q4_K), "q4_K");
        assert_eq!(ggml_log_name(GgmlType::Q8_0), "q8_0");
        assert_eq!(ggml_log_name(GgmlType::F32), "f32");
        assert_eq!(ggml_log_name(GgmlType::IQ2_XXS), "iq2_xxs");
        assert_eq!(ggml_log_name(GgmlType::BF16), "bf16");
    }
}
