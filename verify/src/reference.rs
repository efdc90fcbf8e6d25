//! `--ref REF`: the original weights of each candidate layer, in the candidate's row order.
//!
//! REF and the candidate are paired by `qtool_quantizers::diff`'s matcher (same name, Hugging
//! Face ↔ GGUF names, runtime prefixes), and REF is decoded by the same registry, so REF may be
//! any checkpoint qtool reads (BF16 safetensors, an F16 GGUF, another quantized file). Where the
//! containers differ and the architecture's GGUF conversion permutes q/k rows, REF's rows are
//! moved to where the candidate holds them, so `X · W_refᵀ` lines up column for column with the
//! candidate's output.

use std::collections::HashMap;

use qtool_quantizers::diff::matching::qk_row_map;
use qtool_quantizers::diff::{Input, LogicalTensor, Matcher, Pairing, Registry, Side};

use crate::discover::{decode_whole, Layer};
use crate::error::{Result, VerifyError};

/// REF, decoded lazily layer by layer.
#[derive(Debug)]
pub struct Reference<'a> {
    path: String,
    input: Input<'a>,
    tensors: Vec<LogicalTensor<'a>>,
    /// Candidate weight name → index into `tensors`.
    by_cand: HashMap<String, usize>,
}

impl<'a> Reference<'a> {
    /// Pairs REF's tensors with the candidate's.
    pub fn new(path: &str, reference: Input<'a>, candidate: &Input<'_>) -> Result<Self> {
        let err = |msg: String| VerifyError::Reference { path: path.to_string(), msg };
        let registry = Registry::standard();
        let tensors =
            registry.decode(&reference, Side::Ref).map_err(|e| err(e.to_string()))?.tensors;
        let cand = registry.decode(candidate, Side::Cand)?.tensors;
        let pairs = Matcher::new(reference.source.format(), candidate.source.format())
            .pair(&tensors, &cand);
        let by_cand = pairs
            .into_iter()
            .filter_map(|p| match p {
                Pairing::Both { reference, candidate, .. } => {
                    Some((cand[candidate].name.clone(), reference))
                }
                _ => None,
            })
            .collect();
        Ok(Reference { path: path.to_string(), input: reference, tensors, by_cand })
    }

    /// Checks, before anything runs, that REF has a decodable tensor of the right shape for
    /// every layer (a wrong `--ref` is bad input, not a failing layer).
    pub fn check(&self, layers: &[Layer<'_>]) -> Result<()> {
        layers.iter().try_for_each(|l| self.partner(l).map(|_| ()))
    }

    fn partner(&self, layer: &Layer<'_>) -> Result<&LogicalTensor<'a>> {
        let err = |msg: String| VerifyError::Reference { path: self.path.clone(), msg };
        let &i = self
            .by_cand
            .get(&layer.name)
            .ok_or_else(|| err(format!("has no tensor matching '{}'", layer.name)))?;
        let t = &self.tensors[i];
        let want = [layer.n as u64, layer.k as u64];
        if t.shape != want {
            return Err(err(format!(
                "'{}' has shape {:?}, the candidate's '{}' is {:?}",
                t.name, t.shape, layer.name, want
            )));
        }
        if let Err(why) = &t.decoder {
            return Err(err(format!("'{}' cannot be decoded: {why}", t.name)));
        }
        Ok(t)
    }

    /// REF's weight for `layer` as `[n, k]` f32 in the candidate's row order.
    pub fn weight(&self, layer: &Layer<'_>, candidate: &Input<'_>) -> Result<Vec<f32>> {
        let err = |msg: String| VerifyError::Reference { path: self.path.clone(), msg };
        let t = self.partner(layer)?;
        let want = [layer.n as u64, layer.k as u64];
        let decoder = t
            .decoder
            .as_ref()
            .map_err(|why| err(format!("'{}' cannot be decoded: {why}", t.name)))?;
        let w = decode_whole(decoder.as_ref(), want[0] * want[1], &t.name)?;
        let map = qk_row_map(&self.input, candidate, &t.name, &layer.name, &t.shape)
            .map_err(|e| err(e.to_string()))?;
        let Some(map) = map else { return Ok(w) };
        let k = layer.k;
        let mut out = vec![0f32; w.len()];
        for (r, row) in w.chunks_exact(k).enumerate() {
            let c = map.cand_row(r as u64) as usize;
            out[c * k..(c + 1) * k].copy_from_slice(row);
        }
        Ok(out)
    }
}
