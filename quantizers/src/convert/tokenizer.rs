//! Tokenizers between GGUF's `tokenizer.*` KVs and Hugging Face's `tokenizer.json` +
//! `tokenizer_config.json`: byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) here,
//! SentencePiece-style ones (`"llama"`, byte-fallback BPE in tokenizer.json) in the `spm` module.
//!
//! Facts (gguf-py `constants.py` `Keys.Tokenizer`, `TokenType`; `vocab.py` `SpecialVocab`;
//! llama.cpp `convert_hf_to_gguf.py::get_vocab_base`, `src/llama-vocab.cpp`):
//! * `tokenizer.ggml.tokens` lists every id's string; `token_type` is 1 normal, 2 unknown,
//!   3 control, 4 user-defined, 5 unused, 6 byte. The converter marks added tokens `special` in
//!   `tokenizer.json` (or shaped `<|...|>`) as control, other added tokens as user-defined, ids
//!   missing from the vocabulary as unused `[PAD{id}]`, and everything else normal.
//! * `tokenizer.ggml.merges` are the BPE merges as `"left right"` strings (tokenizer.json has
//!   them as such strings or, since transformers 4.45, as `[left, right]` pairs).
//! * Special ids come from `tokenizer_config.json` (`bos_token` ... looked up among the added
//!   tokens by content), falling back to `config.json`'s `*_token_id`; `add_bos_token` /
//!   `add_eos_token` from `tokenizer_config.json`, else from a `TemplateProcessing`
//!   post-processor; `chat_template` from `tokenizer_config.json` or `chat_template.jinja`.
//! * `tokenizer.ggml.pre` names the pre-tokenizer llama.cpp applies before BPE. Each name stands
//!   for fixed split rules and a `clean_spaces` flag (llama.cpp's counterpart of
//!   `clean_up_tokenization_spaces`); [`PRE_TOKENIZERS`] lists the tokenizer.json pre-tokenizer
//!   steps that split text the same way. Names that share split rules (`starcoder`, `smollm`)
//!   are told apart by `clean_up_tokenization_spaces`.

use std::collections::HashMap;
use std::path::Path;

use qtool_formats::gguf::{Array, GgufFile, Value};
use serde_json::{json, Map, Value as Json};

use super::{ConvertError, Result};

pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

/// Special-token roles: `tokenizer_config.json` prefix, GGUF id key, `config.json` id field.
pub const SPECIAL_TOKENS: &[(&str, &str)] = &[
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// `add_{role}_token` flags and their GGUF keys.
const ADD_FLAGS: &[(&str, &str)] =
    &[("bos", "tokenizer.ggml.add_bos_token"), ("eos", "tokenizer.ggml.add_eos_token")];

/// One pre-tokenizer step of tokenizer.json, normalised to what changes the split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreStep {
    /// `Digits { individual_digits: true }`.
    Digits,
    /// `Split { pattern: { Regex }, behavior: "Isolated", invert: false }`.
    Split(String),
    /// `ByteLevel { add_prefix_space: false, use_regex }` (the GPT-2 regex when `use_regex`).
    ByteLevel { use_regex: bool },
}

/// A llama.cpp pre-tokenizer name and its tokenizer.json equivalent.
#[derive(Clone, Copy, Debug)]
pub struct PreTokenizer {
    /// The name qtool writes.
    pub gguf: &'static str,
    /// Other names llama.cpp reads as the same pre-tokenizer (accepted on GGUF input).
    pub aliases: &'static [&'static str],
    pub clean_spaces: bool,
    /// llama.cpp skips merges for whole-word vocabulary hits with this pre-tokenizer
    /// (`ignore_merges`); tokenizer.json says so in the BPE model.
    pub ignore_merges: bool,
    pub steps: fn() -> Vec<PreStep>,
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers qtool maps (llama.cpp `llm_tokenizer_bpe` regexes: `gpt-2` is the GPT-2
/// regex alone; `starcoder`/`smollm` split every digit first, then the GPT-2 regex;
/// `llama-bpe` and `qwen2` use their own regex and byte-level mapping without the GPT-2 regex).
pub const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        gguf: "gpt-2",
        aliases: &["phi-2"],
        clean_spaces: true,
        ignore_merges: false,
        steps: || vec![PreStep::ByteLevel { use_regex: true }],
    },
    PreTokenizer {
        gguf: "smollm",
        aliases: &[],
        clean_spaces: false,
        ignore_merges: false,
        steps: || vec![PreStep::Digits, PreStep::ByteLevel { use_regex: true }],
    },
    PreTokenizer {
        gguf: "starcoder",
        aliases: &[],
        clean_spaces: true,
        ignore_merges: false,
        steps: || vec![PreStep::Digits, PreStep::ByteLevel { use_regex: true }],
    },
    PreTokenizer {
        gguf: "llama-bpe",
        aliases: &["llama3", "llama-v3"],
        clean_spaces: false,
        ignore_merges: true,
        steps: || {
            vec![PreStep::Split(LLAMA3_REGEX.into()), PreStep::ByteLevel { use_regex: false }]
        },
    },
    PreTokenizer {
        gguf: "qwen2",
        aliases: &["deepseek-r1-qwen"],
        clean_spaces: false,
        ignore_merges: false,
        steps: || vec![PreStep::Split(QWEN2_REGEX.into()), PreStep::ByteLevel { use_regex: false }],
    },
];

fn pre_names() -> String {
    PRE_TOKENIZERS.iter().map(|p| p.gguf).collect::<Vec<_>>().join(", ")
}

impl PreStep {
    fn to_json(&self) -> Json {
        match self {
            PreStep::Digits => json!({"type": "Digits", "individual_digits": true}),
            PreStep::Split(re) => json!({
                "type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false
            }),
            PreStep::ByteLevel { use_regex } => json!({
                "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex
            }),
        }
    }

    /// Reads one step; `Err` describes what is not mapped.
    fn from_json(v: &Json) -> std::result::Result<PreStep, String> {
        let ty = v.get("type").and_then(Json::as_str).unwrap_or("<no type>");
        let flag = |k: &str, default: bool| v.get(k).and_then(Json::as_bool).unwrap_or(default);
        match ty {
            "Digits" if flag("individual_digits", false) => Ok(PreStep::Digits),
            "ByteLevel" if !flag("add_prefix_space", true) => {
                Ok(PreStep::ByteLevel { use_regex: flag("use_regex", true) })
            }
            "ByteLevel" => Err("ByteLevel with add_prefix_space".into()),
            "Split" => {
                let re = v.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str);
                let behavior = v.get("behavior").and_then(Json::as_str);
                match (re, behavior, flag("invert", false)) {
                    (Some(re), Some("Isolated"), false) => Ok(PreStep::Split(re.to_owned())),
                    _ => Err(format!("Split {v}")),
                }
            }
            other => Err(other.to_owned()),
        }
    }
}

/// The tokenizer as GGUF holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece-style vocabularies).
    pub scores: Option<Vec<f32>>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    /// Role (`bos`, ...) → id, in [`SPECIAL_TOKENS`] order.
    pub special_ids: Vec<(&'static str, u32)>,
    /// `add_bos` / `add_eos` when stated.
    pub add_flags: Vec<(&'static str, bool)>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
    /// Named templates (`tokenizer.chat_template.{name}`).
    pub named_templates: Vec<(String, String)>,
}

impl GgufVocab {
    pub fn special(&self, role: &str) -> Option<u32> {
        self.special_ids.iter().find(|(r, _)| *r == role).map(|(_, id)| *id)
    }

    /// Reads the `tokenizer.*` KVs of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| {
                ConvertError::invalid(
                    path,
                    "metadata key 'tokenizer.ggml.model' is missing or not a string",
                )
            })?
            .to_owned();
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match file.kv(key) {
                None => Ok(None),
                Some(Value::Array(Array::String(v))) => Ok(Some(v.clone())),
                Some(_) => Err(ConvertError::invalid(
                    path,
                    format!("metadata key '{key}' is not an array of strings"),
                )),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
            ConvertError::invalid(path, "metadata key 'tokenizer.ggml.tokens' is missing")
        })?;
        let token_types = match file.get_array("tokenizer.ggml.token_type") {
            None => vec![TOKEN_NORMAL; tokens.len()],
            Some(a) => {
                let v: Option<Vec<i32>> = match a {
                    Array::I32(v) => Some(v.clone()),
                    Array::U32(v) => v.iter().map(|&x| i32::try_from(x).ok()).collect(),
                    Array::I8(v) => Some(v.iter().map(|&x| x.into()).collect()),
                    Array::U8(v) => Some(v.iter().map(|&x| x.into()).collect()),
                    _ => None,
                };
                v.ok_or_else(|| {
                    ConvertError::invalid(
                        path,
                        "metadata key 'tokenizer.ggml.token_type' is not an integer array",
                    )
                })?
            }
        };
        if token_types.len() != tokens.len() {
            return Err(ConvertError::invalid(
                path,
                format!(
                    "'tokenizer.ggml.token_type' has {} entries but there are {} tokens",
                    token_types.len(),
                    tokens.len()
                ),
            ));
        }
        let scores = match file.kv("tokenizer.ggml.scores") {
            None => None,
            Some(Value::Array(Array::F32(v))) if v.len() == tokens.len() => Some(v.clone()),
            Some(_) => {
                return Err(ConvertError::invalid(
                    path,
                    format!(
                        "'tokenizer.ggml.scores' is not an array of {} FLOAT32 scores",
                        tokens.len()
                    ),
                ))
            }
        };
        let mut special_ids = Vec::new();
        for (role, key) in SPECIAL_TOKENS {
            if let Some(v) = file.kv(key) {
                let id = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| (n as usize) < tokens.len());
                let id = id.ok_or_else(|| {
                    ConvertError::invalid(
                        path,
                        format!(
                            "metadata key '{key}' is {v:?}, not a token id below {}",
                            tokens.len()
                        ),
                    )
                })?;
                special_ids.push((*role, id));
            }
        }
        let add_flags = ADD_FLAGS
            .iter()
            .filter_map(|(role, key)| file.get_bool(key).map(|b| (*role, b)))
            .collect();
        let named_templates = file
            .kvs()
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("tokenizer.chat_template.")?;
                Some((name.to_owned(), v.as_str()?.to_owned()))
            })
            .collect();
        Ok(GgufVocab {
            model,
            pre: file.get_str("tokenizer.ggml.pre").map(str::to_owned),
            tokens,
            scores,
            token_types,
            merges: strings("tokenizer.ggml.merges")?.unwrap_or_default(),
            special_ids,
            add_flags,
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix"),
            chat_template: file.get_str("tokenizer.chat_template").map(str::to_owned),
            named_templates,
        })
    }

    /// The `tokenizer.*` KVs, in the order llama.cpp's converter writes them.
    pub fn to_kvs(&self) -> Vec<(String, Value)> {
        let mut kvs = Vec::new();
        if let Some(b) = self.add_space_prefix {
            kvs.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
        }
        for (role, key) in ADD_FLAGS {
            if let Some((_, b)) = self.add_flags.iter().find(|(r, _)| r == role) {
                kvs.push(((*key).into(), Value::Bool(*b)));
            }
        }
        kvs.push(("tokenizer.ggml.model".into(), Value::String(self.model.clone())));
        if let Some(pre) = &self.pre {
            kvs.push(("tokenizer.ggml.pre".into(), Value::String(pre.clone())));
        }
        kvs.push((
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(self.tokens.clone())),
        ));
        if let Some(scores) = &self.scores {
            kvs.push(("tokenizer.ggml.scores".into(), Value::Array(Array::F32(scores.clone()))));
        }
        kvs.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(self.token_types.clone())),
        ));
        if !self.merges.is_empty() {
            kvs.push((
                "tokenizer.ggml.merges".into(),
                Value::Array(Array::String(self.merges.clone())),
            ));
        }
        for (role, key) in SPECIAL_TOKENS {
            if let Some(id) = self.special(role) {
                kvs.push(((*key).into(), Value::U32(id)));
            }
        }
        if let Some(t) = &self.chat_template {
            kvs.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
        for (name, t) in &self.named_templates {
            kvs.push((format!("tokenizer.chat_template.{name}"), Value::String(t.clone())));
        }
        kvs
    }

    /// The byte-level BPE checks shared by both directions.
    fn pre_tokenizer(&self, path: &Path) -> Result<&'static PreTokenizer> {
        if self.model != "gpt2" {
            return Err(ConvertError::unsupported(
                path,
                format!(
                    "tokenizer model '{}' is not supported (qtool converts byte-level BPE \"gpt2\" and SentencePiece-style \"llama\" tokenizers)",
                    self.model
                ),
            ));
        }
        let pre = self.pre.as_deref().ok_or_else(|| {
            ConvertError::unsupported(path, "metadata key 'tokenizer.ggml.pre' is missing; the pre-tokenizer cannot be reproduced")
        })?;
        PRE_TOKENIZERS.iter().find(|p| p.gguf == pre || p.aliases.contains(&pre)).ok_or_else(|| {
            ConvertError::unsupported(
                path,
                format!(
                    "pre-tokenizer '{pre}' has no known tokenizer.json equivalent (known: {})",
                    pre_names()
                ),
            )
        })
    }

    /// `tokenizer.json` and `tokenizer_config.json` for transformers / tokenizers.
    pub fn to_hf(&self, path: &Path, model_max_length: u32) -> Result<(Json, Json)> {
        if self.model == "llama" {
            return super::spm::to_hf(self, path, model_max_length);
        }
        let pre = self.pre_tokenizer(path)?;
        let mut added = Vec::new();
        let mut decoder_entries = Map::new();
        for (id, (tok, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                let entry = json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": ty == TOKEN_CONTROL,
                });
                decoder_entries.insert(
                    id.to_string(),
                    json!({
                        "content": tok, "lstrip": false, "normalized": false, "rstrip": false,
                        "single_word": false, "special": ty == TOKEN_CONTROL,
                    }),
                );
                added.push(entry);
            }
        }
        // Ids the converter padded (`[PAD{id}]`, unused) are not part of the vocabulary; the
        // converter recreates them from `vocab_size`.
        let mut vocab = Map::new();
        for (id, (tok, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if ty == TOKEN_UNUSED && *tok == format!("[PAD{id}]") {
                continue;
            }
            if vocab.contains_key(tok) {
                return Err(ConvertError::unsupported(
                    path,
                    format!("token {tok:?} appears twice (id {id}); tokenizer.json cannot hold duplicate tokens"),
                ));
            }
            vocab.insert(tok.clone(), json!(id));
        }
        let steps: Vec<Json> = (pre.steps)().iter().map(PreStep::to_json).collect();
        let pre_json = if steps.len() == 1 {
            steps[0].clone()
        } else {
            json!({"type": "Sequence", "pretokenizers": steps})
        };
        let add =
            |role: &str| self.add_flags.iter().find(|(r, _)| *r == role).is_some_and(|(_, b)| *b);
        let post = self.post_processor(add("bos"), add("eos"));
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_json,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": self.merges,
            },
        });

        let mut cfg = Map::new();
        for (role, _) in ADD_FLAGS {
            if let Some((_, b)) = self.add_flags.iter().find(|(r, _)| r == role) {
                cfg.insert(format!("add_{role}_token"), json!(b));
            }
        }
        cfg.insert("add_prefix_space".into(), json!(self.add_space_prefix.unwrap_or(false)));
        cfg.insert("added_tokens_decoder".into(), Json::Object(decoder_entries));
        let role_ids: Vec<u32> = self.special_ids.iter().map(|(_, id)| *id).collect();
        let additional: Vec<&String> = self
            .tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(id, (_, &ty))| ty == TOKEN_CONTROL && !role_ids.contains(&(*id as u32)))
            .map(|(_, (t, _))| t)
            .collect();
        cfg.insert("additional_special_tokens".into(), json!(additional));
        for (role, _) in SPECIAL_TOKENS {
            if let Some(id) = self.special(role) {
                cfg.insert(format!("{role}_token"), json!(self.tokens[id as usize]));
            }
        }
        if let Some(t) = &self.chat_template {
            if self.named_templates.is_empty() {
                cfg.insert("chat_template".into(), json!(t));
            } else {
                let mut list = vec![json!({"name": "default", "template": t})];
                list.extend(
                    self.named_templates.iter().map(|(n, t)| json!({"name": n, "template": t})),
                );
                cfg.insert("chat_template".into(), Json::Array(list));
            }
        }
        cfg.insert("clean_up_tokenization_spaces".into(), json!(pre.clean_spaces));
        cfg.insert("model_max_length".into(), json!(model_max_length));
        cfg.insert("tokenizer_class".into(), json!("GPT2Tokenizer"));
        cfg.insert("vocab_size".into(), json!(self.tokens.len()));
        Ok((tokenizer, Json::Object(cfg)))
    }

    fn post_processor(&self, add_bos: bool, add_eos: bool) -> Json {
        self.template_processor(add_bos, add_eos).unwrap_or_else(|| {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        })
    }

    /// A `TemplateProcessing` adding BOS / EOS, or `None` when neither is added.
    pub(crate) fn template_processor(&self, add_bos: bool, add_eos: bool) -> Option<Json> {
        let bos = self.special("bos").filter(|_| add_bos);
        let eos = self.special("eos").filter(|_| add_eos);
        if bos.is_none() && eos.is_none() {
            return None;
        }
        let tok = |id: u32| json!({"SpecialToken": {"id": self.tokens[id as usize], "type_id": 0}});
        let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        for id in [bos, eos].into_iter().flatten() {
            let t = &self.tokens[id as usize];
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        if let Some(b) = bos {
            single.push(tok(b));
            pair.push(tok(b));
        }
        single.push(seq("A", 0));
        pair.push(seq("A", 0));
        if let Some(e) = eos {
            single.push(tok(e));
            pair.push(tok(e));
        }
        if let Some(b) = bos {
            pair.push(json!({"SpecialToken": {"id": self.tokens[b as usize], "type_id": 1}}));
        }
        pair.push(seq("B", 1));
        if let Some(e) = eos {
            pair.push(json!({"SpecialToken": {"id": self.tokens[e as usize], "type_id": 1}}));
        }
        Some(
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
        )
    }

    /// Reads a Hugging Face tokenizer from `dir` (`tokenizer.json`, `tokenizer_config.json`,
    /// optional `chat_template.jinja`), with `config` for the vocabulary size and id fallbacks.
    pub fn from_hf_dir(dir: &Path, config: &Json, vocab_size: u32) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = read_json(&tok_path)?.ok_or_else(|| {
            ConvertError::unsupported(
                dir,
                "no tokenizer.json (qtool converts tokenizers from tokenizer.json only)",
            )
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tcfg = read_json(&cfg_path)?.unwrap_or(Json::Object(Map::new()));
        let bad = |msg: String| ConvertError::invalid(&tok_path, msg);
        let unsupported = |msg: String| ConvertError::unsupported(&tok_path, msg);

        let model = tokenizer.get("model").ok_or_else(|| bad("no 'model'".into()))?;
        let model_type = model.get("type").and_then(Json::as_str).unwrap_or("<none>");
        if model_type != "BPE" {
            return Err(unsupported(format!(
                "tokenizer model type '{model_type}' is not supported (byte-level BPE only)"
            )));
        }
        let spm = model.get("byte_fallback").and_then(Json::as_bool) == Some(true);
        let (pre, spm_prefix) = if spm {
            let prefix = super::spm::space_prefix_of(&tokenizer).map_err(|what| {
                unsupported(format!(
                    "SentencePiece-style tokenizer: {what} has no llama.cpp equivalent"
                ))
            })?;
            (None, Some(prefix))
        } else {
            (Some(detect_pre(&tokenizer, &tcfg).map_err(unsupported)?), None)
        };

        // Vocabulary, by id.
        let vocab_map = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| bad("model.vocab is not an object".into()))?;
        let n = vocab_size as usize;
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut place = |tok: &str, id: &Json| -> Result<()> {
            let id = id
                .as_u64()
                .ok_or_else(|| bad(format!("token {tok:?} has id {id}, not an integer")))?;
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                bad(format!("token {tok:?} has id {id}, not below the vocab_size {vocab_size} of config.json"))
            })?;
            if slot.as_deref().is_some_and(|t| t != tok) {
                return Err(bad(format!(
                    "id {id} is given to both {:?} and {tok:?}",
                    slot.as_deref().unwrap_or("")
                )));
            }
            *slot = Some(tok.to_owned());
            Ok(())
        };
        for (tok, id) in vocab_map {
            place(tok, id)?;
        }
        let added =
            tokenizer.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
        let mut added_by_id: HashMap<u64, bool> = HashMap::new();
        for a in &added {
            let content = a
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| bad(format!("added token {a} has no content")))?;
            let id = a.get("id").cloned().unwrap_or(Json::Null);
            place(content, &id)?;
            added_by_id.insert(
                id.as_u64().unwrap_or(0),
                a.get("special").and_then(Json::as_bool).unwrap_or(false),
            );
        }
        let unk_token = model.get("unk_token").and_then(Json::as_str);
        let mut toks = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for (id, t) in tokens.into_iter().enumerate() {
            match t {
                None => {
                    toks.push(format!("[PAD{id}]"));
                    types.push(TOKEN_UNUSED);
                }
                Some(t) => {
                    let ty = match added_by_id.get(&(id as u64)) {
                        _ if spm && unk_token == Some(t.as_str()) => TOKEN_UNKNOWN,
                        _ if spm && super::spm::is_byte_token(&t) => TOKEN_BYTE,
                        Some(&special) if special || looks_special(&t) => TOKEN_CONTROL,
                        Some(_) => TOKEN_USER_DEFINED,
                        None => TOKEN_NORMAL,
                    };
                    toks.push(t);
                    types.push(ty);
                }
            }
        }

        let merges = match model.get("merges").and_then(Json::as_array) {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .map(|m| match m {
                    Json::String(s) => Ok(s.clone()),
                    Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                        // A space inside a pair is written as U+0120 + ... shifted by 256, as
                        // gguf-py does, so llama.cpp's split at the first space stays right.
                        (Some(a), Some(b)) => {
                            Ok(format!("{} {}", shift_spaces(a), shift_spaces(b)))
                        }
                        _ => Err(bad(format!("merge {m} is not a pair of strings"))),
                    },
                    _ => Err(bad(format!("merge {m} is neither \"a b\" nor [a, b]"))),
                })
                .collect::<Result<_>>()?,
        };

        // Special ids: tokenizer_config.json roles looked up among the added tokens, then
        // config.json ids.
        let mut special_ids = Vec::new();
        for (role, _) in SPECIAL_TOKENS {
            let content = match tcfg.get(format!("{role}_token")) {
                Some(Json::String(s)) => Some(s.as_str()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str),
                _ => None,
            };
            let from_added = content.and_then(|c| {
                added
                    .iter()
                    .find(|a| a.get("content").and_then(Json::as_str) == Some(c))
                    .and_then(|a| a.get("id")?.as_u64())
            });
            let from_config = config.get(format!("{role}_token_id")).and_then(Json::as_u64);
            if let Some(id) = from_added.or(from_config).filter(|&id| id < u64::from(vocab_size)) {
                special_ids.push((*role, id as u32));
            }
        }

        // SentencePiece-style: scores carry the merge order, llama.cpp reads no merges.
        let (scores, merges) = if spm {
            (Some(super::spm::scores_from_merges(&toks, &merges)), Vec::new())
        } else {
            (None, merges)
        };

        let mut add_flags = Vec::new();
        for (role, _) in ADD_FLAGS {
            if let Some(b) = tcfg.get(format!("add_{role}_token")).and_then(Json::as_bool) {
                add_flags.push((*role, b));
            }
        }
        if add_flags.is_empty() {
            add_flags =
                flags_from_post_processor(tokenizer.get("post_processor"), &special_ids, &toks);
        }

        let (chat_template, named_templates) = match tcfg.get("chat_template") {
            Some(Json::String(s)) => (Some(s.clone()), Vec::new()),
            Some(Json::Array(list)) => {
                let mut default = None;
                let mut named = Vec::new();
                for e in list {
                    let (Some(name), Some(t)) = (
                        e.get("name").and_then(Json::as_str),
                        e.get("template").and_then(Json::as_str),
                    ) else {
                        return Err(ConvertError::invalid(
                            &cfg_path,
                            format!("chat_template entry {e} needs 'name' and 'template'"),
                        ));
                    };
                    if name == "default" {
                        default = Some(t.to_owned());
                    } else {
                        named.push((name.to_owned(), t.to_owned()));
                    }
                }
                (default, named)
            }
            _ => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    let t =
                        std::fs::read_to_string(&jinja).map_err(|e| ConvertError::io(&jinja, e))?;
                    (Some(t), Vec::new())
                } else {
                    (None, Vec::new())
                }
            }
        };

        Ok(GgufVocab {
            model: if spm { "llama" } else { "gpt2" }.into(),
            pre: pre.map(|p| p.gguf.to_owned()),
            tokens: toks,
            scores,
            token_types: types,
            merges,
            special_ids,
            add_flags,
            add_space_prefix: spm_prefix
                .or_else(|| tcfg.get("add_prefix_space").and_then(Json::as_bool)),
            chat_template,
            named_templates,
        })
    }
}

/// The llama.cpp pre-tokenizer a byte-level tokenizer.json splits text like; `Err` says why
/// there is none.
fn detect_pre(tokenizer: &Json, tcfg: &Json) -> std::result::Result<&'static PreTokenizer, String> {
    if !tokenizer.get("normalizer").is_none_or(Json::is_null) {
        return Err(
            "a tokenizer with a normalizer is not supported (byte-level BPE has none)".into()
        );
    }

    // Pre-tokenizer → llama.cpp name.
    let pre_json = tokenizer.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    let raw_steps: Vec<Json> = match pre_json.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            pre_json.get("pretokenizers").and_then(Json::as_array).cloned().unwrap_or_default()
        }
        Some(_) => vec![pre_json.clone()],
        None => Vec::new(),
    };
    let steps: Vec<PreStep> = raw_steps
        .iter()
        .map(PreStep::from_json)
        .collect::<std::result::Result<_, _>>()
        .map_err(|what| format!("pre-tokenizer step {what} has no llama.cpp equivalent"))?;
    let clean = tcfg.get("clean_up_tokenization_spaces").and_then(Json::as_bool);
    let candidates: Vec<&PreTokenizer> =
        PRE_TOKENIZERS.iter().filter(|p| (p.steps)() == steps).collect();
    let pre = match candidates.as_slice() {
            [] => {
                return Err(format!(
                    "pre-tokenizer {pre_json} matches none of llama.cpp's known pre-tokenizers qtool maps ({})",
                    pre_names()
                ))
            }
            [one] => *one,
            many => many.iter().copied().find(|p| Some(p.clean_spaces) == clean).unwrap_or(many[0]),
        };
    Ok(pre)
}

fn shift_spaces(s: &str) -> String {
    s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect()
}

/// The converter's `does_token_look_special` for the shapes byte-level vocabularies use.
fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>") && t.len() > 4)
        || (t.starts_with("<｜") && t.ends_with("｜>"))
}

/// `add_bos`/`add_eos` from a `TemplateProcessing` whose single template starts / ends with a
/// special token (gguf-py's reading); other post-processors add nothing.
fn flags_from_post_processor(
    post: Option<&Json>,
    special_ids: &[(&'static str, u32)],
    tokens: &[String],
) -> Vec<(&'static str, bool)> {
    let Some(post) = post.filter(|p| !p.is_null()) else { return vec![("bos", false)] };
    let processors: Vec<&Json> = match post.get("processors").and_then(Json::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![post],
    };
    let content_of = |role: &str| {
        special_ids.iter().find(|(r, _)| *r == role).map(|(_, id)| tokens[*id as usize].as_str())
    };
    for p in processors {
        if p.get("type").and_then(Json::as_str) != Some("TemplateProcessing") {
            continue;
        }
        let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
        let special_at = |i: usize| {
            single
                .get(i)
                .and_then(|e| e.get("SpecialToken")?.get("id")?.as_str().map(str::to_owned))
        };
        let mut flags = Vec::new();
        if single.len() > 1 {
            let first = special_at(0);
            flags.push(("bos", first.is_some() && first.as_deref() == content_of("bos")));
            let last = special_at(single.len() - 1);
            if last.is_some() {
                flags.push(("eos", last.as_deref() == content_of("eos")));
            }
        }
        return flags;
    }
    vec![("bos", false)]
}

/// Reads a JSON file if it exists.
pub(crate) fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ConvertError::invalid(path, format!("not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GgufVocab {
        let mut tokens: Vec<String> =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra>"].map(String::from).to_vec();
        tokens.extend(["a", "b", "ab", "Ġ", "Ġab", "1", "[PAD10]"].map(String::from));
        let mut types = vec![TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_USER_DEFINED];
        types.extend([TOKEN_NORMAL; 6]);
        types.push(TOKEN_UNUSED);
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            scores: None,
            token_types: types,
            merges: vec!["a b".into(), "Ġ ab".into()],
            special_ids: vec![("bos", 1), ("eos", 2), ("unk", 0), ("pad", 2)],
            add_flags: vec![("bos", false)],
            add_space_prefix: Some(false),
            chat_template: Some("{{ x }}".into()),
            named_templates: vec![],
        }
    }

    fn write_dir(v: &GgufVocab, vocab_size: u32) -> (tempfile::TempDir, Json) {
        let (tok, cfg) = v.to_hf(Path::new("m.gguf"), 8192).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tok).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap())
            .unwrap();
        (dir, json!({"vocab_size": vocab_size}))
    }

    #[test]
    fn gguf_vocab_round_trips_through_hf_files() {
        let v = sample();
        let (dir, config) = write_dir(&v, 11);
        let back = GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.to_kvs(), v.to_kvs());
    }

    #[test]
    fn starcoder_and_smollm_are_told_apart_by_clean_spaces() {
        let mut v = sample();
        v.pre = Some("starcoder".into());
        let (dir, config) = write_dir(&v, 11);
        assert_eq!(
            GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap().pre.as_deref(),
            Some("starcoder")
        );
    }

    #[test]
    fn hf_json_has_the_expected_shape() {
        let (tok, cfg) = sample().to_hf(Path::new("m.gguf"), 8192).unwrap();
        assert_eq!(tok["pre_tokenizer"]["type"], "Sequence");
        assert_eq!(tok["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(tok["model"]["vocab"]["Ġab"], 8);
        assert!(tok["model"]["vocab"].get("[PAD10]").is_none());
        assert_eq!(tok["added_tokens"].as_array().unwrap().len(), 4);
        assert_eq!(tok["added_tokens"][3]["special"], false);
        assert_eq!(cfg["bos_token"], "<|im_start|>");
        assert_eq!(cfg["add_bos_token"], false);
        assert_eq!(cfg["clean_up_tokenization_spaces"], false);
        assert_eq!(cfg["additional_special_tokens"], json!([]));
    }

    #[test]
    fn bos_template_sets_add_bos() {
        let mut v = sample();
        v.add_flags = vec![("bos", true)];
        let (tok, mut cfg) = v.to_hf(Path::new("m.gguf"), 8192).unwrap();
        assert_eq!(tok["post_processor"]["type"], "TemplateProcessing");
        // Without the explicit flag, the template alone says "add bos".
        cfg.as_object_mut().unwrap().remove("add_bos_token");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tok).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap())
            .unwrap();
        let back = GgufVocab::from_hf_dir(dir.path(), &json!({}), 11).unwrap();
        assert_eq!(back.add_flags, vec![("bos", true)]);
    }

    #[test]
    fn unknown_pre_tokenizer_and_models_are_refused() {
        let mut v = sample();
        v.pre = Some("deepseek-llm".into());
        let err = v.to_hf(Path::new("m.gguf"), 8).unwrap_err().to_string();
        assert!(err.contains("deepseek-llm") && err.contains("smollm"), "{err}");
        let mut v = sample();
        v.model = "bert".into();
        let err = v.to_hf(Path::new("m.gguf"), 8).unwrap_err().to_string();
        assert!(err.contains("'bert'"), "{err}");
    }

    #[test]
    fn sentencepiece_vocab_round_trips_with_its_merge_order() {
        let tokens: Vec<String> =
            ["<unk>", "<s>", "</s>", "<0x0A>", "▁", "a", "b", "▁a", "ab", "▁ab"]
                .map(String::from)
                .to_vec();
        let v = GgufVocab {
            model: "llama".into(),
            tokens,
            scores: Some(vec![0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]),
            token_types: vec![
                TOKEN_UNKNOWN,
                TOKEN_CONTROL,
                TOKEN_CONTROL,
                TOKEN_BYTE,
                1,
                1,
                1,
                1,
                1,
                1,
            ],
            special_ids: vec![("bos", 1), ("eos", 2), ("unk", 0)],
            add_flags: vec![("bos", true)],
            add_space_prefix: Some(true),
            ..Default::default()
        };
        let (tok, cfg) = v.to_hf(Path::new("m.gguf"), 64).unwrap();
        assert_eq!(tok["model"]["byte_fallback"], true);
        assert_eq!(tok["model"]["unk_token"], "<unk>");
        // Merge order follows the scores: "▁a" (-4) before "ab" (-5) before "▁ab" (-6).
        assert_eq!(tok["model"]["merges"], json!(["▁ a", "a b", "▁ ab", "▁a b"]));
        assert_eq!(tok["normalizer"]["normalizers"][0]["type"], "Prepend");
        assert_eq!(tok["post_processor"]["type"], "TemplateProcessing");
        assert_eq!(cfg["add_bos_token"], true);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tok).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap())
            .unwrap();
        let back = GgufVocab::from_hf_dir(dir.path(), &json!({}), 10).unwrap();
        assert_eq!(back.model, "llama");
        assert_eq!(back.pre, None);
        assert_eq!(back.tokens, v.tokens);
        assert_eq!(back.token_types, v.token_types);
        assert!(back.merges.is_empty(), "llama.cpp's SPM tokenizer reads scores, not merges");
        assert_eq!(back.add_space_prefix, Some(true));
        assert_eq!(back.add_flags, vec![("bos", true), ("eos", false)]);
        // Re-derived scores rank the merged pieces in the same order.
        let s = back.scores.unwrap();
        assert!(s[7] > s[8] && s[8] > s[9], "{s:?}");
    }

    #[test]
    fn llama_cpp_aliases_are_read_and_written_canonically() {
        let mut v = sample();
        v.pre = Some("llama-v3".into());
        let (tok, _) = v.to_hf(Path::new("m.gguf"), 8).unwrap();
        assert_eq!(tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], LLAMA3_REGEX);
        assert_eq!(tok["model"]["ignore_merges"], true);
        let (dir, config) = write_dir(&v, 11);
        let back = GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap();
        assert_eq!(back.pre.as_deref(), Some("llama-bpe"));
    }

    #[test]
    fn hf_side_errors_name_the_problem() {
        let v = sample();
        let (dir, config) = write_dir(&v, 11);
        // A vocabulary larger than config.json's vocab_size.
        let err = GgufVocab::from_hf_dir(dir.path(), &config, 5).unwrap_err().to_string();
        assert!(err.contains("vocab_size 5"), "{err}");
        // A Metaspace pre-tokenizer is not byte-level BPE.
        let mut tok: Json =
            serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap())
                .unwrap();
        tok["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁"});
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tok).unwrap())
            .unwrap();
        let err = GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap_err().to_string();
        assert!(err.contains("Metaspace"), "{err}");
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let err = GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap_err().to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
    }

    #[test]
    fn pair_merges_are_joined_like_gguf_py() {
        let v = sample();
        let (dir, config) = write_dir(&v, 11);
        let p = dir.path().join("tokenizer.json");
        let mut tok: Json = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        tok["model"]["merges"] = json!([["a", "b"], ["Ġ", "ab"], ["x y", "z"]]);
        std::fs::write(&p, serde_json::to_vec(&tok).unwrap()).unwrap();
        let back = GgufVocab::from_hf_dir(dir.path(), &config, 11).unwrap();
        assert_eq!(back.merges, vec!["a b", "Ġ ab", "xĠy z"]);
    }
}
