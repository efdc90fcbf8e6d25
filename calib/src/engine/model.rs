//! An opened model: the mapped checkpoint plus its configuration. Nothing is decoded at open;
//! each call decodes what it returns (a block, the embedding rows, the head) and drops the
//! mapped pages it read, so the caller decides how much is resident.

use std::path::{Path, PathBuf};

use qtool_formats::naming::ArchInfo;
use qtool_formats::{Checkpoint, ContainerFormat};

use super::block::{Block, BlockShape, Linear};
use super::config::{read_config, ModelConfig};
use super::error::{EngineError, Result};
use super::matrix::Matrix;
use super::ops;
use super::weights::WeightReader;

/// A llama-family decoder read straight from a checkpoint (HF safetensors with `config.json`,
/// or GGUF).
#[derive(Debug)]
pub struct Model {
    ckpt: Checkpoint,
    cfg: ModelConfig,
    arch: &'static ArchInfo,
    /// The head reuses the token embedding (`tie_word_embeddings`, or no `lm_head` stored).
    tied: bool,
}

/// The final RMSNorm and the output projection.
#[derive(Clone, Debug)]
pub struct Head {
    pub norm: Vec<f32>,
    /// `[vocab, hidden]`.
    pub weight: Matrix,
    pub eps: f32,
}

impl Head {
    /// Logits `[t, vocab]` of hidden states `[t, hidden]` (the last block's output).
    pub fn logits(&self, hidden: &Matrix) -> Matrix {
        let x = Matrix::from_vec(
            hidden.rows,
            hidden.cols,
            ops::rms_norm(&hidden.data, &self.norm, self.eps),
        );
        x.matmul_t(&self.weight)
    }
}

impl Model {
    /// Opens a checkpoint path (a `.gguf` file, a `.safetensors` file with `config.json` beside
    /// it, or a Hugging Face directory) and reads its configuration.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_checkpoint(qtool_formats::open(path.as_ref())?)
    }

    pub fn from_checkpoint(ckpt: Checkpoint) -> Result<Model> {
        let rope_freqs = match &ckpt {
            Checkpoint::Gguf { file, .. } => {
                match qtool_formats::TensorSource::get(file, "rope_freqs.weight") {
                    Some(t) => Some(qtool_quantizers::decode::decode_all(t).map_err(|e| {
                        EngineError::tensor(ckpt.path(), "rope_freqs.weight", e.to_string())
                    })?),
                    None => None,
                }
            }
            Checkpoint::Safetensors { .. } => None,
        };
        let (cfg, arch) = read_config(&ckpt, rope_freqs)?;
        let tie_flag = ckpt
            .config()
            .and_then(|c| c.get("tie_word_embeddings"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let model = Model { ckpt, cfg, arch, tied: false };
        let has_head = model.reader()?.has("lm_head.weight");
        Ok(Model { tied: tie_flag || !has_head, ..model })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn path(&self) -> &Path {
        self.ckpt.path()
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    pub fn format(&self) -> ContainerFormat {
        self.ckpt.source().format()
    }

    /// Whether the output projection is the token embedding.
    pub fn tied_embeddings(&self) -> bool {
        self.tied
    }

    fn reader(&self) -> Result<WeightReader<'_>> {
        WeightReader::new(&self.ckpt, self.arch, (self.cfg.n_heads, self.cfg.n_kv_heads))
    }

    /// The directory the checkpoint lives in (for tokenizer files).
    pub fn dir(&self) -> PathBuf {
        let p = self.ckpt.path();
        if p.is_dir() {
            p.to_path_buf()
        } else {
            p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
        }
    }

    /// Token embeddings `[tokens.len(), hidden]`; an id beyond the vocabulary is an error.
    pub fn embed(&self, tokens: &[u32]) -> Result<Matrix> {
        let c = &self.cfg;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(EngineError::Usage(format!(
                "token id {bad} is outside the vocabulary of {} tokens of {}",
                c.vocab,
                self.path().display()
            )));
        }
        let mut out = Matrix::zeros(tokens.len(), c.hidden);
        self.reader()?.read_rows(
            "model.embed_tokens.weight",
            [c.vocab, c.hidden],
            tokens,
            &mut out.data,
        )?;
        Ok(out)
    }

    /// Decodes block `i`.
    pub fn load_block(&self, i: usize) -> Result<Block> {
        let c = &self.cfg;
        if i >= c.n_layers {
            return Err(EngineError::Usage(format!(
                "block {i} does not exist: the model has {} blocks",
                c.n_layers
            )));
        }
        let r = self.reader()?;
        let name = |s: &str| format!("model.layers.{i}.{s}");
        let linear = |s: &str, out: usize, inp: usize| -> Result<Linear> {
            let weight =
                Matrix::from_vec(out, inp, r.read(&name(&format!("{s}.weight")), &[out, inp])?);
            let bias_name = name(&format!("{s}.bias"));
            let bias = if r.has(&bias_name) { Some(r.read(&bias_name, &[out])?) } else { None };
            Ok(Linear { weight, bias })
        };
        let norm = |s: &str, n: usize| r.read(&name(&format!("{s}.weight")), &[n]);
        let opt_norm = |s: &str, n: usize| -> Result<Option<Vec<f32>>> {
            if r.has(&name(&format!("{s}.weight"))) {
                norm(s, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        Ok(Block {
            index: i,
            input_norm: norm("input_layernorm", h)?,
            q: linear("self_attn.q_proj", q, h)?,
            k: linear("self_attn.k_proj", kv, h)?,
            v: linear("self_attn.v_proj", kv, h)?,
            o: linear("self_attn.o_proj", h, q)?,
            q_norm: opt_norm("self_attn.q_norm", c.head_dim)?,
            k_norm: opt_norm("self_attn.k_norm", c.head_dim)?,
            post_attn_norm: norm("post_attention_layernorm", h)?,
            gate: linear("mlp.gate_proj", f, h)?,
            up: linear("mlp.up_proj", f, h)?,
            down: linear("mlp.down_proj", h, f)?,
            cfg: BlockShape::of(c),
        })
    }

    /// Decodes the final norm and the output projection (the embedding when tied).
    pub fn load_head(&self) -> Result<Head> {
        let c = &self.cfg;
        let r = self.reader()?;
        let name = if self.tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        Ok(Head {
            norm: r.read("model.norm.weight", &[c.hidden])?,
            weight: Matrix::from_vec(c.vocab, c.hidden, r.read(name, &[c.vocab, c.hidden])?),
            eps: c.eps,
        })
    }

    /// Logits of a whole sequence, one block at a time: a convenience for tests and short
    /// prompts (positions `0..t`).
    pub fn forward_logits(&self, tokens: &[u32]) -> Result<Matrix> {
        let mut hidden = self.embed(tokens)?;
        let positions: Vec<usize> = (0..tokens.len()).collect();
        for i in 0..self.cfg.n_layers {
            self.load_block(i)?.forward(&mut hidden, &positions, None)?;
        }
        Ok(self.load_head()?.logits(&hidden))
    }
}
