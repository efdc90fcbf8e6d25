//! Checkpoint-format conventions: recognising which quantization scheme a checkpoint's tensor
//! names, metadata and `config.json` say it holds.
//!
//! Detection is split in two so the rules can be tested without files: [`SchemeEvidence`]
//! gathers everything the rules look at (tensor names and dtypes, container metadata,
//! `config.json`, the side files `hf_quant_config.json` / `quantize_config.json`, and the JSON of
//! ComfyUI's `*.comfy_quant` marker tensors), and [`detect`] is a pure function of it.
//! [`detect_scheme`] fills the evidence from an opened [`Checkpoint`].
//!
//! The markers are the ones the loaders themselves key on (see `/work/shared/formats.md`
//! §1-§3, §5.2): ComfyUI's `scaled_fp8` / `.scale_weight` (legacy), `_quantization_metadata` and
//! `.comfy_quant` (current); `quantization_config.quant_method` for compressed-tensors, GPTQ, AWQ
//! and ModelOpt; `hf_quant_config.json` for ModelOpt exports; `general.file_type` for GGUF.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::Path;

use serde_json::{Map, Value};

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{ContainerFormat, TensorDType, TensorInfo};

/// The quantization scheme a checkpoint is stored in, as far as its markers tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Only plain float weights (F16/BF16/F32/F64), no quantization markers.
    Unquantized,
    /// A GGUF file; `file_type` is the `general.file_type` value when present.
    Gguf {
        file_type: Option<u64>,
    },
    /// ComfyUI's legacy scaled FP8 (`scaled_fp8` marker tensor and/or `.scale_weight` scales).
    ComfyFp8Scaled,
    /// ComfyUI mixed precision: `.comfy_quant` tensors or `_quantization_metadata`; the distinct
    /// per-layer `format` values, sorted (empty when the markers could not be decoded).
    ComfyQuant {
        formats: Vec<String>,
    },
    /// FP8 weights without any scale marker: a plain cast (ComfyUI's `fp8_e4m3fn` / `fp8_e5m2`).
    Fp8Cast {
        dtype: DType,
    },
    /// `quant_method: "compressed-tensors"`; `format` is the config's `format` when present.
    CompressedTensors {
        format: Option<String>,
    },
    Gptq,
    Awq,
    /// NVIDIA ModelOpt export; `algo` is its `quant_algo` when present.
    ModelOpt {
        algo: Option<String>,
    },
    /// A `quant_method` qtool has no name for (e.g. `bitsandbytes`, `fp8`).
    OtherQuantMethod {
        quant_method: String,
    },
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Unquantized => f.write_str("unquantized"),
            Scheme::Gguf { file_type: None } => f.write_str("gguf"),
            Scheme::Gguf { file_type: Some(t) } => match llama_file_type_name(*t) {
                Some(name) => write!(f, "gguf:{name}"),
                None => write!(f, "gguf:file_type={t}"),
            },
            Scheme::ComfyFp8Scaled => f.write_str("comfy fp8 scaled"),
            Scheme::ComfyQuant { formats } if formats.is_empty() => f.write_str("comfy-quant"),
            Scheme::ComfyQuant { formats } => write!(f, "comfy-quant:{}", formats.join(",")),
            Scheme::Fp8Cast { dtype } => f.write_str(match dtype {
                DType::F8E5M2 => "fp8:e5m2",
                DType::F8E4M3Fnuz => "fp8:e4m3fnuz",
                DType::F8E5M2Fnuz => "fp8:e5m2fnuz",
                _ => "fp8:e4m3fn",
            }),
            Scheme::CompressedTensors { format: None } => f.write_str("compressed-tensors"),
            Scheme::CompressedTensors { format: Some(fmt) } => {
                write!(f, "compressed-tensors:{fmt}")
            }
            Scheme::Gptq => f.write_str("gptq"),
            Scheme::Awq => f.write_str("awq"),
            Scheme::ModelOpt { algo: None } => f.write_str("modelopt"),
            Scheme::ModelOpt { algo: Some(a) } => write!(f, "modelopt:{a}"),
            Scheme::OtherQuantMethod { quant_method } => write!(f, "quant_method:{quant_method}"),
        }
    }
}

/// llama.cpp's `llama_ftype` names (the values of `general.file_type`). Source: llama.cpp
/// `include/llama.h` `enum llama_ftype`, as mirrored by gguf-py's `LlamaFileType`; ids that
/// llama.cpp removed (4-6, 33-35) have no name.
pub fn llama_file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        19 => "MOSTLY_IQ2_XXS",
        20 => "MOSTLY_IQ2_XS",
        21 => "MOSTLY_Q2_K_S",
        22 => "MOSTLY_IQ3_XS",
        23 => "MOSTLY_IQ3_XXS",
        24 => "MOSTLY_IQ1_S",
        25 => "MOSTLY_IQ4_NL",
        26 => "MOSTLY_IQ3_S",
        27 => "MOSTLY_IQ3_M",
        28 => "MOSTLY_IQ2_S",
        29 => "MOSTLY_IQ2_M",
        30 => "MOSTLY_IQ4_XS",
        31 => "MOSTLY_IQ1_M",
        32 => "MOSTLY_BF16",
        36 => "MOSTLY_TQ1_0",
        37 => "MOSTLY_TQ2_0",
        38 => "MOSTLY_MXFP4_MOE",
        39 => "MOSTLY_NVFP4",
        40 => "MOSTLY_Q1_0",
        1024 => "GUESSED",
        _ => return None,
    })
}

/// Everything scheme detection looks at.
#[derive(Clone, Copy, Debug)]
pub struct SchemeEvidence<'a> {
    pub format: ContainerFormat,
    pub tensors: &'a [TensorInfo],
    /// Container metadata as [`crate::TensorSource::metadata`] returns it.
    pub metadata: &'a Map<String, Value>,
    /// `config.json`.
    pub config: Option<&'a Value>,
    /// ModelOpt's `hf_quant_config.json`.
    pub hf_quant_config: Option<&'a Value>,
    /// AutoGPTQ/AutoAWQ's `quantize_config.json` (or `quant_config.json`).
    pub quantize_config: Option<&'a Value>,
    /// The decoded JSON of each `*.comfy_quant` tensor that could be decoded.
    pub comfy_quant: &'a [Value],
}

/// Detects the scheme from its evidence; `None` when the markers are absent but the weights are
/// not plain floats either (e.g. integer weights with no config saying what they are).
pub fn detect(ev: &SchemeEvidence<'_>) -> Option<Scheme> {
    if ev.format == ContainerFormat::Gguf {
        let file_type = ev.metadata.get("general.file_type").and_then(as_u64);
        return Some(Scheme::Gguf { file_type });
    }

    // ModelOpt's own side file is the most specific statement a checkpoint can make.
    if let Some(hf) = ev.hf_quant_config {
        let algo = hf.pointer("/quantization/quant_algo").or_else(|| hf.get("quant_algo"));
        return Some(Scheme::ModelOpt { algo: algo.and_then(Value::as_str).map(str::to_string) });
    }

    if let Some(scheme) =
        ev.config.and_then(|c| c.get("quantization_config")).and_then(from_quant_config)
    {
        return Some(scheme);
    }
    if let Some(scheme) = ev.quantize_config.and_then(from_quant_config) {
        return Some(scheme);
    }

    let names = || ev.tensors.iter().map(|t| t.name.as_str());

    if let Some(meta) = ev.metadata.get("_quantization_metadata") {
        return Some(Scheme::ComfyQuant { formats: comfy_metadata_formats(meta) });
    }
    if names().any(|n| n.ends_with(".comfy_quant")) {
        let formats: BTreeSet<String> = ev
            .comfy_quant
            .iter()
            .filter_map(|v| v.get("format").and_then(Value::as_str).map(str::to_string))
            .collect();
        return Some(Scheme::ComfyQuant { formats: formats.into_iter().collect() });
    }
    if names()
        .any(|n| n == "scaled_fp8" || n.ends_with(".scaled_fp8") || n.ends_with(".scale_weight"))
    {
        return Some(Scheme::ComfyFp8Scaled);
    }

    let has_suffix = |s: &str| names().any(|n| n.ends_with(s));
    if has_suffix(".qweight") && has_suffix(".qzeros") && has_suffix(".scales") {
        // AutoGPTQ always writes `g_idx`; AutoAWQ's GEMM layout never does.
        return Some(if has_suffix(".g_idx") { Scheme::Gptq } else { Scheme::Awq });
    }

    let st_dtype = |t: &TensorInfo| match t.dtype {
        TensorDType::St(d) => Some(d),
        TensorDType::Ggml(_) => None,
    };
    if let Some(d) = ev.tensors.iter().filter_map(st_dtype).find(|d| {
        matches!(d, DType::F8E4M3 | DType::F8E5M2 | DType::F8E4M3Fnuz | DType::F8E5M2Fnuz)
    }) {
        return Some(Scheme::Fp8Cast { dtype: d });
    }

    let plain_float = |d: DType| matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    let any_float = ev.tensors.iter().filter_map(st_dtype).any(plain_float);
    // Integer or sub-byte *weights* without a marker are a packing qtool cannot name; integer
    // buffers such as BERT's `position_ids` are not weights and do not count.
    // A weight is a tensor whose last name segment starts with `weight` (`weight`,
    // `weight_packed`, ...) or is `qweight`.
    let is_weight = |name: &str| {
        let last = name.rsplit('.').next().unwrap_or(name);
        last.starts_with("weight") || last == "qweight"
    };
    let odd_weight = ev
        .tensors
        .iter()
        .any(|t| is_weight(&t.name) && st_dtype(t).is_some_and(|d| !plain_float(d)));
    (any_float && !odd_weight).then_some(Scheme::Unquantized)
}

/// `quantization_config` (or `quantize_config.json`) → scheme, by `quant_method`.
fn from_quant_config(qc: &Value) -> Option<Scheme> {
    let method = qc.get("quant_method").and_then(Value::as_str).map(str::to_ascii_lowercase);
    let text = |key: &str| qc.get(key).and_then(Value::as_str).map(str::to_string);
    match method.as_deref() {
        Some("compressed-tensors") => Some(Scheme::CompressedTensors { format: text("format") }),
        Some("gptq") => Some(Scheme::Gptq),
        Some("awq") => Some(Scheme::Awq),
        Some("modelopt") => Some(Scheme::ModelOpt { algo: text("quant_algo") }),
        Some(other) => Some(Scheme::OtherQuantMethod { quant_method: other.to_string() }),
        // AutoAWQ's own quant_config.json has no quant_method, only `version: "gemm"` and `w_bit`.
        None if qc.get("w_bit").is_some() || text("version").as_deref() == Some("gemm") => {
            Some(Scheme::Awq)
        }
        None => None,
    }
}

/// The distinct layer formats of ComfyUI's `_quantization_metadata` (a JSON string holding
/// `{"layers": {name: {"format": ...}}}`).
fn comfy_metadata_formats(meta: &Value) -> Vec<String> {
    let parsed = match meta {
        Value::String(s) => serde_json::from_str::<Value>(s).ok(),
        other => Some(other.clone()),
    };
    let formats: BTreeSet<String> = parsed
        .as_ref()
        .and_then(|v| v.get("layers"))
        .and_then(Value::as_object)
        .map(|layers| {
            layers
                .values()
                .filter_map(|l| l.get("format").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    formats.into_iter().collect()
}

/// A JSON number, or a `{"value": number}` wrapper, as `u64`.
fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.get("value").and_then(Value::as_u64))
}

/// The largest `.comfy_quant` tensor qtool decodes while detecting (real ones hold a few dozen
/// bytes of JSON); anything bigger is not a marker worth reading during a header-only inspect.
const MAX_COMFY_QUANT_BYTES: u64 = 4096;

/// Detects the scheme of an opened checkpoint. Reads the side files next to it and the bytes of
/// the small `*.comfy_quant` marker tensors (the only tensor data a header-only inspect touches);
/// a marker that is not JSON is skipped rather than fatal, since it only refines the name.
pub fn detect_scheme(ckpt: &Checkpoint) -> Result<Option<Scheme>> {
    let source = ckpt.source();
    let metadata = source.metadata();
    let dir = match ckpt {
        Checkpoint::Safetensors { path, .. } if path.is_dir() => Some(path.as_path()),
        Checkpoint::Safetensors { path, .. } => {
            Some(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        }
        Checkpoint::Gguf { .. } => None,
    };
    let side = |name: &str| -> Result<Option<Value>> {
        match dir {
            Some(d) => read_json_if_present(&d.join(name)),
            None => Ok(None),
        }
    };
    let hf_quant_config = side("hf_quant_config.json")?;
    let quantize_config = match side("quantize_config.json")? {
        Some(v) => Some(v),
        None => side("quant_config.json")?,
    };
    let comfy_quant: Vec<Value> = source
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".comfy_quant") && t.nbytes <= MAX_COMFY_QUANT_BYTES)
        .filter_map(|t| serde_json::from_slice(source.data(t)).ok())
        .collect();
    Ok(detect(&SchemeEvidence {
        format: source.format(),
        tensors: source.tensors(),
        metadata: &metadata,
        config: ckpt.config(),
        hf_quant_config: hf_quant_config.as_ref(),
        quantize_config: quantize_config.as_ref(),
        comfy_quant: &comfy_quant,
    }))
}

fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use serde_json::json;

    fn t(name: &str, dtype: DType) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype: TensorDType::St(dtype),
            shape: vec![4, 4],
            file: 0,
            offset: 0,
            nbytes: 0,
        }
    }

    /// Runs detection on safetensors evidence with the given parts.
    fn run(
        tensors: &[TensorInfo],
        metadata: Map<String, Value>,
        config: Option<Value>,
        comfy_quant: &[Value],
    ) -> Option<String> {
        detect(&SchemeEvidence {
            format: ContainerFormat::Safetensors,
            tensors,
            metadata: &metadata,
            config: config.as_ref(),
            hf_quant_config: None,
            quantize_config: None,
            comfy_quant,
        })
        .map(|s| s.to_string())
    }

    fn llama_bf16() -> Vec<TensorInfo> {
        vec![
            t("model.embed_tokens.weight", DType::BF16),
            t("model.layers.0.self_attn.q_proj.weight", DType::BF16),
            t("model.norm.weight", DType::F32),
        ]
    }

    #[test]
    fn plain_float_is_unquantized_even_with_integer_buffers() {
        assert_eq!(run(&llama_bf16(), Map::new(), None, &[]).as_deref(), Some("unquantized"));
        let mut bert = llama_bf16();
        bert.push(t("embeddings.position_ids", DType::I64));
        assert_eq!(run(&bert, Map::new(), None, &[]).as_deref(), Some("unquantized"));
    }

    #[test]
    fn unmarked_integer_weights_are_unknown() {
        let mut ts = llama_bf16();
        ts.push(t("model.layers.0.mlp.up_proj.weight", DType::I8));
        assert_eq!(run(&ts, Map::new(), None, &[]), None);
        let packed = vec![t("l.weight_packed", DType::I32), t("l.weight_scale", DType::BF16)];
        assert_eq!(run(&packed, Map::new(), None, &[]), None);
        assert_eq!(run(&[], Map::new(), None, &[]), None);
    }

    #[test]
    fn gguf_file_type_names() {
        let meta: Map<String, Value> =
            [("general.file_type".to_string(), json!(15))].into_iter().collect();
        let tensors = [TensorInfo {
            name: "token_embd.weight".into(),
            dtype: TensorDType::Ggml(GgmlType::Q4_K),
            shape: vec![256, 4],
            file: 0,
            offset: 0,
            nbytes: 576,
        }];
        let ev = |metadata| SchemeEvidence {
            format: ContainerFormat::Gguf,
            tensors: &tensors,
            metadata,
            config: None,
            hf_quant_config: None,
            quantize_config: None,
            comfy_quant: &[],
        };
        assert_eq!(detect(&ev(&meta)).unwrap().to_string(), "gguf:MOSTLY_Q4_K_M");
        let wrapped: Map<String, Value> =
            [("general.file_type".to_string(), json!({"type": "UINT32", "value": 3}))]
                .into_iter()
                .collect();
        assert_eq!(detect(&ev(&wrapped)).unwrap().to_string(), "gguf:MOSTLY_Q4_1");
        let odd: Map<String, Value> =
            [("general.file_type".to_string(), json!(5))].into_iter().collect();
        assert_eq!(detect(&ev(&odd)).unwrap().to_string(), "gguf:file_type=5");
        assert_eq!(detect(&ev(&Map::new())).unwrap().to_string(), "gguf");
    }

    #[test]
    fn file_type_table_spot_checks() {
        assert_eq!(llama_file_type_name(0), Some("ALL_F32"));
        assert_eq!(llama_file_type_name(7), Some("MOSTLY_Q8_0"));
        assert_eq!(llama_file_type_name(18), Some("MOSTLY_Q6_K"));
        assert_eq!(llama_file_type_name(32), Some("MOSTLY_BF16"));
        assert_eq!(llama_file_type_name(4), None);
        assert_eq!(llama_file_type_name(34), None);
    }

    #[test]
    fn comfy_legacy_scaled_fp8_marker() {
        let ts = vec![
            t("scaled_fp8", DType::F8E4M3),
            t("blocks.0.attn.q.weight", DType::F8E4M3),
            t("blocks.0.attn.q.scale_weight", DType::F32),
        ];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("comfy fp8 scaled"));
        // `.scale_weight` alone (text encoders whose marker was stripped) is enough.
        let ts = vec![t("enc.q.weight", DType::F8E4M3), t("enc.q.scale_weight", DType::F32)];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("comfy fp8 scaled"));
        let ts = vec![t("model.diffusion_model.scaled_fp8", DType::F8E4M3)];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("comfy fp8 scaled"));
    }

    #[test]
    fn comfy_quant_tensors_name_their_formats() {
        let ts = vec![
            t("blocks.0.q.weight", DType::U8),
            t("blocks.0.q.comfy_quant", DType::U8),
            t("blocks.1.q.weight", DType::F8E4M3),
            t("blocks.1.q.comfy_quant", DType::U8),
        ];
        let markers = [json!({"format": "nvfp4"}), json!({"format": "float8_e4m3fn"})];
        assert_eq!(
            run(&ts, Map::new(), None, &markers).as_deref(),
            Some("comfy-quant:float8_e4m3fn,nvfp4")
        );
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("comfy-quant"));
    }

    #[test]
    fn comfy_quantization_metadata() {
        let layers = json!({"format_version": "1.0", "layers": {
            "a": {"format": "float8_e4m3fn"}, "b": {"format": "float8_e4m3fn"}}});
        let meta: Map<String, Value> =
            [("_quantization_metadata".to_string(), Value::String(layers.to_string()))]
                .into_iter()
                .collect();
        let ts = vec![t("a.weight", DType::F8E4M3), t("a.weight_scale", DType::F32)];
        assert_eq!(run(&ts, meta, None, &[]).as_deref(), Some("comfy-quant:float8_e4m3fn"));
    }

    #[test]
    fn unscaled_fp8_cast() {
        let ts = vec![t("blocks.0.q.weight", DType::F8E5M2), t("norm.weight", DType::BF16)];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("fp8:e5m2"));
        let ts = vec![t("blocks.0.q.weight", DType::F8E4M3)];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("fp8:e4m3fn"));
    }

    #[test]
    fn compressed_tensors_format_from_config() {
        let cfg = json!({"quantization_config": {
            "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}});
        let ts = vec![t("l.weight_packed", DType::U8), t("l.weight_scale", DType::F8E4M3)];
        assert_eq!(
            run(&ts, Map::new(), Some(cfg), &[]).as_deref(),
            Some("compressed-tensors:nvfp4-pack-quantized")
        );
        let cfg = json!({"quantization_config": {"quant_method": "compressed-tensors"}});
        assert_eq!(run(&ts, Map::new(), Some(cfg), &[]).as_deref(), Some("compressed-tensors"));
    }

    #[test]
    fn gptq_and_awq_from_config_and_from_names() {
        let ts = vec![
            t("l.qweight", DType::I32),
            t("l.qzeros", DType::I32),
            t("l.scales", DType::F16),
            t("l.g_idx", DType::I32),
        ];
        assert_eq!(run(&ts, Map::new(), None, &[]).as_deref(), Some("gptq"));
        assert_eq!(run(&ts[..3], Map::new(), None, &[]).as_deref(), Some("awq"));
        let cfg = json!({"quantization_config": {"quant_method": "gptq", "bits": 4}});
        assert_eq!(run(&ts[..3], Map::new(), Some(cfg), &[]).as_deref(), Some("gptq"));
        let cfg = json!({"quantization_config": {"quant_method": "awq", "version": "gemm"}});
        assert_eq!(run(&ts, Map::new(), Some(cfg), &[]).as_deref(), Some("awq"));
    }

    #[test]
    fn quantize_config_side_file() {
        let ts = vec![t("l.qweight", DType::I32)];
        let awq = json!({"zero_point": true, "q_group_size": 128, "w_bit": 4, "version": "gemm"});
        let meta = Map::new();
        let ev = SchemeEvidence {
            format: ContainerFormat::Safetensors,
            tensors: &ts,
            metadata: &meta,
            config: None,
            hf_quant_config: None,
            quantize_config: Some(&awq),
            comfy_quant: &[],
        };
        assert_eq!(detect(&ev), Some(Scheme::Awq));
    }

    #[test]
    fn modelopt_from_side_file_and_config() {
        let ts = vec![t("l.weight", DType::U8), t("l.weight_scale_2", DType::F32)];
        let hf = json!({"producer": {"name": "modelopt"},
            "quantization": {"quant_algo": "NVFP4", "group_size": 16}});
        let meta = Map::new();
        let ev = SchemeEvidence {
            format: ContainerFormat::Safetensors,
            tensors: &ts,
            metadata: &meta,
            config: None,
            hf_quant_config: Some(&hf),
            quantize_config: None,
            comfy_quant: &[],
        };
        assert_eq!(detect(&ev).unwrap().to_string(), "modelopt:NVFP4");
        let cfg = json!({"quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8"}});
        assert_eq!(run(&ts, Map::new(), Some(cfg), &[]).as_deref(), Some("modelopt:FP8"));
    }

    #[test]
    fn unknown_quant_method_is_named() {
        let cfg = json!({"quantization_config": {"quant_method": "bitsandbytes"}});
        assert_eq!(
            run(&llama_bf16(), Map::new(), Some(cfg), &[]).as_deref(),
            Some("quant_method:bitsandbytes")
        );
    }
}
