//! Reading one named weight of a checkpoint as `f32`, whatever stores it.
//!
//! Names are asked for in the Hugging Face convention (`model.layers.3.mlp.up_proj.weight`) and
//! translated to GGUF names through [`qtool_formats::naming`] when the checkpoint is GGUF.
//! Decoding goes through `qtool diff`'s decoder registry, so every dtype and quantization scheme
//! qtool can read back (plain dtypes, GGML blocks, FP8 scaled, NVFP4, GPTQ/AWQ, compressed-tensors,
//! Marlin) feeds the engine with no code of its own. The q/k rows of a GGUF `llama` checkpoint
//! are put back in Hugging Face order, so the engine has one rope convention. After a tensor
//! is decoded its mapped pages are released ([`TensorSource::release`]): the resident set stays
//! at the weights the caller keeps, not the file.

use std::collections::HashMap;

use qtool_formats::naming::{self, ArchInfo};
use qtool_formats::{Checkpoint, ContainerFormat, TensorSource};
use qtool_quantizers::diff::registry::Decoded;
use qtool_quantizers::diff::{Input, LogicalTensor, Registry, Side};
use rayon::prelude::*;

use super::error::{EngineError, Result};

/// Elements decoded per parallel task (rounded to the decoder's granule).
const DECODE_CHUNK: u64 = 1 << 16;

/// The logical tensors of a checkpoint, looked up by Hugging Face name.
pub(crate) struct WeightReader<'c> {
    ckpt: &'c Checkpoint,
    decoded: Decoded<'c>,
    by_name: HashMap<String, usize>,
    /// `(n_heads, n_kv_heads)` when q/k rows must be brought back from llama.cpp's order.
    unpermute: Option<(usize, usize)>,
}

impl std::fmt::Debug for WeightReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightReader").field("path", &self.ckpt.path()).finish_non_exhaustive()
    }
}

impl<'c> WeightReader<'c> {
    pub(crate) fn new(
        ckpt: &'c Checkpoint,
        arch: &ArchInfo,
        heads: (usize, usize),
    ) -> Result<WeightReader<'c>> {
        let input = Input::from_checkpoint(ckpt);
        let decoded = Registry::standard().decode(&input, Side::Ref).map_err(|e| {
            EngineError::invalid(ckpt.path(), format!("cannot read the tensors: {e}"))
        })?;
        let by_name =
            decoded.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let gguf = ckpt.source().format() == ContainerFormat::Gguf;
        let unpermute = (gguf && arch.permute_qk).then_some(heads);
        Ok(WeightReader { ckpt, decoded, by_name, unpermute })
    }

    fn source(&self) -> &'c dyn TensorSource {
        self.ckpt.source()
    }

    /// The container's name for a Hugging Face name.
    pub(crate) fn container_name(&self, hf: &str) -> String {
        match self.source().format() {
            ContainerFormat::Safetensors => hf.to_owned(),
            ContainerFormat::Gguf => naming::hf_to_gguf_name(hf).unwrap_or_else(|| hf.to_owned()),
        }
    }

    fn logical(&self, hf: &str) -> Option<&LogicalTensor<'c>> {
        let name = self.container_name(hf);
        self.by_name.get(&name).map(|&i| &self.decoded.tensors[i])
    }

    pub(crate) fn has(&self, hf: &str) -> bool {
        self.logical(hf).is_some()
    }

    /// Shape check + decoder of a tensor.
    fn checked(&self, hf: &str, shape: &[usize]) -> Result<&LogicalTensor<'c>> {
        let path = self.ckpt.path();
        let name = self.container_name(hf);
        let t = self.logical(hf).ok_or_else(|| EngineError::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
        })?;
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.shape != want {
            return Err(EngineError::tensor(
                path,
                &name,
                format!(
                    "shape {:?}, the model's hyper-parameters need {want:?} (row-major)",
                    t.shape
                ),
            ));
        }
        if let Err(why) = &t.decoder {
            return Err(EngineError::tensor(path, &name, format!("cannot be decoded: {why}")));
        }
        Ok(t)
    }

    /// Decodes a whole tensor of the given logical (row-major) shape, q/k rows in Hugging Face
    /// order, and releases its pages.
    pub(crate) fn read(&self, hf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.checked(hf, shape)?;
        let numel = t.numel();
        let mut out = vec![0f32; numel as usize];
        if let Ok(dec) = &t.decoder {
            let g = dec.granule().max(1);
            let chunk = (DECODE_CHUNK / g).max(1) * g;
            out.par_chunks_mut(chunk as usize).enumerate().try_for_each(|(i, part)| {
                dec.decode(i as u64 * chunk, part)
                    .map_err(|e| EngineError::tensor(self.ckpt.path(), &t.name, e.to_string()))
            })?;
        }
        self.release(t);
        if let Some((n_heads, n_kv)) = self.unpermute {
            let heads = naming::QkRole::of(hf).map(|role| role.heads(n_heads, n_kv));
            if let Some(h) = heads {
                let row = if shape.len() == 2 { shape[1] } else { 1 };
                out = unpermute_rows(&out, row, h)
                    .map_err(|e| EngineError::tensor(self.ckpt.path(), &t.name, e.to_string()))?;
            }
        }
        if let Some(bad) = out.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::tensor(
                self.ckpt.path(),
                &t.name,
                format!("element {bad} is {} (the engine needs finite weights)", out[bad]),
            ));
        }
        Ok(out)
    }

    /// Decodes rows `rows` (ids) of a 2-D tensor `[n, width]` into `out` (`rows.len() · width`),
    /// reading only the blocks that hold them: the embedding lookup.
    pub(crate) fn read_rows(
        &self,
        hf: &str,
        shape: [usize; 2],
        rows: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        let t = self.checked(hf, &shape)?;
        let width = shape[1] as u64;
        let Ok(dec) = &t.decoder else { return Ok(()) };
        let g = dec.granule().max(1);
        let numel = t.numel();
        out.par_chunks_mut(shape[1]).zip(rows.par_iter()).try_for_each(|(dst, &r)| {
            let start = r as u64 * width;
            let end = start + width;
            let a = start / g * g;
            let b = (end.div_ceil(g) * g).min(numel);
            let res = if a == start && b == end {
                dec.decode(start, dst)
            } else {
                let mut tmp = vec![0f32; (b - a) as usize];
                dec.decode(a, &mut tmp)
                    .map(|()| dst.copy_from_slice(&tmp[(start - a) as usize..(end - a) as usize]))
            };
            res.map_err(|e| EngineError::tensor(self.ckpt.path(), &t.name, e.to_string()))
        })?;
        self.release(t);
        if let Some(bad) = out.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::tensor(
                self.ckpt.path(),
                &t.name,
                format!("row element {bad} is not finite"),
            ));
        }
        Ok(())
    }

    fn release(&self, t: &LogicalTensor<'c>) {
        for p in t.parts.iter().chain(&t.extras) {
            self.source().release(p);
        }
    }
}

/// GGUF → HF order of q/k rows: HF row `r` of head `h` is GGUF row
/// [`naming::gguf_row_of_hf_row`]`(r)`.
fn unpermute_rows(
    src: &[f32],
    row: usize,
    n_heads: usize,
) -> Result<Vec<f32>, naming::PermuteError> {
    let n_rows = src.len() / row.max(1);
    let hd = naming::head_rows(n_rows, n_heads)?;
    let mut out = vec![0f32; src.len()];
    for (r, dst) in out.chunks_exact_mut(row).enumerate() {
        let g = naming::gguf_row_of_hf_row(r, hd);
        dst.copy_from_slice(&src[g * row..(g + 1) * row]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_llama_cpp_interleaving() {
        // One head of 4 rows of width 2: HF rows [a0 a1 | b0 b1] become GGUF [a0 b0 a1 b1].
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let gguf = [0., 1., 4., 5., 2., 3., 6., 7.];
        assert_eq!(unpermute_rows(&gguf, 2, 1).unwrap(), hf);
    }
}
