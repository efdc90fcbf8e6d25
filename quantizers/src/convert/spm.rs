//! SentencePiece-style llama tokenizers (`tokenizer.ggml.model = "llama"`) and their
//! `tokenizer.json` form: a BPE model with `byte_fallback`, spaces written as `▁`.
//!
//! Facts (llama.cpp `src/llama-vocab.cpp` `llm_tokenizer_spm`, gguf-py `vocab.py`
//! `LlamaHfVocab`, transformers `convert_slow_tokenizer.py` `SentencePieceExtractor` /
//! `LlamaConverter`):
//! * llama.cpp's SPM tokenizer replaces spaces by `▁`, prepends one when
//!   `tokenizer.ggml.add_space_prefix` (default true), and merges adjacent symbols greedily,
//!   always the pair whose concatenation is the vocabulary token with the highest score; a
//!   character not in the vocabulary becomes its UTF-8 bytes as `<0xXX>` tokens (type 6, byte).
//! * tokenizer.json expresses the same thing as BPE: merges in rank order (the extractor sorts
//!   every split `l + r` of every piece by the piece's score, best first), a normalizer
//!   `Prepend("▁")` + `Replace(" ", "▁")` (or a `Metaspace` pre-tokenizer with
//!   `prepend_scheme` first/always) and `byte_fallback: true`.
//! * So GGUF → HF derives merges from scores as the extractor does, and HF → GGUF gives each
//!   token produced by a merge the score `-rank` of the first merge producing it, which makes
//!   llama.cpp's "highest score first" pick the merge BPE ranks first. (gguf-py's tokenizer.json
//!   fallback writes a constant -1000 instead, which loses that order.) Tokens no merge
//!   produces (characters, bytes, specials) get score 0: llama.cpp never compares them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use super::tokenizer::{
    GgufVocab, SPECIAL_TOKENS, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
};
use super::Result;

const SPACE: &str = "\u{2581}";

/// `<0xXX>` with two hex digits.
pub(crate) fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// Whether the tokenizer prepends `▁` to the text, from its normalizer / pre-tokenizer;
/// `Err` names a step llama.cpp's SPM tokenizer has no counterpart for.
pub(crate) fn space_prefix_of(tokenizer: &Json) -> std::result::Result<bool, String> {
    let mut prefix = false;
    let norm = tokenizer.get("normalizer").cloned().unwrap_or(Json::Null);
    let steps: Vec<Json> = match norm.get("type").and_then(Json::as_str) {
        None => Vec::new(),
        Some("Sequence") => {
            norm.get("normalizers").and_then(Json::as_array).cloned().unwrap_or_default()
        }
        Some(_) => vec![norm.clone()],
    };
    for s in &steps {
        match s.get("type").and_then(Json::as_str) {
            Some("Prepend") if s.get("prepend").and_then(Json::as_str) == Some(SPACE) => {
                prefix = true
            }
            Some("Replace")
                if s.get("pattern").and_then(|p| p.get("String")).and_then(Json::as_str)
                    == Some(" ")
                    && s.get("content").and_then(Json::as_str) == Some(SPACE) => {}
            _ => return Err(format!("normalizer step {s}")),
        }
    }
    let pre = tokenizer.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    match pre.get("type").and_then(Json::as_str) {
        None => {
            if steps.is_empty() {
                return Err(
                    "no normalizer or Metaspace pre-tokenizer turning spaces into '▁'".into()
                );
            }
        }
        Some("Metaspace") => {
            if pre.get("split").and_then(Json::as_bool) == Some(true) {
                return Err(
                    "Metaspace with split: true (llama.cpp does not split at spaces)".into()
                );
            }
            let scheme = pre.get("prepend_scheme").and_then(Json::as_str);
            let old_flag = pre.get("add_prefix_space").and_then(Json::as_bool);
            prefix |= matches!(scheme, Some("first") | Some("always"))
                || (scheme.is_none() && old_flag != Some(false));
        }
        Some(_) => return Err(format!("pre-tokenizer {pre}")),
    }
    Ok(prefix)
}

/// Scores for HF → GGUF: `-rank` of the first merge producing a token, 0 for the others.
pub(crate) fn scores_from_merges(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let ids: HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut scores: Vec<Option<f32>> = vec![None; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let Some((l, r)) = m.split_once(' ') else { continue };
        if let Some(&id) = ids.get(format!("{l}{r}").as_str()) {
            if scores[id].is_none() {
                scores[id] = Some(-(rank as f32) - 1.0);
            }
        }
    }
    scores.into_iter().map(|s| s.unwrap_or(0.0)).collect()
}

/// Merges for GGUF → HF from scores, as transformers' `SentencePieceExtractor` derives them:
/// every split of every (normal or user-defined) piece into two vocabulary pieces, by the
/// piece's score (best first; ties keep id order), splits of one piece by the ids of their parts.
pub(crate) fn merges_from_scores(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<String> {
    let mergeable = |id: usize| matches!(types[id], TOKEN_NORMAL | TOKEN_USER_DEFINED);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable(*i))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                merges.push((scores[id], id, li, ri));
            }
        }
    }
    // Stable sort by score descending; within a piece, by (left id, right id).
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3))
    });
    merges.into_iter().map(|(_, _, l, r)| format!("{} {}", tokens[l], tokens[r])).collect()
}

/// `tokenizer.json` and `tokenizer_config.json` for a SentencePiece-style vocabulary.
pub(crate) fn to_hf(v: &GgufVocab, _path: &Path, model_max_length: u32) -> Result<(Json, Json)> {
    let prefix = v.add_space_prefix.unwrap_or(true);
    let scores = v.scores.clone().unwrap_or_else(|| vec![0.0; v.tokens.len()]);
    let unk = v
        .special("unk")
        .or_else(|| v.token_types.iter().position(|&t| t == TOKEN_UNKNOWN).map(|i| i as u32))
        .map(|id| v.tokens[id as usize].clone());
    let mut added = Vec::new();
    let mut decoder_entries = Map::new();
    for (id, (tok, &ty)) in v.tokens.iter().zip(&v.token_types).enumerate() {
        if matches!(ty, TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_USER_DEFINED) {
            let special = ty != TOKEN_USER_DEFINED;
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": !special, "special": special,
            }));
            decoder_entries.insert(
                id.to_string(),
                json!({"content": tok, "lstrip": false, "normalized": !special, "rstrip": false, "single_word": false, "special": special}),
            );
        }
    }
    let mut vocab = Map::new();
    for (id, (tok, &ty)) in v.tokens.iter().zip(&v.token_types).enumerate() {
        if ty == TOKEN_UNUSED && *tok == format!("[PAD{id}]") {
            continue;
        }
        vocab.entry(tok.clone()).or_insert(json!(id));
    }
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]})
    } else {
        replace
    };
    let add_bos = v.add_flags.iter().find(|(r, _)| *r == "bos").is_none_or(|(_, b)| *b);
    let add_eos = v.add_flags.iter().find(|(r, _)| *r == "eos").is_some_and(|(_, b)| *b);
    let post = v.template_processor(add_bos, add_eos).unwrap_or(Json::Null);
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": if prefix { 1 } else { 0 }, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges_from_scores(&v.tokens, &v.token_types, &scores),
        },
    });

    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("added_tokens_decoder".into(), Json::Object(decoder_entries));
    for (role, _) in SPECIAL_TOKENS {
        if let Some(id) = v.special(role) {
            cfg.insert(format!("{role}_token"), json!(v.tokens[id as usize]));
        }
    }
    if let Some(t) = &v.chat_template {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("legacy".into(), json!(true));
    cfg.insert("model_max_length".into(), json!(model_max_length));
    cfg.insert("spaces_between_special_tokens".into(), json!(false));
    cfg.insert("tokenizer_class".into(), json!("LlamaTokenizer"));
    cfg.insert("vocab_size".into(), json!(v.tokens.len()));
    Ok((tokenizer, Json::Object(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn byte_tokens() {
        assert!(is_byte_token("<0x0A>") && is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0G>") && !is_byte_token("<0x0A") && !is_byte_token("0x0A>"));
    }

    #[test]
    fn scores_follow_merge_ranks_and_merges_come_back() {
        let tokens = s(&["<unk>", "<s>", "a", "b", "c", "ab", "abc", "bc"]);
        let types = [2, 3, 1, 1, 1, 1, 1, 1];
        let merges = s(&["a b", "ab c", "b c"]);
        let scores = scores_from_merges(&tokens, &merges);
        assert_eq!(scores, vec![0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0]);
        // "abc" also splits as a + bc: both splits, by the piece's score, then by part ids.
        assert_eq!(
            merges_from_scores(&tokens, &types, &scores),
            s(&["a b", "a bc", "ab c", "b c"])
        );
    }

    #[test]
    fn space_prefix_from_normalizer_or_metaspace() {
        let legacy = json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}});
        assert_eq!(space_prefix_of(&legacy), Ok(true));
        let meta = json!({"normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": false}});
        assert_eq!(space_prefix_of(&meta), Ok(false));
        let split = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first", "split": true}});
        assert!(space_prefix_of(&split).unwrap_err().contains("split"));
        let nfkc = json!({"normalizer": {"type": "NFKC"}});
        assert!(space_prefix_of(&nfkc).unwrap_err().contains("NFKC"));
    }
}
