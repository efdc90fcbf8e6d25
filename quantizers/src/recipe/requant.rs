//! GGUF → GGUF quantization that writes the bytes `llama_model_quantize` writes
//! (LC `src/llama-quant.cpp`@007dbbf3, ggml `src/gguf.cpp`).
//!
//! What makes the output byte-identical, and where qtool deliberately differs:
//! * **Metadata**: every input KV in input order, minus `general.quantization_version`,
//!   `general.file_type` and the `split.*` keys, then `general.quantization_version = 2` and
//!   `general.file_type = ftype` appended (ggml's `gguf_set_val_*` removes a key and appends it).
//!   Version 3 header.
//! * **Alignment 32** for the header padding and every tensor, whatever the input used. llama.cpp
//!   copies an input `general.alignment` verbatim even when it is not 32, which makes a file
//!   readers misplace; qtool writes 32 into that key instead (identical whenever the input
//!   says 32). Strings are copied whole; llama.cpp re-reads them through `c_str()`, so a value
//!   with an embedded NUL byte (none in practice) would come out truncated there.
//! * **Tensors** in the plan's order (`weights_map` order, see [`super::gguf`]), shapes with
//!   `ggml_n_dims` dimensions. A tensor whose type does not change is copied byte for byte;
//!   any other is decoded to f32 (F16/BF16 exactly; a quantized input only with
//!   `allow_requantize`, as `--allow-requantize`) and encoded with the reference quantizer
//!   llama.cpp uses without an importance matrix.
//! * **Validation** like `ggml_validate_row_data`: an encoded tensor whose fp16 scales (or F16 /
//!   BF16 / F32 values) are Inf or NaN is an error, and nothing is left at the output path.
//!
//! Memory: one tensor is in flight at a time — its f32 copy and its encoded bytes, in buffers
//! reused from tensor to tensor; the input stays memory-mapped. Rows are encoded in parallel
//! (rayon), and each row's bytes depend only on that row, so the output does not depend on the
//! thread count.

use std::path::{Path, PathBuf};

use qtool_formats::gguf::{GgufFile, GgufWriter, Value, DEFAULT_ALIGNMENT};
use qtool_formats::{GgmlType, PlannedTensor, TensorDType, TensorSink, TensorSource};
use rayon::prelude::*;

use super::ftype::FileType;
use super::gguf::{
    plan, ModelParams, RecipeError, RecipeOptions, RecipePlan, TensorDesc, TensorPlan,
};
use crate::gguf::{can_dequantize, dequantize, quantize_rows, CodecError};

/// `GGML_QNT_VERSION`, written to `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Keys llama.cpp drops from the copied metadata (it sets the first two again at the end).
const DROPPED_KEYS: [&str; 5] = [
    "general.quantization_version",
    "general.file_type",
    "split.no",
    "split.count",
    "split.tensors.count",
];

/// Why a requantization failed; each names the tensor where there is one.
#[derive(Debug, thiserror::Error)]
pub enum RequantError {
    #[error("{}: {source}", path.display())]
    Recipe { path: PathBuf, source: RecipeError },
    #[error(transparent)]
    Format(#[from] qtool_formats::Error),
    #[error("{}: tensor '{tensor}' is {ty}; requantizing an already-quantized tensor is disabled (allow it with --allow-requantize)", path.display())]
    RequantizeDisabled { path: PathBuf, tensor: String, ty: GgmlType },
    #[error("{}: tensor '{tensor}': cannot convert from {ty} (llama.cpp converts only F32, F16, BF16 and quantized types)", path.display())]
    CannotDecode { path: PathBuf, tensor: String, ty: GgmlType },
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Codec { path: PathBuf, tensor: String, source: CodecError },
    #[error("{}: tensor '{tensor}': {len} bytes of data, expected {expected}", path.display())]
    DataLength { path: PathBuf, tensor: String, len: usize, expected: u64 },
    #[error("{}: tensor '{tensor}': encoding to {ty} gave an Inf or NaN in block {block} (the weights hold Inf/NaN or values too large for an fp16 scale)", path.display())]
    InvalidOutput { path: PathBuf, tensor: String, ty: GgmlType, block: usize },
}

/// A plan for one input file: the per-tensor decisions and the metadata to write.
#[derive(Clone, Debug)]
pub struct RequantPlan {
    pub model: ModelParams,
    pub recipe: RecipePlan,
    pub kvs: Vec<(String, Value)>,
}

impl RequantPlan {
    /// The output's tensor list for a [`TensorSink`] (GGUF shapes, `ne[0]` first).
    pub fn planned_tensors(&self) -> Vec<PlannedTensor> {
        self.recipe
            .tensors
            .iter()
            .map(|t| PlannedTensor {
                name: t.name.clone(),
                dtype: TensorDType::Ggml(t.to),
                shape: t.ne.clone(),
                nbytes: t.bytes_out(),
            })
            .collect()
    }
}

/// The metadata llama.cpp writes for `ftype`, given the input's KVs.
pub fn output_kvs(input: &[(String, Value)], ftype: FileType) -> Vec<(String, Value)> {
    let mut kvs: Vec<(String, Value)> = input
        .iter()
        .filter(|(k, _)| !DROPPED_KEYS.contains(&k.as_str()))
        .map(|(k, v)| match k.as_str() {
            qtool_formats::gguf::ALIGNMENT_KEY => (k.clone(), Value::U32(DEFAULT_ALIGNMENT)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    kvs.push(("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)));
    kvs.push(("general.file_type".into(), Value::U32(ftype.id())));
    kvs
}

/// Plans the quantization of `file` to `ftype`: reads the hyperparameters, applies the recipe.
pub fn prepare(
    file: &GgufFile,
    ftype: FileType,
    opts: &RecipeOptions,
) -> Result<RequantPlan, RequantError> {
    let recipe_err = |source| RequantError::Recipe { path: file.path().to_path_buf(), source };
    let model = ModelParams::from_kvs(file.kvs()).map_err(recipe_err)?;
    let descs = file
        .tensors()
        .iter()
        .map(|t| match t.dtype {
            TensorDType::Ggml(ty) => {
                Ok(TensorDesc { name: t.name.clone(), ne: t.shape.clone(), ty })
            }
            // A GGUF reader only produces GGML types; refuse rather than guess.
            TensorDType::St(d) => Err(qtool_formats::Error::invalid(
                file.path(),
                format!("tensor '{}' has non-GGML dtype {d}", t.name),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let recipe = plan(ftype, &model, &descs, opts).map_err(recipe_err)?;
    Ok(RequantPlan { model, recipe, kvs: output_kvs(file.kvs(), ftype) })
}

/// Writes the planned output of `file` into `sink`, one tensor at a time, calling `progress`
/// after each tensor with its index.
pub fn requantize_into(
    file: &GgufFile,
    plan: &RequantPlan,
    allow_requantize: bool,
    sink: &mut dyn TensorSink,
    progress: &mut dyn FnMut(usize, &TensorPlan),
) -> Result<(), RequantError> {
    let path = file.path().to_path_buf();
    let mut f32_buf: Vec<f32> = Vec::new();
    let mut out_buf: Vec<u8> = Vec::new();
    for (i, t) in plan.recipe.tensors.iter().enumerate() {
        let info = &file.tensors()[t.input_index];
        let data = file.data(info);
        if data.len() as u64 != t.bytes_in() {
            return Err(RequantError::DataLength {
                path,
                tensor: t.name.clone(),
                len: data.len(),
                expected: t.bytes_in(),
            });
        }
        if t.from == t.to {
            sink.write(&t.name, data)?;
        } else {
            encode_tensor(&path, t, data, allow_requantize, &mut f32_buf, &mut out_buf)?;
            sink.write(&t.name, &out_buf)?;
        }
        file.release(info);
        progress(i, t);
    }
    Ok(())
}

/// Quantizes `file` as planned into a new GGUF file at `out` (which appears only when complete).
pub fn requantize_to_path(
    file: &GgufFile,
    plan: &RequantPlan,
    allow_requantize: bool,
    out: &Path,
    progress: &mut dyn FnMut(usize, &TensorPlan),
) -> Result<PathBuf, RequantError> {
    qtool_formats::atomic::ensure_not_input(out, &[file.path().to_path_buf()])?;
    let mut writer =
        GgufWriter::create(out, plan.kvs.clone(), plan.planned_tensors(), DEFAULT_ALIGNMENT)?;
    requantize_into(file, plan, allow_requantize, &mut writer, progress)?;
    Ok(writer.finish()?)
}

/// Values per parallel decode task.
const DECODE_TASK_VALUES: usize = 1 << 16;

/// Decodes one tensor to f32 and encodes it as `t.to` into `out`.
fn encode_tensor(
    path: &Path,
    t: &TensorPlan,
    data: &[u8],
    allow_requantize: bool,
    f32_buf: &mut Vec<f32>,
    out: &mut Vec<u8>,
) -> Result<(), RequantError> {
    let codec_err =
        |source| RequantError::Codec { path: path.to_path_buf(), tensor: t.name.clone(), source };
    let plain_ok = matches!(t.from, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if !plain_ok && !t.from.is_quantized() || !can_dequantize(t.from) {
        return Err(RequantError::CannotDecode {
            path: path.into(),
            tensor: t.name.clone(),
            ty: t.from,
        });
    }
    if t.from.is_quantized() && !allow_requantize {
        return Err(RequantError::RequantizeDisabled {
            path: path.into(),
            tensor: t.name.clone(),
            ty: t.from,
        });
    }
    let ne0 = t.ne[0] as usize;
    let numel = t.numel() as usize;
    f32_buf.clear();
    f32_buf.resize(numel, 0.0);
    out.clear();
    out.resize(t.bytes_out() as usize, 0);
    if ne0 == 0 || numel == 0 {
        return Ok(());
    }

    // Decode whole rows per task: every row is a whole number of blocks.
    let row_bytes = t.from.row_size(ne0 as u64).unwrap_or(0) as usize;
    let rows_per_task = (DECODE_TASK_VALUES / ne0).max(1);
    data.par_chunks(rows_per_task * row_bytes)
        .zip(f32_buf.par_chunks_mut(rows_per_task * ne0))
        .try_for_each(|(src, dst)| dequantize(t.from, src, dst))
        .map_err(codec_err)?;

    quantize_rows(t.to, f32_buf, ne0, out).map_err(codec_err)?;
    if let Some(block) = first_invalid_block(t.to, out) {
        return Err(RequantError::InvalidOutput {
            path: path.into(),
            tensor: t.name.clone(),
            ty: t.to,
            block,
        });
    }
    Ok(())
}

/// `ggml_validate_row_data` for the types qtool writes: the index of the first block (or value)
/// whose fp16 scale fields, or whose plain value, is Inf or NaN.
pub fn first_invalid_block(ty: GgmlType, bytes: &[u8]) -> Option<usize> {
    use GgmlType as G;
    let f16_bad = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00;
    let bf16_bad = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80;
    let f32_bad = |b: &[u8]| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite();
    // Byte offsets of the fp16 scale fields within a block.
    let scales: &[usize] = match ty {
        G::F16 => return bytes.chunks_exact(2).position(f16_bad),
        G::BF16 => return bytes.chunks_exact(2).position(bf16_bad),
        G::F32 => return bytes.chunks_exact(4).position(f32_bad),
        G::Q4_0 | G::Q5_0 | G::Q8_0 => &[0],
        G::Q4_1 | G::Q5_1 | G::Q4_K | G::Q5_K => &[0, 2],
        G::Q2_K => &[80, 82],
        G::Q3_K => &[108],
        G::Q6_K => &[208],
        _ => return None,
    };
    let size = ty.type_size() as usize;
    bytes.chunks_exact(size).position(|blk| scales.iter().any(|&o| f16_bad(&blk[o..o + 2])))
}
