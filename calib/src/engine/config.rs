//! The model's shape and rotary embedding, read through the conversion tables
//! ([`qtool_quantizers::convert::hparams`]) so the engine accepts exactly the architectures and
//! hyper-parameters `qtool convert` understands, from `config.json` or GGUF metadata alike.

use std::path::Path;

use qtool_formats::naming::{self, ArchInfo};
use qtool_formats::Checkpoint;
use qtool_quantizers::convert::hparams::{self, Hparams, RopeScaling};
use qtool_quantizers::convert::ConvertError;

use super::error::{EngineError, Result};

/// Shape of a llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// GGUF architecture name (`llama`, `qwen2`, `qwen3`); Mistral and SmolLM are `llama`.
    pub arch: &'static str,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope: Rope,
    /// Mistral/Qwen2 sliding-window attention span, when the config enables it. The engine
    /// attends to the whole sequence, which equals sliding-window attention only for sequences
    /// no longer than this; longer ones are refused ([`ModelConfig::check_seq_len`]).
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// Width of the query projection's output (`n_heads · head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Refuses a sequence length at which full causal attention would differ from the model's
    /// sliding-window attention.
    pub fn check_seq_len(&self, t: usize) -> Result<()> {
        match self.sliding_window {
            Some(w) if t > w => Err(EngineError::Usage(format!(
                "a sequence of {t} tokens exceeds the model's sliding attention window of {w}, which the engine does not implement"
            ))),
            _ => Ok(()),
        }
    }

    /// Width of the key/value projections' output (`n_kv_heads · head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Rotary position embedding in the Hugging Face convention: each head's first and second
/// halves are the two coordinates rotated together (`rotate_half`). GGUF `llama` checkpoints store
/// q/k rows interleaved for llama.cpp's adjacent-pair rope; the weight loader undoes that
/// permutation, so one convention serves every container.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    pub head_dim: usize,
    /// How the base frequencies are rescaled.
    pub scaling: RopeKind,
    /// The angle per position of rotary pair `i` (`head_dim / 2` values), scaling included.
    /// Kept in f64 so that `position · inv_freq` is exact to f32 precision at long contexts.
    pub inv_freq: Vec<f64>,
}

/// Rope scaling the engine computes.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeKind {
    None,
    /// Positions divided by `factor` (`rope_scaling: {type: linear}`).
    Linear {
        factor: f32,
    },
    /// Per-pair frequency divisors: Llama 3's smooth interpolation (from `config.json`), or the
    /// `rope_freqs.weight` tensor a GGUF stores for it.
    PerDim {
        factors: Vec<f32>,
    },
}

impl Rope {
    pub fn new(theta: f32, head_dim: usize, scaling: RopeKind) -> Rope {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let base = 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64);
                match &scaling {
                    RopeKind::None => base,
                    RopeKind::Linear { factor } => base / *factor as f64,
                    RopeKind::PerDim { factors } => base / factors[i] as f64,
                }
            })
            .collect();
        Rope { theta, head_dim, scaling, inv_freq }
    }

    /// `(cos, sin)` tables, `[positions.len(), head_dim / 2]` row-major.
    pub fn tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }
}

/// Reads the architecture and hyper-parameters of a checkpoint. `rope_freqs` is the content of a
/// GGUF `rope_freqs.weight` tensor when the file has one.
pub(crate) fn read_config(
    ckpt: &Checkpoint,
    rope_freqs: Option<Vec<f32>>,
) -> Result<(ModelConfig, &'static ArchInfo)> {
    let path = ckpt.path();
    let (hp, arch) = match ckpt {
        Checkpoint::Gguf { file, .. } => {
            let arch = hparams::arch_of_gguf(file).map_err(unsupported_arch)?;
            let n_tokens = file.kv("tokenizer.ggml.tokens").and_then(|v| match v {
                qtool_formats::gguf::Value::Array(a) => Some(a.len()),
                _ => None,
            });
            (Hparams::from_gguf(file, arch, n_tokens)?, arch)
        }
        Checkpoint::Safetensors { config, .. } => {
            let config_path = config_path(path);
            let Some(config) = config else {
                return Err(EngineError::invalid(
                    path,
                    "no config.json beside the safetensors: the engine needs the model's hyper-parameters",
                ));
            };
            let arch = hparams::arch_of_config(config, &config_path).map_err(unsupported_arch)?;
            (Hparams::from_config(config, arch, &config_path)?, arch)
        }
    };
    let head_dim = hp.head_size() as usize;
    let scaling = match (&hp.rope_scaling, rope_freqs) {
        (_, Some(factors)) => {
            if factors.len() != head_dim / 2 {
                return Err(EngineError::tensor(
                    path,
                    "rope_freqs.weight",
                    format!("{} values, expected head_dim / 2 = {}", factors.len(), head_dim / 2),
                ));
            }
            if factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
                return Err(EngineError::tensor(path, "rope_freqs.weight", "holds a non-positive or non-finite factor"));
            }
            RopeKind::PerDim { factors }
        }
        (None, None) => RopeKind::None,
        (Some(RopeScaling::Linear { factor }), None) => {
            if !(factor.is_finite() && *factor > 0.0) {
                return Err(EngineError::invalid(path, format!("linear rope scaling factor {factor} must be positive")));
            }
            RopeKind::Linear { factor: *factor }
        }
        (
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context }),
            None,
        ) => RopeKind::PerDim {
            factors: hparams::llama3_rope_freqs(
                hp.rope_theta,
                head_dim as u32,
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                *original_context,
            ),
        },
        (Some(RopeScaling::Yarn { .. }), None) => {
            return Err(EngineError::Unsupported {
                path: path.to_path_buf(),
                msg: "YaRN rope scaling is not supported by the forward engine (supported: linear, llama3)".into(),
            })
        }
    };
    let cfg = ModelConfig {
        arch: arch.gguf,
        n_layers: hp.block_count as usize,
        hidden: hp.embedding_length as usize,
        n_heads: hp.head_count as usize,
        n_kv_heads: hp.head_count_kv as usize,
        head_dim,
        intermediate: hp.feed_forward_length as usize,
        vocab: hp.vocab_size as usize,
        eps: hp.rms_eps,
        rope: Rope::new(hp.rope_theta, head_dim, scaling),
        sliding_window: sliding_window(ckpt),
    };
    if cfg.intermediate == 0 || cfg.vocab == 0 {
        return Err(EngineError::invalid(
            path,
            "intermediate size and vocabulary size must be positive",
        ));
    }
    Ok((cfg, arch))
}

/// `sliding_window` of `config.json` when it is in force: Qwen2 only with `use_sliding_window`
/// (off by default), Mistral whenever it is set; GGUF files do not carry it.
fn sliding_window(ckpt: &Checkpoint) -> Option<usize> {
    let c = ckpt.config()?;
    let w = c.get("sliding_window")?.as_u64()? as usize;
    let enabled = match c.get("use_sliding_window") {
        Some(v) => v.as_bool().unwrap_or(false),
        None => c.get("model_type").and_then(|m| m.as_str()) == Some("mistral"),
    };
    enabled.then_some(w)
}

fn config_path(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.join("config.json")
    } else {
        path.parent().unwrap_or(Path::new(".")).join("config.json")
    }
}

/// The conversion tables' refusal, restated for the engine (same architecture list).
fn unsupported_arch(e: ConvertError) -> EngineError {
    match e {
        ConvertError::UnsupportedArch { path, arch, .. } => EngineError::UnsupportedArch {
            path,
            arch,
            supported: naming::supported_architectures(),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freq_is_theta_to_the_minus_two_i_over_d() {
        let r = Rope::new(10000.0, 8, RopeKind::None);
        let want = [1.0, 0.1, 0.01, 0.001];
        for (g, w) in r.inv_freq.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        let lin = Rope::new(10000.0, 8, RopeKind::Linear { factor: 4.0 });
        assert!((lin.inv_freq[1] - 0.025).abs() < 1e-15);
        let per = Rope::new(10000.0, 8, RopeKind::PerDim { factors: vec![1.0, 2.0, 4.0, 8.0] });
        assert!((per.inv_freq[3] - 0.000125).abs() < 1e-15);
        let (cos, sin) = r.tables(&[0, 2]);
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        assert!((cos[4] - 2f32.cos()).abs() < 1e-7 && (sin[5] - 0.2f32.sin()).abs() < 1e-7);
    }
}
