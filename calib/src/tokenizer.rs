//! The model's own tokenizer, as the `tokenizers` crate runs it.
//!
//! A Hugging Face directory brings `tokenizer.json`. A GGUF file brings its vocabulary as
//! metadata (`tokenizer.ggml.*`); it is turned into the equivalent `tokenizer.json` in memory by
//! the same code `qtool convert` writes it with ([`GgufVocab::to_hf`]), whose output is
//! cross-checked against llama.cpp's tokenization, so both containers tokenize alike.
//!
//! Text is encoded without special tokens: no BOS or EOS is added (the perplexity protocol and
//! calibration both feed raw text).

use std::path::{Path, PathBuf};

use qtool_formats::Checkpoint;
use qtool_quantizers::convert::tokenizer::GgufVocab;

use crate::engine::{EngineError, Model, Result};

/// A loaded tokenizer and where it came from.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer of a model: `tokenizer.json` beside a safetensors checkpoint, or the GGUF
    /// vocabulary.
    pub fn for_model(model: &Model) -> Result<Tokenizer> {
        match model.checkpoint() {
            Checkpoint::Gguf { file, path } => {
                if file.kv("tokenizer.ggml.model").is_none() {
                    return Err(EngineError::MissingTokenizer {
                        path: path.clone(),
                        msg: "the GGUF file has no 'tokenizer.ggml.model' metadata (no vocabulary)"
                            .into(),
                    });
                }
                let vocab = GgufVocab::from_gguf(file)?;
                let (json, _config) = vocab.to_hf(path, 0)?;
                let text = serde_json::to_string(&json).map_err(|e| EngineError::Tokenizer {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
                let inner =
                    text.parse::<tokenizers::Tokenizer>().map_err(|e| EngineError::Tokenizer {
                        path: path.clone(),
                        msg: format!(
                            "the tokenizer built from the GGUF vocabulary does not load: {e}"
                        ),
                    })?;
                Ok(Tokenizer { inner, origin: path.clone() })
            }
            Checkpoint::Safetensors { .. } => {
                let file = model.dir().join("tokenizer.json");
                if !file.is_file() {
                    return Err(EngineError::MissingTokenizer {
                        path: model.path().to_path_buf(),
                        msg: format!("{} does not exist", file.display()),
                    });
                }
                Tokenizer::from_file(&file)
            }
        }
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(Tokenizer { inner, origin: path.to_path_buf() })
    }

    /// Where the tokenizer was read from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Token ids of `text`, without added special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| EngineError::Tokenizer {
            path: self.origin.clone(),
            msg: e.to_string(),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
