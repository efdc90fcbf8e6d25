//! Hugging Face directory → GGUF for llama-family models.
//!
//! The plan is made before anything is written: names through [`naming::hf_to_gguf_name`],
//! shapes reversed into `ne` order, and every tensor's type chosen by llama.cpp's rules for the
//! requested file type ([`crate::recipe::plan`]: norms and other 1-D tensors stay F32, matrices
//! get the recipe's type). Tensors are then decoded to f32 one at a time, q/k rows permuted for
//! llama's rope layout, encoded and streamed in llama.cpp's tensor order (by layer, then name).

use std::path::Path;

use qtool_formats::gguf::{GgufWriter, Value, DEFAULT_ALIGNMENT};
use qtool_formats::naming::{self, Permutation, QkRole};
use qtool_formats::{
    Checkpoint, GgmlType, PlannedTensor, TensorDType, TensorInfo, TensorSink, TensorSource,
};
use serde_json::Value as Json;

use super::hparams::{arch_of_config, llama3_rope_freqs, Hparams, RopeScaling};
use super::to_hf::permute_f32;
use super::tokenizer::GgufVocab;
use super::{ConvertError, ConvertSummary, ConvertedTensor, Direction, GgufTarget, Result};
use crate::decode::{can_decode, decode_all};
use crate::gguf::quantize_rows;
use crate::recipe::gguf::{ggml_n_dims, quantization_exclusion, weight_order};
use crate::recipe::requant::first_invalid_block;
use crate::recipe::{plan, ModelParams, RecipeOptions, TensorDesc};

/// `GGML_QNT_VERSION`, written when any tensor is block-quantized.
const QUANTIZATION_VERSION: u32 = 2;
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Where a planned tensor's values come from.
#[derive(Debug)]
enum Origin<'a> {
    Source(&'a TensorInfo),
    /// Llama-3 rope frequency factors, computed from `config.json`.
    RopeFreqs(Vec<f32>),
}

#[derive(Debug)]
struct Job<'a> {
    name: String,
    ne: Vec<u64>,
    to: GgmlType,
    origin: Origin<'a>,
    role: Option<QkRole>,
}

/// HF tensors converters drop: rotary caches are recomputed by every runtime.
fn is_dropped(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Converts the Hugging Face directory `input` into the GGUF file `output`.
pub fn hf_to_gguf(
    input: &Path,
    output: &Path,
    fmt: &str,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ConvertSummary> {
    let target = GgufTarget::parse(fmt)?;
    let ckpt = qtool_formats::open(input)?;
    let Checkpoint::Safetensors { source, config, .. } = &ckpt else {
        return Err(ConvertError::invalid(
            input,
            "expected a Hugging Face directory of safetensors",
        ));
    };
    let cfg_path = input.join("config.json");
    let config = config
        .as_ref()
        .ok_or_else(|| ConvertError::invalid(input, "no config.json in the directory"))?;
    let arch = arch_of_config(config, &cfg_path)?;
    let mut hp = Hparams::from_config(config, arch, &cfg_path)?;
    let vocab = GgufVocab::from_hf_dir(input, config, hp.vocab_size)?;
    hp.vocab_size = vocab.tokens.len() as u32;
    let tied = config.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false);

    // Names and shapes of everything the output holds.
    let mut descs = Vec::new();
    let mut origins = Vec::new();
    for info in source.tensors() {
        if is_dropped(&info.name) || (tied && info.name == "lm_head.weight") {
            continue;
        }
        let name = naming::hf_to_gguf_name(&info.name).ok_or_else(|| {
            ConvertError::tensor(
                &info_path(source, info),
                &info.name,
                format!("no GGUF name for this tensor in the {} layout", arch.gguf),
            )
        })?;
        let float = matches!(info.dtype, TensorDType::St(d) if d.is_float());
        if !float || !can_decode(info.dtype) {
            return Err(ConvertError::tensor(
                &info_path(source, info),
                &info.name,
                format!("dtype {} is not a floating-point type qtool decodes; llama-family weights are float", info.dtype),
            ));
        }
        if info.shape.is_empty() || info.shape.len() > qtool_formats::gguf::MAX_DIMS as usize {
            return Err(ConvertError::tensor(
                &info_path(source, info),
                &info.name,
                format!("shape {:?} cannot be a GGUF tensor", info.shape),
            ));
        }
        let ne: Vec<u64> = info.shape.iter().rev().copied().collect();
        descs.push(TensorDesc { name, ne, ty: GgmlType::F32 });
        origins.push(Origin::Source(info));
    }
    if let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_context,
    }) = hp.rope_scaling
    {
        let freqs = llama3_rope_freqs(
            hp.rope_theta,
            hp.head_size(),
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        );
        descs.push(TensorDesc {
            name: ROPE_FREQS.into(),
            ne: vec![freqs.len() as u64],
            ty: GgmlType::F32,
        });
        origins.push(Origin::RopeFreqs(freqs));
    }
    if !descs.iter().any(|d| d.name == "token_embd.weight") {
        return Err(ConvertError::invalid(input, "no model.embed_tokens.weight tensor"));
    }

    let mut kvs: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.gguf.into())),
        ("general.type".into(), Value::String("model".into())),
    ];
    let name = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(name) = name {
        kvs.push(("general.name".into(), Value::String(name)));
    }
    kvs.extend(hp.to_kvs());

    // Types.
    let ty_of: Vec<GgmlType> = match target {
        GgufTarget::FileType(ft) => {
            let model = ModelParams::from_kvs(&kvs)
                .map_err(|source| ConvertError::Recipe { path: input.to_path_buf(), source })?;
            let p = plan(ft, &model, &descs, &RecipeOptions::default())
                .map_err(|source| ConvertError::Recipe { path: input.to_path_buf(), source })?;
            let mut types = vec![GgmlType::F32; descs.len()];
            for t in &p.tensors {
                types[t.input_index] = t.to;
            }
            types
        }
        GgufTarget::Uniform(ty) => descs
            .iter()
            .map(|d| {
                if quantization_exclusion(&d.name, &d.ne, false).is_some() {
                    GgmlType::F32
                } else if d.ne[0] % ty.block_size() == 0 {
                    ty
                } else {
                    GgmlType::F16
                }
            })
            .collect(),
    };
    // A quantized output is the file of the usual two-step pipeline, F16 conversion then
    // quantization, byte for byte: llama.cpp's quantize copies the F16 file's KVs without
    // `general.file_type` and appends `general.quantization_version` and `general.file_type`
    // last, so they go last here too. Unquantized outputs keep the F16 conversion's order.
    let any_quantized = ty_of.iter().any(|t| t.is_quantized());
    let file_type = match target {
        GgufTarget::FileType(ft) => Some(("general.file_type".to_string(), Value::U32(ft.id()))),
        GgufTarget::Uniform(_) => None,
    };
    if any_quantized {
        kvs.extend(vocab.to_kvs());
        kvs.push(("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)));
        kvs.extend(file_type);
    } else {
        kvs.extend(file_type);
        kvs.extend(vocab.to_kvs());
    }

    // llama.cpp's order: by layer, then name.
    let mut order: Vec<usize> = (0..descs.len()).collect();
    order.sort_by(|&a, &b| weight_order(&descs[a].name, &descs[b].name));
    let mut origins: Vec<Option<Origin<'_>>> = origins.into_iter().map(Some).collect();
    let mut jobs = Vec::with_capacity(order.len());
    for i in order {
        let d = &descs[i];
        let n_dims = ggml_n_dims(&d.ne);
        let mut ne: Vec<u64> = d.ne.iter().copied().take(n_dims).collect();
        ne.resize(n_dims, 1);
        let role = QkRole::of(&d.name).filter(|_| arch.permute_qk);
        let origin = origins[i].take().ok_or_else(|| {
            ConvertError::invalid(input, format!("tensor '{}' planned twice", d.name))
        })?;
        jobs.push(Job { name: d.name.clone(), ne, to: ty_of[i], origin, role });
    }
    let planned: Vec<PlannedTensor> = jobs
        .iter()
        .map(|j| {
            let numel: u64 = j.ne.iter().product();
            let nbytes = j.to.byte_len(j.ne[0], numel).ok_or_else(|| {
                ConvertError::tensor(
                    output,
                    &j.name,
                    format!("shape {:?} is not a whole number of {} blocks", j.ne, j.to),
                )
            })?;
            Ok(PlannedTensor {
                name: j.name.clone(),
                dtype: TensorDType::Ggml(j.to),
                shape: j.ne.clone(),
                nbytes,
            })
        })
        .collect::<Result<_>>()?;

    qtool_formats::atomic::ensure_not_input(output, source.files())?;
    let mut writer = GgufWriter::create(output, kvs, planned, DEFAULT_ALIGNMENT)?;
    let mut summary = Vec::with_capacity(jobs.len());
    let n = jobs.len();
    let mut out = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let (values, source_name, from) = match &job.origin {
            Origin::Source(info) => {
                let path = info_path(source, info);
                let tensor = source
                    .get(&info.name)
                    .ok_or_else(|| ConvertError::tensor(&path, &info.name, "missing"))?;
                let mut values = decode_all(tensor)
                    .map_err(|source| ConvertError::Decode { path: path.clone(), source })?;
                source.release(info);
                if let Some(role) = job.role {
                    let row_len = if info.shape.len() >= 2 {
                        *info.shape.last().unwrap_or(&1) as usize
                    } else {
                        1
                    };
                    let heads = role.heads(hp.head_count as usize, hp.head_count_kv as usize);
                    values = permute_f32(
                        &values,
                        row_len,
                        heads,
                        Permutation::HfToGguf,
                        &path,
                        &info.name,
                    )?;
                }
                (values, info.name.clone(), info.dtype.name().to_owned())
            }
            Origin::RopeFreqs(v) => (v.clone(), "(rope_scaling)".to_owned(), "F32".to_owned()),
        };
        // The two-step pipeline quantizes what the F16 file holds: round to F16 first, so that
        // `--fmt q4_k_m` equals `--fmt f16` followed by `qtool quantize --fmt q4_k_m`.
        let values = if job.to.is_quantized() {
            values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
        } else {
            values
        };
        let numel: u64 = job.ne.iter().product();
        out.clear();
        out.resize(job.to.byte_len(job.ne[0], numel).unwrap_or(0) as usize, 0);
        quantize_rows(job.to, &values, job.ne[0] as usize, &mut out)
            .map_err(|e| ConvertError::tensor(output, &job.name, e.to_string()))?;
        if let Some(block) = first_invalid_block(job.to, &out) {
            return Err(ConvertError::tensor(
                &source_path(source, &job.origin, input),
                &source_name,
                format!("encoding to {} gave Inf or NaN at block {block} (the weights hold Inf/NaN or values out of the type's range)", job.to),
            ));
        }
        writer.write(&job.name, &out)?;
        summary.push(ConvertedTensor {
            source_name,
            name: job.name.clone(),
            from,
            to: job.to.name().to_owned(),
            shape: job.ne.clone(),
            permuted: job.role.is_some(),
        });
        progress(i + 1, n, &job.name);
    }
    let file = writer.finish()?;
    Ok(ConvertSummary {
        direction: Direction::HfToGguf,
        arch: arch.gguf.to_owned(),
        files: vec![file],
        tensors: summary,
    })
}

fn info_path(source: &dyn TensorSource, info: &TensorInfo) -> std::path::PathBuf {
    source.files().get(info.file).cloned().unwrap_or_default()
}

fn source_path(source: &dyn TensorSource, origin: &Origin<'_>, input: &Path) -> std::path::PathBuf {
    match origin {
        Origin::Source(info) => info_path(source, info),
        Origin::RopeFreqs(_) => input.join("config.json"),
    }
}
