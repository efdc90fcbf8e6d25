//! The diff on the committed fixtures, opened the way the CLI opens them.

use std::path::PathBuf;

use qtool_quantizers::diff::{diff, DiffOptions, Input, QkHeads, Registry, RowStatus};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(p)
}

#[test]
fn head_counts_come_from_config_json_and_gguf_metadata() {
    let st = qtool_formats::open(fixture("tiny-llama/model.safetensors")).unwrap();
    let heads = Input::from_checkpoint(&st).heads;
    assert_eq!(heads, Some(QkHeads { n_head: 4, n_head_kv: 2, permute: true }));
    let gg = qtool_formats::open(fixture("tiny.gguf")).unwrap();
    assert_eq!(
        Input::from_checkpoint(&gg).heads,
        Some(QkHeads { n_head: 4, n_head_kv: 2, permute: true })
    );
}

#[test]
fn single_file_and_shards_are_identical() {
    let a = qtool_formats::open(fixture("tiny-llama/model.safetensors")).unwrap();
    let b = qtool_formats::open(fixture("tiny-llama-sharded")).unwrap();
    let rep = diff(
        &Input::from_checkpoint(&a),
        &Input::from_checkpoint(&b),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(rep.summary.compared, 21);
    assert_eq!(rep.summary.identical, 21);
    assert!(rep.rows.iter().all(|r| r.status == RowStatus::Compared));
    // Model order: embeddings, blocks 0 and 1 (norm, q, k, v, o, norm, gate, up, down), final
    // norm, head.
    assert_eq!(rep.rows[0].name, "model.embed_tokens.weight");
    assert_eq!(rep.rows[1].name, "model.layers.0.input_layernorm.weight");
    assert_eq!(rep.rows[2].name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(rep.rows[19].name, "model.norm.weight");
    assert_eq!(rep.rows[20].name, "lm_head.weight");
}

#[test]
fn gguf_against_itself_counts_block_bits() {
    let g = qtool_formats::open(fixture("tiny.gguf")).unwrap();
    let rep = diff(
        &Input::from_checkpoint(&g),
        &Input::from_checkpoint(&g),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(rep.summary.compared, 12);
    assert_eq!(rep.summary.identical, 12);
    let q = rep.rows.iter().find(|r| r.name == "blk.0.attn_q.weight").unwrap();
    assert_eq!((q.scheme.as_deref(), q.bits_per_weight), (Some("Q8_0"), Some(8.5)));
    assert!(!q.qk_permuted, "same container: rows are compared as stored");
}
