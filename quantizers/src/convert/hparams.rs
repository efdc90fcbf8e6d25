//! Llama-family hyper-parameters, read from GGUF KVs or `config.json` and written to the other.
//!
//! Facts (gguf-py `constants.py` `Keys.LLM` / `Keys.Attention` / `Keys.Rope`, llama.cpp
//! `convert_hf_to_gguf.py` `TextModel.set_gguf_parameters` and `LlamaModel`): the one-to-one
//! fields are in [`qtool_formats::naming::HPARAMS`]; `{arch}.rope.dimension_count` is the head
//! size (`head_dim`, else `hidden_size / num_attention_heads`); an explicit `head_dim` is also
//! written as `attention.key_length` / `value_length`; rope scaling is
//! `rope.scaling.type` (`linear`, `yarn`) with `rope.scaling.factor` and, for YaRN,
//! `rope.scaling.original_context_length`. Llama-3 rope scaling has no KVs: the converter stores
//! per-dimension frequency factors as the F32 tensor `rope_freqs.weight` ([`llama3_rope_freqs`]).
//!
//! Numbers are validated (present, integral, in `u32` range, heads dividing the width) so a bad
//! config is an error naming the field rather than a model llama.cpp rejects later.

use std::path::Path;

use qtool_formats::gguf::{GgufFile, Value};
use qtool_formats::naming::{self, rope_keys, ArchInfo, HparamKind};
use serde_json::{json, Map, Value as Json};

use super::{ConvertError, Result};

/// Rope scaling as both conventions can express it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f32,
    },
    Yarn {
        factor: f32,
        original_context: Option<u32>,
    },
    /// Llama 3.x: frequency factors computed from these, stored as `rope_freqs.weight`.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: u32,
    },
}

/// The hyper-parameters a llama-family model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub arch: &'static ArchInfo,
    pub context_length: u32,
    pub embedding_length: u32,
    pub block_count: u32,
    pub feed_forward_length: u32,
    pub head_count: u32,
    pub head_count_kv: u32,
    /// Only when given explicitly (`head_dim` / `attention.key_length`).
    pub head_dim: Option<u32>,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub vocab_size: u32,
    pub rope_scaling: Option<RopeScaling>,
}

impl Hparams {
    /// The head size: explicit, else width / heads.
    pub fn head_size(&self) -> u32 {
        self.head_dim.unwrap_or(self.embedding_length / self.head_count)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(ConvertError::invalid(path, msg));
        if self.head_count == 0 || self.head_count_kv == 0 {
            return bad(format!(
                "attention head counts must be positive (heads {}, kv heads {})",
                self.head_count, self.head_count_kv
            ));
        }
        if self.head_count % self.head_count_kv != 0 {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.head_count, self.head_count_kv
            ));
        }
        if self.head_dim.is_none() && self.embedding_length % self.head_count != 0 {
            return bad(format!(
                "hidden size {} is not a multiple of {} heads and no head_dim is given",
                self.embedding_length, self.head_count
            ));
        }
        if self.head_size() % 2 != 0 || self.head_size() == 0 {
            return bad(format!(
                "head size {} must be even and positive for rope",
                self.head_size()
            ));
        }
        if self.block_count == 0 || self.embedding_length == 0 {
            return bad("block count and hidden size must be positive".into());
        }
        Ok(())
    }

    /// Reads the hyper-parameters of a supported architecture from GGUF metadata.
    pub fn from_gguf(
        file: &GgufFile,
        arch: &'static ArchInfo,
        n_tokens: Option<usize>,
    ) -> Result<Self> {
        let path = file.path();
        let key = |suffix: &str| naming::hparam_key(arch.gguf, suffix);
        let uint = |suffix: &str| -> Result<Option<u32>> {
            let k = key(suffix);
            match file.kv(&k) {
                None => Ok(None),
                Some(v) => {
                    v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
                        ConvertError::invalid(
                            path,
                            format!(
                                "metadata key '{k}' is {v:?}, expected an unsigned 32-bit integer"
                            ),
                        )
                    })
                }
            }
        };
        let float = |suffix: &str| -> Result<Option<f32>> {
            let k = key(suffix);
            match file.kv(&k) {
                None => Ok(None),
                Some(Value::F32(x)) => Ok(Some(*x)),
                Some(Value::F64(x)) => Ok(Some(*x as f32)),
                Some(v) => Err(ConvertError::invalid(
                    path,
                    format!("metadata key '{k}' is {v:?}, expected a float"),
                )),
            }
        };
        let need = |suffix: &str| -> Result<u32> {
            uint(suffix)?.ok_or_else(|| {
                ConvertError::invalid(path, format!("metadata key '{}' is missing", key(suffix)))
            })
        };
        let head_count = need("attention.head_count")?;
        let head_dim = uint(rope_keys::KEY_LENGTH)?;
        let embedding_length = need("embedding_length")?;
        let rope_dim = uint(rope_keys::DIMENSION_COUNT)?;
        // A rotary dimension smaller than the head (partial rotary) cannot be expressed for
        // llama in config.json; refuse rather than write a model that computes differently.
        let head = head_dim.unwrap_or(embedding_length.checked_div(head_count).unwrap_or(0));
        if let Some(r) = rope_dim {
            if r != head {
                return Err(ConvertError::unsupported(
                    path,
                    format!("{} = {r} differs from the head size {head} (partial rotary embeddings are not supported)", key(rope_keys::DIMENSION_COUNT)),
                ));
            }
        }
        let rope_scaling = match file.kv(&key(rope_keys::SCALING_TYPE)).and_then(Value::as_str) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float(rope_keys::SCALING_FACTOR)?.unwrap_or(1.0),
            }),
            Some("yarn") => Some(RopeScaling::Yarn {
                factor: float(rope_keys::SCALING_FACTOR)?.unwrap_or(1.0),
                original_context: uint(rope_keys::SCALING_ORIG_CTX)?,
            }),
            Some(other) => {
                return Err(ConvertError::unsupported(
                    path,
                    format!("rope scaling type '{other}' is not supported"),
                ))
            }
        };
        let vocab_size = match uint("vocab_size")? {
            Some(v) => v,
            None => n_tokens.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                ConvertError::invalid(
                    path,
                    format!(
                        "metadata key '{}' is missing and there is no token list",
                        key("vocab_size")
                    ),
                )
            })?,
        };
        let h = Hparams {
            arch,
            context_length: need("context_length")?,
            embedding_length,
            block_count: need("block_count")?,
            feed_forward_length: need("feed_forward_length")?,
            head_count,
            head_count_kv: uint("attention.head_count_kv")?.unwrap_or(head_count),
            head_dim,
            rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
            rms_eps: float("attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
                ConvertError::invalid(
                    path,
                    format!(
                        "metadata key '{}' is missing",
                        key("attention.layer_norm_rms_epsilon")
                    ),
                )
            })?,
            vocab_size,
            rope_scaling,
        };
        h.check(path)?;
        Ok(h)
    }

    /// The `{arch}.*` KVs, in the order llama.cpp's converter writes them.
    pub fn to_kvs(&self) -> Vec<(String, Value)> {
        let a = self.arch.gguf;
        let k = |s: &str| naming::hparam_key(a, s);
        let mut kvs = vec![
            (k("block_count"), Value::U32(self.block_count)),
            (k("context_length"), Value::U32(self.context_length)),
            (k("embedding_length"), Value::U32(self.embedding_length)),
            (k("feed_forward_length"), Value::U32(self.feed_forward_length)),
            (k("attention.head_count"), Value::U32(self.head_count)),
            (k("attention.head_count_kv"), Value::U32(self.head_count_kv)),
            (k("rope.freq_base"), Value::F32(self.rope_theta)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(self.rms_eps)),
        ];
        if let Some(hd) = self.head_dim {
            kvs.push((k(rope_keys::KEY_LENGTH), Value::U32(hd)));
            kvs.push((k(rope_keys::VALUE_LENGTH), Value::U32(hd)));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                kvs.push((k(rope_keys::SCALING_TYPE), Value::String("linear".into())));
                kvs.push((k(rope_keys::SCALING_FACTOR), Value::F32(*factor)));
            }
            Some(RopeScaling::Yarn { factor, original_context }) => {
                kvs.push((k(rope_keys::SCALING_TYPE), Value::String("yarn".into())));
                kvs.push((k(rope_keys::SCALING_FACTOR), Value::F32(*factor)));
                if let Some(c) = original_context {
                    kvs.push((k(rope_keys::SCALING_ORIG_CTX), Value::U32(*c)));
                }
            }
            Some(RopeScaling::Llama3 { .. }) | None => {}
        }
        kvs.push((k("vocab_size"), Value::U32(self.vocab_size)));
        kvs.push((k(rope_keys::DIMENSION_COUNT), Value::U32(self.head_size())));
        kvs
    }

    /// Reads `config.json` of a supported architecture.
    pub fn from_config(config: &Json, arch: &'static ArchInfo, path: &Path) -> Result<Self> {
        let field = |name: &str| config.get(name).filter(|v| !v.is_null());
        let uint = |name: &str| -> Result<Option<u32>> {
            match field(name) {
                None => Ok(None),
                Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
                    ConvertError::invalid(path, format!("config.json field '{name}' is {v}, expected a non-negative 32-bit integer"))
                }),
            }
        };
        let need = |name: &str| -> Result<u32> {
            uint(name)?
                .ok_or_else(|| ConvertError::invalid(path, format!("config.json has no '{name}'")))
        };
        let float = |name: &str| -> Result<Option<f32>> {
            match field(name) {
                None => Ok(None),
                Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                    ConvertError::invalid(
                        path,
                        format!("config.json field '{name}' is {v}, expected a number"),
                    )
                }),
            }
        };
        let head_count = need("num_attention_heads")?;
        let embedding_length = need("hidden_size")?;
        // HF writes `head_dim` for every Llama config in recent versions; only a value that
        // differs from width / heads carries information.
        let head_dim =
            uint("head_dim")?.filter(|&hd| head_count == 0 || hd * head_count != embedding_length);
        let rope_scaling = match field("rope_scaling") {
            None => None,
            Some(rs) => rope_scaling_from_json(rs, path)?,
        };
        if let Some(p) = field("partial_rotary_factor").and_then(Json::as_f64) {
            if p != 1.0 {
                return Err(ConvertError::unsupported(
                    path,
                    format!("partial_rotary_factor {p} is not supported"),
                ));
            }
        }
        let h = Hparams {
            arch,
            context_length: need("max_position_embeddings")?,
            embedding_length,
            block_count: need("num_hidden_layers")?,
            feed_forward_length: need("intermediate_size")?,
            head_count,
            head_count_kv: uint("num_key_value_heads")?.unwrap_or(head_count),
            head_dim,
            rope_theta: float("rope_theta")?.unwrap_or(10000.0),
            // transformers' LlamaConfig default.
            rms_eps: float("rms_norm_eps")?.unwrap_or(1e-6),
            vocab_size: need("vocab_size")?,
            rope_scaling,
        };
        h.check(path)?;
        Ok(h)
    }

    /// The `config.json` of the model, for transformers' `*ForCausalLM` of the architecture.
    pub fn to_config(&self, extra: &ConfigExtras) -> Json {
        let mut c = Map::new();
        c.insert("architectures".into(), json!([self.arch.hf[0]]));
        c.insert("attention_bias".into(), json!(extra.attention_bias));
        c.insert("attention_dropout".into(), json!(0.0));
        if let Some(b) = extra.bos_token_id {
            c.insert("bos_token_id".into(), json!(b));
        }
        if let Some(e) = extra.eos_token_id {
            c.insert("eos_token_id".into(), json!(e));
        }
        c.insert("head_dim".into(), json!(self.head_size()));
        c.insert("hidden_act".into(), json!("silu"));
        c.insert("hidden_size".into(), json!(self.embedding_length));
        c.insert("initializer_range".into(), json!(0.02));
        c.insert("intermediate_size".into(), json!(self.feed_forward_length));
        c.insert("max_position_embeddings".into(), json!(self.context_length));
        if self.arch.gguf == "llama" {
            c.insert("mlp_bias".into(), json!(false));
        }
        c.insert("model_type".into(), json!(self.arch.model_type));
        c.insert("num_attention_heads".into(), json!(self.head_count));
        c.insert("num_hidden_layers".into(), json!(self.block_count));
        c.insert("num_key_value_heads".into(), json!(self.head_count_kv));
        if let Some(p) = extra.pad_token_id {
            c.insert("pad_token_id".into(), json!(p));
        }
        c.insert("rms_norm_eps".into(), shortest_json(self.rms_eps));
        c.insert("rope_scaling".into(), rope_scaling_to_json(self.rope_scaling.as_ref()));
        c.insert("rope_theta".into(), shortest_json(self.rope_theta));
        c.insert("tie_word_embeddings".into(), json!(extra.tie_word_embeddings));
        c.insert("torch_dtype".into(), json!(extra.torch_dtype));
        c.insert("use_cache".into(), json!(true));
        c.insert("vocab_size".into(), json!(self.vocab_size));
        Json::Object(c)
    }
}

/// `config.json` fields that come from outside the hyper-parameter KVs.
#[derive(Clone, Debug, Default)]
pub struct ConfigExtras {
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub torch_dtype: &'static str,
}

/// An f32 as the JSON number with the shortest decimal that reads back as the same f32
/// (`1e-05`, not `9.999999747378752e-06`), as Python would have written the original config.
pub fn shortest_json(x: f32) -> Json {
    let shortest: f64 = format!("{x}").parse().unwrap_or(f64::from(x));
    serde_json::Number::from_f64(shortest).map_or(Json::Null, Json::Number)
}

fn rope_scaling_to_json(rs: Option<&RopeScaling>) -> Json {
    match rs {
        None => Json::Null,
        Some(RopeScaling::Linear { factor }) => {
            json!({"factor": shortest_json(*factor), "rope_type": "linear", "type": "linear"})
        }
        Some(RopeScaling::Yarn { factor, original_context }) => {
            let mut m = Map::new();
            m.insert("factor".into(), shortest_json(*factor));
            if let Some(c) = original_context {
                m.insert("original_max_position_embeddings".into(), json!(c));
            }
            m.insert("rope_type".into(), json!("yarn"));
            m.insert("type".into(), json!("yarn"));
            Json::Object(m)
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        }) => json!({
            "factor": shortest_json(*factor),
            "high_freq_factor": shortest_json(*high_freq_factor),
            "low_freq_factor": shortest_json(*low_freq_factor),
            "original_max_position_embeddings": original_context,
            "rope_type": "llama3",
        }),
    }
}

fn rope_scaling_from_json(rs: &Json, path: &Path) -> Result<Option<RopeScaling>> {
    let kind =
        rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str).unwrap_or("default");
    let num = |name: &str| rs.get(name).and_then(Json::as_f64).map(|x| x as f32);
    let ctx = |name: &str| rs.get(name).and_then(Json::as_u64).and_then(|c| u32::try_from(c).ok());
    Ok(match kind {
        "default" => None,
        "linear" => {
            let factor = num("factor").ok_or_else(|| {
                ConvertError::invalid(path, "rope_scaling 'linear' has no numeric 'factor'")
            })?;
            Some(RopeScaling::Linear { factor })
        }
        "yarn" => {
            let factor = num("factor").ok_or_else(|| {
                ConvertError::invalid(path, "rope_scaling 'yarn' has no numeric 'factor'")
            })?;
            Some(RopeScaling::Yarn {
                factor,
                original_context: ctx("original_max_position_embeddings"),
            })
        }
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor").unwrap_or(8.0),
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_context: ctx("original_max_position_embeddings").unwrap_or(8192),
        }),
        other => {
            return Err(ConvertError::unsupported(
                path,
                format!(
                "rope_scaling type '{other}' is not supported (supported: linear, yarn, llama3)"
            ),
            ))
        }
    })
}

/// The Llama-3 per-dimension rope frequency factors (`rope_freqs.weight`, `head_size / 2`
/// values). The reference converter computes them on float32 torch tensors, so this computes in
/// f32 too (`pow` may differ from torch's in the last bit).
pub fn llama3_rope_freqs(
    theta: f32,
    head_size: u32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: u32,
) -> Vec<f32> {
    let old_ctx = original_context as f32;
    let low_freq_wavelen = old_ctx / low_freq_factor;
    let high_freq_wavelen = old_ctx / high_freq_factor;
    (0..head_size / 2)
        .map(|i| {
            let freq = 1.0f32 / theta.powf((2 * i) as f32 / head_size as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_freq_wavelen {
                1.0
            } else if wavelen > low_freq_wavelen {
                factor
            } else {
                let smooth =
                    (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// Looks the architecture of `config.json` up, refusing unknown ones by name.
pub fn arch_of_config(config: &Json, path: &Path) -> Result<&'static ArchInfo> {
    let names: Vec<&str> = config
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    if let Some(a) = names.iter().find_map(|n| naming::arch_by_hf(n)) {
        return Ok(a);
    }
    let arch = if names.is_empty() {
        config
            .get("model_type")
            .and_then(Json::as_str)
            .unwrap_or("<none: config.json has no 'architectures'>")
            .to_owned()
    } else {
        names.join(", ")
    };
    Err(ConvertError::UnsupportedArch {
        path: path.to_path_buf(),
        arch,
        supported: naming::supported_architectures(),
    })
}

/// Looks the architecture of a GGUF file up, refusing unknown ones by name.
pub fn arch_of_gguf(file: &GgufFile) -> Result<&'static ArchInfo> {
    let path = file.path();
    let arch = file.get_str("general.architecture").ok_or_else(|| {
        ConvertError::invalid(
            path,
            "metadata key 'general.architecture' is missing or not a string",
        )
    })?;
    naming::arch_by_gguf(arch).ok_or_else(|| ConvertError::UnsupportedArch {
        path: path.to_path_buf(),
        arch: arch.to_owned(),
        supported: naming::supported_architectures(),
    })
}

/// Which of the table's kinds a value has (used by tests of the key table).
pub fn kind_of(v: &Value) -> Option<HparamKind> {
    match v {
        Value::U32(_) => Some(HparamKind::U32),
        Value::F32(_) => Some(HparamKind::F32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_config() -> Json {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": 49152,
            "head_dim": 64, "rope_scaling": null
        })
    }

    #[test]
    fn config_round_trips_through_kvs_and_back() {
        let cfg = smollm_config();
        let arch = arch_of_config(&cfg, Path::new("c")).unwrap();
        let h = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap();
        assert_eq!(h.head_dim, None, "head_dim equal to width/heads carries no information");
        assert_eq!(h.rms_eps, 1e-5f32);
        let kvs = h.to_kvs();
        let get = |k: &str| kvs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert!(matches!(get("llama.rope.dimension_count"), Some(Value::U32(64))));
        assert!(matches!(get("llama.attention.head_count_kv"), Some(Value::U32(3))));
        assert!(get("llama.attention.key_length").is_none());
        // Every one-to-one field of the naming table is written with its declared type.
        for (_, suffix, kind) in naming::HPARAMS {
            let v = get(&naming::hparam_key("llama", suffix)).unwrap_or_else(|| panic!("{suffix}"));
            assert_eq!(kind_of(&v), Some(*kind), "{suffix}");
        }
        let back = h.to_config(&ConfigExtras { torch_dtype: "float32", ..Default::default() });
        assert_eq!(back["rms_norm_eps"], json!(1e-05));
        assert_eq!(back["rope_theta"], json!(100000.0));
        let h2 = Hparams::from_config(&back, arch, Path::new("c")).unwrap();
        assert_eq!(h, h2);
    }

    #[test]
    fn shortest_json_reads_back_as_the_same_f32() {
        for x in [1e-5f32, 1e-6, 100000.0, 500000.0, 0.1, 3.0e-7] {
            let j = shortest_json(x);
            assert_eq!(j.as_f64().unwrap() as f32, x);
        }
        assert_eq!(shortest_json(1e-5).as_f64(), Some(1e-5), "the decimal, not the f32 widened");
    }

    #[test]
    fn unknown_architecture_is_named_with_the_supported_list() {
        let cfg = json!({"architectures": ["GemmaForCausalLM"]});
        let err = arch_of_config(&cfg, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(err.contains("GemmaForCausalLM"), "{err}");
        assert!(err.contains("LlamaForCausalLM") && err.contains("qwen3"), "{err}");
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let mut cfg = smollm_config();
        cfg.as_object_mut().unwrap().remove("num_hidden_layers");
        let arch = naming::arch_by_gguf("llama").unwrap();
        let err = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
        let mut cfg = smollm_config();
        cfg["num_key_value_heads"] = json!(4);
        let err = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("KV heads"), "{err}");
        let mut cfg = smollm_config();
        cfg["hidden_size"] = json!(-3);
        let err = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
        let mut cfg = smollm_config();
        cfg["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0});
        let err = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("dynamic"), "{err}");
    }

    #[test]
    fn rope_scaling_maps_to_keys() {
        let arch = naming::arch_by_gguf("llama").unwrap();
        let mut cfg = smollm_config();
        cfg["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        let h = Hparams::from_config(&cfg, arch, Path::new("c")).unwrap();
        let kvs = h.to_kvs();
        assert!(kvs
            .iter()
            .any(|(k, v)| k == "llama.rope.scaling.type" && v.as_str() == Some("linear")));
        assert!(kvs
            .iter()
            .any(|(k, v)| k == "llama.rope.scaling.factor"
                && matches!(v, Value::F32(f) if *f == 4.0)));
    }
}
