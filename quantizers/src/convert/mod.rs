//! Streaming conversion between Hugging Face safetensors checkpoints and GGUF for llama-family
//! models: tensors (names, q/k permutation, dtype), hyper-parameters and tokenizer.
//!
//! Two pipelines share one entry point, [`convert`], chosen by what the input is:
//! * a GGUF file becomes a Hugging Face directory ([`to_hf`]): `config.json`,
//!   `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`;
//! * a Hugging Face directory becomes a GGUF file ([`to_gguf`]).
//!
//! Both hold one tensor in memory at a time (decoded to f32, reordered, encoded, written), so
//! peak memory is a small multiple of the largest tensor. Outputs appear only when complete: the
//! GGUF file through the writer's temporary file, the directory by being built under a temporary
//! name next to its target and renamed into place.
//!
//! What is converted and why it is shaped this way:
//! * Names, the q/k row permutation and the hyper-parameter keys come from
//!   [`qtool_formats::naming`], so `diff` matches tensors with the same tables.
//! * GGUF tensor types are chosen by llama.cpp's own per-tensor rules ([`crate::recipe`]), so an
//!   `F16` conversion keeps norms in F32 exactly as `llama-quantize` and `convert_hf_to_gguf.py`
//!   do, and recipes such as `Q4_K_M` make the same choices as `llama-quantize`.
//! * The tokenizer is carried as data: a byte-level BPE vocabulary (`tokenizer.ggml.model =
//!   "gpt2"`) maps to a `tokenizer.json` BPE model, and the pre-tokenizer name to the
//!   pre-tokenizer steps that split text identically ([`tokenizer`]); a SentencePiece-style one
//!   (`"llama"`) to a byte-fallback BPE model whose merge order is the score order (`spm`).
//! * Unsupported inputs are refused before anything is written: an unknown architecture is
//!   named together with the supported ones.

pub mod hparams;
mod outdir;
mod spm;
pub mod to_gguf;
pub mod to_hf;
pub mod tokenizer;

use std::fmt;
use std::path::{Path, PathBuf};

use qtool_formats::GgmlType;

use crate::decode::DecodeError;
use crate::recipe::RecipeError;

/// The element type of the safetensors written by GGUF → HF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDType {
    F32,
    F16,
    BF16,
}

impl HfDType {
    /// Parses `f32`, `f16`/`float16`, `bf16`/`bfloat16` (case-insensitive).
    pub fn from_name(name: &str) -> Option<HfDType> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(HfDType::F32),
            "f16" | "float16" | "fp16" => Some(HfDType::F16),
            "bf16" | "bfloat16" => Some(HfDType::BF16),
            _ => None,
        }
    }

    /// `config.json`'s `torch_dtype` spelling.
    pub fn torch_name(self) -> &'static str {
        match self {
            HfDType::F32 => "float32",
            HfDType::F16 => "float16",
            HfDType::BF16 => "bfloat16",
        }
    }

    pub fn dtype(self) -> qtool_formats::DType {
        match self {
            HfDType::F32 => qtool_formats::DType::F32,
            HfDType::F16 => qtool_formats::DType::F16,
            HfDType::BF16 => qtool_formats::DType::BF16,
        }
    }
}

impl fmt::Display for HfDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HfDType::F32 => "f32",
            HfDType::F16 => "f16",
            HfDType::BF16 => "bf16",
        })
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// HF → GGUF: a llama.cpp file type (`f16`, `bf16`, `f32`, `q8_0`, `q4_k_m`, ...) or a GGML
    /// type applied uniformly (`q4_k`, `q6_k`, ...). Default `f16`.
    pub fmt: Option<String>,
    /// GGUF → HF: the safetensors element type. Default: lossless for the source (see
    /// [`to_hf::lossless_dtype`]).
    pub dtype: Option<HfDType>,
}

/// Which way a conversion went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    GgufToHf,
    HfToGguf,
}

/// One converted tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertedTensor {
    pub source_name: String,
    pub name: String,
    /// Source storage type (`Q4_1`, `BF16`, ...).
    pub from: String,
    /// Output storage type.
    pub to: String,
    /// Output shape in the output container's order.
    pub shape: Vec<u64>,
    /// Whether q/k rows were reordered.
    pub permuted: bool,
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub direction: Direction,
    pub arch: String,
    /// The files written (final paths).
    pub files: Vec<PathBuf>,
    pub tensors: Vec<ConvertedTensor>,
}

/// Why a conversion failed; every variant names the file and, where there is one, the tensor
/// or key.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Format(#[from] qtool_formats::Error),

    #[error("{}: architecture '{arch}' is not supported by convert (supported: {supported})", path.display())]
    UnsupportedArch { path: PathBuf, arch: String, supported: String },

    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },

    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    Tensor { path: PathBuf, tensor: String, msg: String },

    #[error("{}: {source}", path.display())]
    Decode { path: PathBuf, source: DecodeError },

    #[error("{}: {source}", path.display())]
    Recipe { path: PathBuf, source: RecipeError },

    #[error("bad --fmt {fmt:?}: {msg}")]
    BadFormat { fmt: String, msg: String },

    #[error("{}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
}

impl ConvertError {
    pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        ConvertError::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }

    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Self {
        ConvertError::Unsupported { path: path.to_path_buf(), msg: msg.into() }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, msg: impl Into<String>) -> Self {
        ConvertError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_owned(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        qtool_formats::Error::io(path, e).into()
    }
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// Converts `input` to `output`: a GGUF file to a Hugging Face directory, or a Hugging Face
/// directory to a GGUF file. `progress(i, n, name)` is called after each tensor.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ConvertSummary> {
    match detect_direction(input)? {
        Direction::GgufToHf => {
            if opts.fmt.is_some() {
                return Err(ConvertError::invalid(
                    input,
                    "--fmt chooses a GGUF type, but the input is GGUF and the output a Hugging Face directory; use --dtype",
                ));
            }
            to_hf::gguf_to_hf(input, output, opts.dtype, progress)
        }
        Direction::HfToGguf => {
            if opts.dtype.is_some() {
                return Err(ConvertError::invalid(
                    input,
                    "--dtype chooses the safetensors type of a Hugging Face output, but the output is GGUF; use --fmt",
                ));
            }
            to_gguf::hf_to_gguf(input, output, opts.fmt.as_deref().unwrap_or("f16"), progress)
        }
    }
}

/// A GGUF file (by magic or extension) converts to HF; a directory converts to GGUF.
pub fn detect_direction(input: &Path) -> Result<Direction> {
    let meta = std::fs::metadata(input).map_err(|e| ConvertError::io(input, e))?;
    if meta.is_dir() {
        return Ok(Direction::HfToGguf);
    }
    match qtool_formats::open(input)? {
        qtool_formats::Checkpoint::Gguf { .. } => Ok(Direction::GgufToHf),
        qtool_formats::Checkpoint::Safetensors { .. } => Err(ConvertError::invalid(
            input,
            "convert needs a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file, not a single .safetensors file",
        )),
    }
}

/// A `--fmt` value: a llama.cpp file type (rules) or a GGML type applied to every quantizable
/// tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufTarget {
    FileType(crate::recipe::FileType),
    Uniform(GgmlType),
}

impl GgufTarget {
    pub fn parse(fmt: &str) -> Result<GgufTarget> {
        use crate::recipe::{FileType, FileTypeError};
        match FileType::from_name(fmt) {
            Ok(ft) => Ok(GgufTarget::FileType(ft)),
            Err(FileTypeError::Refused { why, .. }) => {
                Err(ConvertError::BadFormat { fmt: fmt.to_owned(), msg: why.to_owned() })
            }
            Err(FileTypeError::Unknown { known, .. }) => {
                match GgmlType::from_name(&fmt.to_ascii_uppercase()) {
                    Some(t) if crate::gguf::can_quantize(t) => Ok(GgufTarget::Uniform(t)),
                    Some(t) => Err(ConvertError::BadFormat {
                        fmt: fmt.to_owned(),
                        msg: format!("qtool cannot encode {t}"),
                    }),
                    None => Err(ConvertError::BadFormat {
                        fmt: fmt.to_owned(),
                        msg: format!("not a llama.cpp file type ({known}) or a GGML type name"),
                    }),
                }
            }
        }
    }
}
