//! GGUF → Hugging Face directory for llama-family models.
//!
//! Per tensor: decode to f32 (dequantizing block types), undo the q/k row permutation where the
//! architecture has one, encode to the chosen dtype and stream into `model.safetensors`. GGUF's
//! `ne` order is reversed into PyTorch's shape; the bytes keep their order (an `[out, in]`
//! weight is stored as rows of `in` values in both). Hyper-parameters become `config.json`, the
//! tokenizer `tokenizer.json` + `tokenizer_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qtool_formats::gguf::GgufFile;
use qtool_formats::naming::{self, Permutation, QkRole};
use qtool_formats::safetensors::SafetensorsWriter;
use qtool_formats::{GgmlType, PlannedTensor, TensorDType, TensorInfo, TensorSink, TensorSource};
use serde_json::{json, Map, Value as Json};

use super::hparams::{arch_of_gguf, ConfigExtras, Hparams};
use super::outdir::StagingDir;
use super::tokenizer::GgufVocab;
use super::{ConvertError, ConvertSummary, ConvertedTensor, Direction, HfDType, Result};
use crate::decode::decode_all;

/// The shard size Hugging Face's `save_pretrained` uses by default ("5GB").
pub const MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// The dtype that holds every source tensor exactly: F16 (or BF16) when every matrix is stored
/// that way and the remaining tensors (norms kept in F32 by llama.cpp) hold only values that
/// type represents exactly; F32 otherwise (quantized blocks decode to products of a scale and
/// an integer, which need f32).
pub fn lossless_dtype(file: &GgufFile, tensors: &[&TensorInfo]) -> Result<HfDType> {
    let ty = |t: &TensorInfo| match t.dtype {
        TensorDType::Ggml(g) => g,
        TensorDType::St(_) => GgmlType::F32,
    };
    let matrices: Vec<&&TensorInfo> =
        tensors.iter().filter(|t| t.shape.iter().filter(|&&d| d > 1).count() >= 2).collect();
    let candidate = match matrices.first().map(|t| ty(t)) {
        Some(GgmlType::F16) if matrices.iter().all(|t| ty(t) == GgmlType::F16) => HfDType::F16,
        Some(GgmlType::BF16) if matrices.iter().all(|t| ty(t) == GgmlType::BF16) => HfDType::BF16,
        _ => return Ok(HfDType::F32),
    };
    for t in tensors {
        let g = ty(t);
        if (g == GgmlType::F16 && candidate == HfDType::F16)
            || (g == GgmlType::BF16 && candidate == HfDType::BF16)
        {
            continue;
        }
        if g != GgmlType::F32 {
            return Ok(HfDType::F32);
        }
        let values = decode_all(file.get(&t.name).ok_or_else(|| missing(file.path(), &t.name))?)
            .map_err(|source| ConvertError::Decode { path: file.path().to_path_buf(), source })?;
        let exact = values.iter().all(|&x| match candidate {
            HfDType::F16 => half::f16::from_f32(x).to_f32().to_bits() == x.to_bits(),
            HfDType::BF16 => half::bf16::from_f32(x).to_f32().to_bits() == x.to_bits(),
            HfDType::F32 => true,
        });
        if !exact {
            return Ok(HfDType::F32);
        }
    }
    Ok(candidate)
}

fn missing(path: &Path, name: &str) -> ConvertError {
    qtool_formats::Error::NoSuchTensor { path: path.to_path_buf(), name: name.to_owned() }.into()
}

/// Encodes f32 values as little-endian `dtype`.
pub(crate) fn encode(dtype: HfDType, values: &[f32]) -> Vec<u8> {
    match dtype {
        HfDType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        HfDType::F16 => {
            let mut out = vec![0u8; values.len() * 2];
            qtool_formats::codec::encode_f16(values, &mut out);
            out
        }
        HfDType::BF16 => {
            let mut out = vec![0u8; values.len() * 2];
            qtool_formats::codec::encode_bf16(values, &mut out);
            out
        }
    }
}

/// Reorders the rows of `values` (rows of `row_len` f32) for the q/k permutation.
pub(crate) fn permute_f32(
    values: &[f32],
    row_len: usize,
    heads: usize,
    direction: Permutation,
    path: &Path,
    tensor: &str,
) -> Result<Vec<f32>> {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    let out = naming::permute_rows(bytes, row_len * 4, heads, direction)
        .map_err(|e| ConvertError::tensor(path, tensor, e.to_string()))?;
    Ok(out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn write_json(dir: &Path, name: &str, value: &Json) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| ConvertError::invalid(&path, e.to_string()))?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|e| ConvertError::io(&path, e))?;
    Ok(path)
}

/// Converts the GGUF file `input` into the Hugging Face directory `output`.
pub fn gguf_to_hf(
    input: &Path,
    output: &Path,
    dtype: Option<HfDType>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ConvertSummary> {
    let file = GgufFile::open(input)?;
    let path = file.path().to_path_buf();
    let arch = arch_of_gguf(&file)?;
    let vocab = GgufVocab::from_gguf(&file)?;
    let hp = Hparams::from_gguf(&file, arch, Some(vocab.tokens.len()))?;

    // Map every tensor before writing anything.
    let mut jobs = Vec::new();
    for info in file.tensors() {
        let hf = naming::gguf_to_hf_name(&info.name).ok_or_else(|| {
            let why = if info.name == "rope_freqs.weight" {
                "Llama-3 rope scaling factors have no config.json form qtool writes yet".to_owned()
            } else {
                format!("no Hugging Face name for this tensor in the {} layout", arch.gguf)
            };
            ConvertError::tensor(&path, &info.name, why)
        })?;
        if info.shape.len() > 2 {
            return Err(ConvertError::tensor(
                &path,
                &info.name,
                format!("{} dimensions; llama-family tensors have at most 2", info.shape.len()),
            ));
        }
        let role = QkRole::of(&info.name).filter(|_| arch.permute_qk);
        jobs.push((info, hf, role));
    }
    let infos: Vec<&TensorInfo> = jobs.iter().map(|(i, _, _)| *i).collect();
    let dtype = match dtype {
        Some(d) => d,
        None => lossless_dtype(&file, &infos)?,
    };
    let tied = file.find("output.weight").is_none();
    let attention_bias = file.find("blk.0.attn_q.bias").is_some();

    let plan: Vec<PlannedTensor> = jobs
        .iter()
        .map(|(info, hf, _)| {
            let shape: Vec<u64> = info.shape.iter().rev().copied().collect();
            let nbytes = info.numel() * (dtype.dtype().bits() / 8);
            PlannedTensor { name: hf.clone(), dtype: TensorDType::St(dtype.dtype()), shape, nbytes }
        })
        .collect();

    let stage = StagingDir::create(output)?;
    let st_target = stage.path().join("model.safetensors");
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    let mut writer =
        SafetensorsWriter::create(&st_target, plan.clone(), metadata, Some(MAX_SHARD_SIZE))?;
    let mut summary = Vec::with_capacity(jobs.len());
    let n = jobs.len();
    for (i, (info, hf, role)) in jobs.iter().enumerate() {
        let tensor = file.get(&info.name).ok_or_else(|| missing(&path, &info.name))?;
        let mut values = decode_all(tensor)
            .map_err(|source| ConvertError::Decode { path: path.clone(), source })?;
        file.release(info);
        if let Some(role) = role {
            let row_len = if info.shape.len() >= 2 { info.shape[0] as usize } else { 1 };
            let heads = role.heads(hp.head_count as usize, hp.head_count_kv as usize);
            values =
                permute_f32(&values, row_len, heads, Permutation::GgufToHf, &path, &info.name)?;
        }
        writer.write(hf, &encode(dtype, &values))?;
        summary.push(ConvertedTensor {
            source_name: info.name.clone(),
            name: hf.clone(),
            from: info.dtype.name().to_owned(),
            to: dtype.dtype().name().to_owned(),
            shape: plan[i].shape.clone(),
            permuted: role.is_some(),
        });
        progress(i + 1, n, hf);
    }
    let mut files = writer.finish()?;

    let extras = ConfigExtras {
        bos_token_id: vocab.special("bos"),
        eos_token_id: vocab.special("eos"),
        pad_token_id: vocab.special("pad"),
        tie_word_embeddings: tied,
        attention_bias,
        torch_dtype: dtype.torch_name(),
    };
    let dir = stage.path();
    files.push(write_json(dir, "config.json", &hp.to_config(&extras))?);
    let mut gen = Map::new();
    gen.insert("_from_model_config".into(), json!(true));
    for (key, id) in [
        ("bos_token_id", extras.bos_token_id),
        ("eos_token_id", extras.eos_token_id),
        ("pad_token_id", extras.pad_token_id),
    ] {
        if let Some(id) = id {
            gen.insert(key.into(), json!(id));
        }
    }
    files.push(write_json(dir, "generation_config.json", &Json::Object(gen))?);
    let (tokenizer, tokenizer_config) = vocab.to_hf(&path, hp.context_length)?;
    files.push(write_json(dir, "tokenizer.json", &tokenizer)?);
    let mut special_map = Map::new();
    for key in [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "mask_token",
        "additional_special_tokens",
    ] {
        if let Some(v) = tokenizer_config.get(key) {
            special_map.insert(key.into(), v.clone());
        }
    }
    files.push(write_json(dir, "special_tokens_map.json", &Json::Object(special_map))?);
    files.push(write_json(dir, "tokenizer_config.json", &tokenizer_config)?);

    let final_dir = stage.commit()?;
    let files = files
        .into_iter()
        .map(|f| final_dir.join(f.file_name().map(PathBuf::from).unwrap_or_default()))
        .collect();
    Ok(ConvertSummary {
        direction: Direction::GgufToHf,
        arch: arch.gguf.to_owned(),
        files,
        tensors: summary,
    })
}
