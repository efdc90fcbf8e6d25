//! Where a tensor sits in the model: its block (layer) index and its role in the block, read
//! from its name in either convention (Hugging Face `model.layers.3.self_attn.q_proj.weight`,
//! GGUF `blk.3.attn_q.weight`, diffusion `double_blocks.3.img_attn.qkv.weight`).
//!
//! Containers do not keep model order (safetensors sorts by name, so `layers.10` comes before
//! `layers.2` and `lm_head` first), so the diff table and plot sort by [`Position::order_key`]:
//! embeddings, then blocks by index (block groups such as `double_blocks` / `single_blocks` in
//! the order they first appear), inside a block the usual data-flow order of the known roles
//! (norm, q, k, v, o, norm, gate, up, down), then everything else in container order; after
//! the blocks, norms before the output head.

/// A tensor's block and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The name up to the block index (`model.layers`, `blk`), when the tensor is in a block.
    pub group: Option<String>,
    pub block: Option<u64>,
    /// A short role shared by both conventions (`q`, `k`, `v`, `o`, `gate`, `up`, `down`,
    /// `attn_norm`, `ffn_norm`), else the name after the block index without `.weight`.
    /// Biases get a `.bias` suffix.
    pub role: String,
}

/// Known roles in data-flow order, with the name stems that mean them.
const ROLES: &[(&str, &[&str])] = &[
    ("attn_norm", &["input_layernorm", "attn_norm", "ln_1", "norm1"]),
    ("q", &["q_proj", "attn_q", "to_q", "wq", "q", "query"]),
    ("k", &["k_proj", "attn_k", "to_k", "wk", "k", "key"]),
    ("v", &["v_proj", "attn_v", "to_v", "wv", "v", "value"]),
    ("qkv", &["qkv", "qkv_proj", "attn_qkv", "c_attn", "query_key_value"]),
    ("o", &["o_proj", "attn_output", "to_out.0", "wo", "o", "out_proj"]),
    ("ffn_norm", &["post_attention_layernorm", "ffn_norm", "ln_2", "norm2"]),
    ("gate", &["gate_proj", "ffn_gate", "w1"]),
    ("up", &["up_proj", "ffn_up", "w3"]),
    ("gate_up", &["gate_up_proj"]),
    ("down", &["down_proj", "ffn_down", "w2"]),
];

/// Names of tensors that come before the blocks.
const EMBEDDING_HINTS: &[&str] = &["embed", "token_embd", "wte", "wpe", "tok_embeddings"];

impl Position {
    pub fn of(name: &str) -> Position {
        let (stem, bias) = match name.strip_suffix(".bias") {
            Some(s) => (s, true),
            None => (name.strip_suffix(".weight").unwrap_or(name), false),
        };
        let parts: Vec<&str> = stem.split('.').collect();
        let at = parts.iter().position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let (group, block, rest) = match at {
            Some(i) => match parts[i].parse::<u64>() {
                Ok(b) => (Some(parts[..i].join(".")), Some(b), parts[i + 1..].join(".")),
                Err(_) => (None, None, stem.to_string()),
            },
            None => (None, None, stem.to_string()),
        };
        let role = if block.is_some() { canonical_role(&rest) } else { rest };
        let role = if bias { format!("{role}.bias") } else { role };
        Position { group, block, role }
    }

    /// Rank of a known role in data-flow order (unknown roles after all known ones).
    pub fn role_rank(&self) -> usize {
        let base = self.role.strip_suffix(".bias").unwrap_or(&self.role);
        ROLES.iter().position(|(r, _)| *r == base).unwrap_or(ROLES.len())
    }

    /// 0 before the blocks (embeddings), 1 in a block, 2 after (final norm, output head).
    pub fn section(&self, name: &str) -> u8 {
        if self.block.is_some() {
            1
        } else if EMBEDDING_HINTS.iter().any(|h| name.contains(h)) {
            0
        } else {
            2
        }
    }
}

/// The shared role of a block-relative name, matched on its longest known suffix.
fn canonical_role(rest: &str) -> String {
    for (role, stems) in ROLES {
        for s in *stems {
            if rest == *s || rest.ends_with(&format!(".{s}")) {
                return (*role).to_string();
            }
        }
    }
    rest.to_string()
}

/// Sorts `names` (with their container positions) into model order; returns the permutation.
/// Group ranks are taken from first appearance in container order.
pub fn model_order(names: &[(&str, usize)]) -> Vec<usize> {
    let positions: Vec<Position> = names.iter().map(|(n, _)| Position::of(n)).collect();
    let mut groups: Vec<&str> = Vec::new();
    let mut by_container: Vec<usize> = (0..names.len()).collect();
    by_container.sort_by_key(|&i| names[i].1);
    for &i in &by_container {
        if let Some(g) = positions[i].group.as_deref() {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| {
        let p = &positions[i];
        let group = p.group.as_deref().and_then(|g| groups.iter().position(|x| *x == g));
        // After the blocks, the final norm comes before the output head.
        let late = p.section(names[i].0) == 2 && !names[i].0.contains("norm");
        (p.section(names[i].0), group, p.block, p.role_rank(), late, names[i].1)
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_and_gguf_names_share_roles() {
        let pairs = [
            ("model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight", "q"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight", "o"),
            ("model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight", "gate"),
            ("model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight", "down"),
            ("model.layers.3.input_layernorm.weight", "blk.3.attn_norm.weight", "attn_norm"),
        ];
        for (hf, gg, role) in pairs {
            let (a, b) = (Position::of(hf), Position::of(gg));
            assert_eq!((a.block, a.role.as_str()), (Some(3), role), "{hf}");
            assert_eq!((b.block, b.role.as_str()), (Some(3), role), "{gg}");
        }
        assert_eq!(Position::of("model.layers.0.self_attn.q_proj.bias").role, "q.bias");
        let p = Position::of("double_blocks.7.img_mod.lin.weight");
        assert_eq!(
            (p.group.as_deref(), p.block, p.role.as_str()),
            (Some("double_blocks"), Some(7), "img_mod.lin")
        );
        assert_eq!(Position::of("lm_head.weight").block, None);
    }

    #[test]
    fn model_order_sorts_blocks_numerically_and_embeddings_first() {
        let names = [
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.layers.2.self_attn.v_proj.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "model.norm.weight",
        ];
        let with_pos: Vec<(&str, usize)> = names.iter().copied().zip(0..).collect();
        let order: Vec<&str> = model_order(&with_pos).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.v_proj.weight",
                "model.layers.10.mlp.up_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
    }
}
