//! Tensor naming conventions across containers: Hugging Face llama-family names and their GGUF
//! counterparts, and the q/k row permutation llama.cpp expects.
//!
//! Facts (see `/work/shared/formats.md` §6.7; gguf-py `constants.py`, `tensor_mapping.py`,
//! llama.cpp `convert_hf_to_gguf.py::LlamaModel`):
//! * `model.embed_tokens` ↔ `token_embd`, `model.norm` ↔ `output_norm`, `lm_head` ↔ `output`,
//!   and per block `model.layers.{i}.X` ↔ `blk.{i}.Y` with the table in [`BLOCK_NAMES`]; the
//!   `.weight` / `.bias` suffix is kept.
//! * llama.cpp's `llama` architecture applies rotary embeddings to adjacent element pairs
//!   (`LLAMA_ROPE_TYPE_NORM`) while Hugging Face's Llama code rotates the two halves of each head.
//!   The converter therefore reorders the rows of `q_proj` (per attention head) and `k_proj` (per
//!   KV head) so that, within a head of `hd` rows, GGUF row `2i + j` is HF row `j·hd/2 + i`. The
//!   reordering is of whole rows, so it applies unchanged to rows of any element type — f32,
//!   bf16, or a row of quantized blocks — and to 1-D biases (rows of one element).
//!   Qwen2/Qwen3 use llama.cpp's NEOX rope (halves, like HF): no permutation there.
//!
//! Dimension order is the other half of the mapping: GGUF lists `ne[0]` (the contiguous
//! dimension) first, so an HF `[out, in]` weight is GGUF `[in, out]` with the same bytes.

use std::fmt;

/// Per-block name pairs: HF suffix after `model.layers.{i}.` ↔ GGUF suffix after `blk.{i}.`.
pub const BLOCK_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    // Qwen3 normalises q and k per head before rope.
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    // Llama-3-style rope scaling stores its per-dimension factors as a tensor; it has no HF
    // counterpart (HF recomputes it from `rope_scaling`).
];

/// Top-level (non-block) name pairs, without the parameter suffix.
pub const GLOBAL_NAMES: &[(&str, &str)] =
    &[("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

/// The parameter suffixes both conventions share.
const SUFFIXES: &[&str] = &["weight", "bias"];

fn split_suffix(name: &str) -> Option<(&str, &str)> {
    let (stem, suffix) = name.rsplit_once('.')?;
    SUFFIXES.contains(&suffix).then_some((stem, suffix))
}

/// A decimal block index without sign or leading zeros (so the mapping is a bijection).
fn parse_block(s: &str) -> Option<u32> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// The GGUF name of a Hugging Face llama-family tensor name, or `None` for a name outside the
/// convention (e.g. `model.rotary_emb.inv_freq`, which converters drop).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(hf)?;
    if let Some(&(_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (block, part) = rest.split_once('.')?;
    let block = parse_block(block)?;
    let &(_, g) = BLOCK_NAMES.iter().find(|(h, _)| *h == part)?;
    Some(format!("blk.{block}.{g}.{suffix}"))
}

/// The Hugging Face name of a GGUF llama-family tensor name; the inverse of [`hf_to_gguf_name`].
/// `None` for names with no HF counterpart (`rope_freqs.weight`) or outside the convention.
pub fn gguf_to_hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(gguf)?;
    if let Some(&(h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == stem) {
        return Some(format!("{h}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (block, part) = rest.split_once('.')?;
    let block = parse_block(block)?;
    let &(h, _) = BLOCK_NAMES.iter().find(|(_, g)| *g == part)?;
    Some(format!("model.layers.{block}.{h}.{suffix}"))
}

/// Which projection a tensor is, for the purpose of the q/k permutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkRole {
    /// `q_proj` / `attn_q`: permuted per attention head.
    Query,
    /// `k_proj` / `attn_k`: permuted per KV head.
    Key,
}

impl QkRole {
    /// The role of a tensor given by either its HF or its GGUF name (weight or bias).
    pub fn of(name: &str) -> Option<QkRole> {
        let (stem, _) = split_suffix(name)?;
        if stem.ends_with(".self_attn.q_proj")
            || (stem.starts_with("blk.") && stem.ends_with(".attn_q"))
        {
            Some(QkRole::Query)
        } else if stem.ends_with(".self_attn.k_proj")
            || (stem.starts_with("blk.") && stem.ends_with(".attn_k"))
        {
            Some(QkRole::Key)
        } else {
            None
        }
    }

    /// The number of heads the rows of this projection are grouped into.
    pub fn heads(self, n_head: usize, n_head_kv: usize) -> usize {
        match self {
            QkRole::Query => n_head,
            QkRole::Key => n_head_kv,
        }
    }
}

/// Why a permutation cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermuteError {
    /// `n_rows` is not a whole number of heads of an even size.
    Shape { n_rows: usize, n_heads: usize },
    /// The byte buffer is not `n_rows` rows of `row_bytes`.
    Length { len: usize, n_rows: usize, row_bytes: usize },
}

impl fmt::Display for PermuteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PermuteError::Shape { n_rows, n_heads } => write!(
                f,
                "{n_rows} rows cannot be split into {n_heads} heads of an even number of rows (q/k permutation)"
            ),
            PermuteError::Length { len, n_rows, row_bytes } => {
                write!(f, "{len} bytes are not {n_rows} rows of {row_bytes} bytes")
            }
        }
    }
}

impl std::error::Error for PermuteError {}

/// Direction of the row reordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permutation {
    /// HF → GGUF (what llama.cpp's converter does).
    HfToGguf,
    /// GGUF → HF (its inverse).
    GgufToHf,
}

/// Checks that `n_rows` splits into `n_heads` heads of an even size; returns the head size.
pub fn head_rows(n_rows: usize, n_heads: usize) -> Result<usize, PermuteError> {
    if n_heads == 0 || n_rows % n_heads != 0 || (n_rows / n_heads) % 2 != 0 {
        return Err(PermuteError::Shape { n_rows, n_heads });
    }
    Ok(n_rows / n_heads)
}

/// The HF row that lands at GGUF row `gguf_row` (both in `0..n_rows`), for a head size `hd`.
pub fn hf_row_of_gguf_row(gguf_row: usize, hd: usize) -> usize {
    let (head, r) = (gguf_row / hd, gguf_row % hd);
    head * hd + (r % 2) * (hd / 2) + r / 2
}

/// The GGUF row that HF row `hf_row` goes to; the inverse of [`hf_row_of_gguf_row`].
pub fn gguf_row_of_hf_row(hf_row: usize, hd: usize) -> usize {
    let (head, r) = (hf_row / hd, hf_row % hd);
    let half = hd / 2;
    head * hd + 2 * (r % half) + r / half
}

/// Reorders the `n_rows` rows of `row_bytes` bytes each in `src` into `dst` (same length), in
/// the given direction, grouping rows into `n_heads` heads. Rows may hold any element type.
pub fn permute_rows_into(
    src: &[u8],
    dst: &mut [u8],
    row_bytes: usize,
    n_heads: usize,
    direction: Permutation,
) -> Result<(), PermuteError> {
    let n_rows = src.len().checked_div(row_bytes).unwrap_or(0);
    if row_bytes == 0 || src.len() % row_bytes != 0 || dst.len() != src.len() {
        return Err(PermuteError::Length { len: src.len(), n_rows, row_bytes });
    }
    let hd = head_rows(n_rows, n_heads)?;
    for (out_row, chunk) in dst.chunks_exact_mut(row_bytes).enumerate() {
        let in_row = match direction {
            Permutation::HfToGguf => hf_row_of_gguf_row(out_row, hd),
            Permutation::GgufToHf => gguf_row_of_hf_row(out_row, hd),
        };
        chunk.copy_from_slice(&src[in_row * row_bytes..(in_row + 1) * row_bytes]);
    }
    Ok(())
}

/// [`permute_rows_into`] into a new buffer.
pub fn permute_rows(
    src: &[u8],
    row_bytes: usize,
    n_heads: usize,
    direction: Permutation,
) -> Result<Vec<u8>, PermuteError> {
    let mut dst = vec![0u8; src.len()];
    permute_rows_into(src, &mut dst, row_bytes, n_heads, direction)?;
    Ok(dst)
}

/// HF → GGUF q/k permutation of `n_rows` rows (`row_bytes` each).
pub fn permute_qk(src: &[u8], row_bytes: usize, n_heads: usize) -> Result<Vec<u8>, PermuteError> {
    permute_rows(src, row_bytes, n_heads, Permutation::HfToGguf)
}

/// GGUF → HF: undoes [`permute_qk`].
pub fn unpermute_qk(src: &[u8], row_bytes: usize, n_heads: usize) -> Result<Vec<u8>, PermuteError> {
    permute_rows(src, row_bytes, n_heads, Permutation::GgufToHf)
}

/// The GGUF `general.architecture` names qtool converts, with the HF `architectures` entries
/// that map to each and whether q/k rows are permuted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchInfo {
    /// `general.architecture` and the prefix of the hyper-parameter keys.
    pub gguf: &'static str,
    /// `config.json` `architectures[0]` values (the first is written on GGUF → HF).
    pub hf: &'static [&'static str],
    /// `config.json` `model_type` written on GGUF → HF.
    pub model_type: &'static str,
    /// Whether q/k rows are reordered between the conventions (llama's NORM rope).
    pub permute_qk: bool,
}

/// The supported llama-family architectures (llama.cpp's converter registers Mistral and
/// SmolLM's `LlamaForCausalLM` under `llama`).
pub const ARCHITECTURES: &[ArchInfo] = &[
    ArchInfo {
        gguf: "llama",
        hf: &["LlamaForCausalLM", "MistralForCausalLM"],
        model_type: "llama",
        permute_qk: true,
    },
    ArchInfo { gguf: "qwen2", hf: &["Qwen2ForCausalLM"], model_type: "qwen2", permute_qk: false },
    ArchInfo { gguf: "qwen3", hf: &["Qwen3ForCausalLM"], model_type: "qwen3", permute_qk: false },
];

/// The architecture with this `general.architecture` value.
pub fn arch_by_gguf(name: &str) -> Option<&'static ArchInfo> {
    ARCHITECTURES.iter().find(|a| a.gguf == name)
}

/// The architecture for a `config.json` `architectures` entry.
pub fn arch_by_hf(name: &str) -> Option<&'static ArchInfo> {
    ARCHITECTURES.iter().find(|a| a.hf.contains(&name))
}

/// Every supported name, for refusal messages: `"llama (LlamaForCausalLM, MistralForCausalLM), ..."`.
pub fn supported_architectures() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| format!("{} ({})", a.gguf, a.hf.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a hyper-parameter is typed on the GGUF side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HparamKind {
    U32,
    F32,
}

/// `config.json` field ↔ GGUF key suffix (the key is `{arch}.{suffix}`), with the GGUF type.
/// These are the fields that map one to one; derived keys (`rope.dimension_count`,
/// `attention.key_length`), rope scaling and tied embeddings are handled by the converter.
pub const HPARAMS: &[(&str, &str, HparamKind)] = &[
    ("max_position_embeddings", "context_length", HparamKind::U32),
    ("hidden_size", "embedding_length", HparamKind::U32),
    ("num_hidden_layers", "block_count", HparamKind::U32),
    ("intermediate_size", "feed_forward_length", HparamKind::U32),
    ("num_attention_heads", "attention.head_count", HparamKind::U32),
    ("num_key_value_heads", "attention.head_count_kv", HparamKind::U32),
    ("rope_theta", "rope.freq_base", HparamKind::F32),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon", HparamKind::F32),
    ("vocab_size", "vocab_size", HparamKind::U32),
];

/// GGUF key suffixes for the rotary dimension and rope scaling.
pub mod rope_keys {
    pub const DIMENSION_COUNT: &str = "rope.dimension_count";
    pub const SCALING_TYPE: &str = "rope.scaling.type";
    pub const SCALING_FACTOR: &str = "rope.scaling.factor";
    pub const SCALING_ORIG_CTX: &str = "rope.scaling.original_context_length";
    pub const KEY_LENGTH: &str = "attention.key_length";
    pub const VALUE_LENGTH: &str = "attention.value_length";
}

/// The full GGUF key for an architecture and a suffix: `hparam_key("llama", "block_count")`.
pub fn hparam_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
            ("model.layers.12.self_attn.q_proj.weight", "blk.12.attn_q.weight"),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            ("model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
            ("model.layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight"),
            ("model.layers.29.post_attention_layernorm.weight", "blk.29.ffn_norm.weight"),
            ("model.layers.29.mlp.gate_proj.weight", "blk.29.ffn_gate.weight"),
            ("model.layers.29.mlp.up_proj.weight", "blk.29.ffn_up.weight"),
            ("model.layers.29.mlp.down_proj.weight", "blk.29.ffn_down.weight"),
        ];
        for (hf, gguf) in pairs {
            assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(gguf), "{hf}");
            assert_eq!(gguf_to_hf_name(gguf).as_deref(), Some(hf), "{gguf}");
        }
    }

    #[test]
    fn names_outside_the_convention_are_none() {
        for n in [
            "model.rotary_emb.inv_freq",
            "model.layers.01.mlp.up_proj.weight",
            "model.layers.-1.mlp.up_proj.weight",
            "model.layers.1.mlp.up_proj.scales",
            "model.layers.1.mlp.experts.0.weight",
            "lm_head",
            "",
        ] {
            assert_eq!(hf_to_gguf_name(n), None, "{n}");
        }
        for n in ["rope_freqs.weight", "blk.x.attn_q.weight", "blk.1.attn_qkv.weight", "output"] {
            assert_eq!(gguf_to_hf_name(n), None, "{n}");
        }
    }

    #[test]
    fn qk_roles() {
        assert_eq!(QkRole::of("model.layers.0.self_attn.q_proj.weight"), Some(QkRole::Query));
        assert_eq!(QkRole::of("blk.0.attn_k.bias"), Some(QkRole::Key));
        assert_eq!(QkRole::of("blk.0.attn_q_norm.weight"), None);
        assert_eq!(QkRole::of("blk.0.attn_v.weight"), None);
        assert_eq!(QkRole::Key.heads(9, 3), 3);
    }

    /// The reference formula, written as the reshape/swapaxes it is: rows viewed as
    /// `[n_head, 2, hd/2]`, axes 1 and 2 swapped, flattened back.
    fn reference_hf_to_gguf(rows: &[u32], n_head: usize) -> Vec<u32> {
        let hd = rows.len() / n_head;
        let half = hd / 2;
        let mut out = Vec::with_capacity(rows.len());
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    out.push(rows[h * hd + j * half + i]);
                }
            }
        }
        out
    }

    fn as_bytes(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn permutation_matches_reshape_swapaxes_and_inverts() {
        // (n_rows, heads): a query with 4 heads of 8, a GQA key with 2 KV heads, one head.
        for (n_rows, heads) in [(32usize, 4usize), (16, 2), (6, 1), (576, 9), (192, 3)] {
            let rows: Vec<u32> = (0..n_rows as u32).collect();
            let want = reference_hf_to_gguf(&rows, heads);
            let got = permute_qk(&as_bytes(&rows), 4, heads).unwrap();
            assert_eq!(got, as_bytes(&want), "{n_rows} rows / {heads} heads");
            assert_eq!(unpermute_qk(&got, 4, heads).unwrap(), as_bytes(&rows));
        }
    }

    #[test]
    fn gqa_query_and_key_use_their_own_head_counts() {
        // 4 query heads and 2 KV heads of size 4: the key is grouped in 2, not 4.
        let (n_head, n_kv) = (4, 2);
        let hd = 4;
        let k_rows: Vec<u8> = (0..(n_kv * hd) as u8).collect();
        let k = permute_qk(&k_rows, 1, QkRole::Key.heads(n_head, n_kv)).unwrap();
        assert_eq!(k, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let wrong = permute_qk(&k_rows, 1, n_head).unwrap();
        assert_ne!(k, wrong, "grouping by query heads gives a different order");
        assert_eq!(unpermute_qk(&k, 1, n_kv).unwrap(), k_rows);
    }

    #[test]
    fn multi_byte_rows_move_whole() {
        // Two rows of 3 bytes per half-head, one head of 4 rows.
        let src: Vec<u8> = (0..12).collect();
        let got = permute_qk(&src, 3, 1).unwrap();
        assert_eq!(got, vec![0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(
            permute_qk(&[0u8; 12], 1, 5),
            Err(PermuteError::Shape { n_rows: 12, n_heads: 5 })
        );
        assert_eq!(permute_qk(&[0u8; 6], 1, 2), Err(PermuteError::Shape { n_rows: 6, n_heads: 2 }));
        assert_eq!(permute_qk(&[0u8; 8], 1, 0), Err(PermuteError::Shape { n_rows: 8, n_heads: 0 }));
        assert_eq!(
            permute_qk(&[0u8; 7], 2, 1),
            Err(PermuteError::Length { len: 7, n_rows: 3, row_bytes: 2 })
        );
        assert!(permute_qk(&[0u8; 8], 0, 1).is_err());
    }

    #[test]
    fn architectures() {
        assert_eq!(arch_by_hf("MistralForCausalLM").unwrap().gguf, "llama");
        assert!(arch_by_gguf("qwen3").is_some());
        assert!(!arch_by_gguf("qwen2").unwrap().permute_qk);
        assert!(arch_by_gguf("gemma").is_none());
        assert!(supported_architectures().contains("llama (LlamaForCausalLM"));
        assert_eq!(hparam_key("llama", HPARAMS[2].1), "llama.block_count");
    }
}
