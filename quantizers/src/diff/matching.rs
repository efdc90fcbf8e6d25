//! Pairing the tensors of REF with those of CAND.
//!
//! Logical tensors (see [`super::registry`]) are matched, in this order of preference:
//! 1. the same name;
//! 2. across containers (one side GGUF, the other safetensors): the name through the
//!    Hugging Face ↔ GGUF mapping of [`qtool_formats::naming`] (`model.layers.3.mlp.up_proj.weight`
//!    ↔ `blk.3.ffn_up.weight`);
//! 3. the same name once a runtime prefix (`model.diffusion_model.`, `diffusion_model.`) is
//!    removed from either side, so a full ComfyUI checkpoint matches a diffusion-model-only file.
//!
//! Each CAND tensor pairs with at most one REF tensor. Shapes are compared row-major (GGUF's
//! `ne[0]`-first shapes reversed), and a mismatch is an error naming both tensors.
//!
//! # q/k rows across containers
//! For architectures whose GGUF conversion reorders the rows of `q_proj`/`k_proj` (llama's
//! adjacent-pair rope, `naming::ArchInfo::permute_qk`), the CAND view is re-indexed row by row
//! so that row `r` of REF meets the CAND row that holds the same weights
//! ([`naming::gguf_row_of_hf_row`] / [`naming::hf_row_of_gguf_row`]). Head counts come from the
//! GGUF side's `{arch}.attention.head_count[_kv]`, else from the safetensors side's
//! `config.json`.

use std::collections::HashMap;

use qtool_formats::naming::{self, QkRole};
use qtool_formats::{Checkpoint, ContainerFormat, TensorSource};

use super::error::{DiffError, Side};
use super::registry::{Dequantize, LogicalTensor};

/// Prefixes that runtimes add in front of the same model's tensor names.
const RUNTIME_PREFIXES: &[&str] = &["model.diffusion_model.", "diffusion_model."];

/// Head counts and whether q/k rows differ between the containers' conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkHeads {
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Whether the GGUF conversion of this architecture permutes q/k rows.
    pub permute: bool,
}

/// One side of a diff: a tensor source and what is known about its attention heads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub source: &'a dyn TensorSource,
    pub heads: Option<QkHeads>,
    /// `quantization_config.quant_method` of `config.json`, if any.
    pub quant_method: Option<String>,
    /// GPTQ zero points are stored as true zeros (`checkpoint_format: "gptq_v2"`) rather than
    /// AutoGPTQ's `zero − 1` (v1, the default on disk).
    pub gptq_v2: bool,
}

impl<'a> Input<'a> {
    /// A source with no architecture information (names and shapes only).
    pub fn new(source: &'a dyn TensorSource) -> Self {
        Input { source, heads: None, quant_method: None, gptq_v2: false }
    }

    /// Reads head counts from GGUF metadata (`general.architecture`, `{arch}.attention.*`) or
    /// from `config.json` (`architectures`, `num_attention_heads`, `num_key_value_heads`).
    pub fn from_checkpoint(checkpoint: &'a Checkpoint) -> Self {
        let heads = match checkpoint {
            Checkpoint::Gguf { file, .. } => {
                file.get_str("general.architecture").and_then(|arch| {
                    let key = |s| naming::hparam_key(arch, s);
                    let n_head = file.get_u32(&key("attention.head_count"))? as usize;
                    let n_head_kv = file
                        .get_u32(&key("attention.head_count_kv"))
                        .map_or(n_head, |n| n as usize);
                    let permute = naming::arch_by_gguf(arch).is_some_and(|a| a.permute_qk);
                    Some(QkHeads { n_head, n_head_kv, permute })
                })
            }
            Checkpoint::Safetensors { config, .. } => config.as_ref().and_then(|c| {
                let n_head = c.get("num_attention_heads")?.as_u64()? as usize;
                let n_head_kv = c
                    .get("num_key_value_heads")
                    .and_then(|v| v.as_u64())
                    .map_or(n_head, |n| n as usize);
                let arch = c.get("architectures")?.get(0)?.as_str()?;
                let permute = naming::arch_by_hf(arch).is_some_and(|a| a.permute_qk);
                Some(QkHeads { n_head, n_head_kv, permute })
            }),
        };
        let quant_method = checkpoint
            .quantization_config()
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
        Input { source: checkpoint.source(), heads, quant_method, gptq_v2: gptq_v2(checkpoint) }
    }
}

/// Whether a GPTQ checkpoint says its zero points are v2 (true zeros): `checkpoint_format` (or
/// GPTQModel's `format`) `"gptq_v2"` in `config.json`'s `quantization_config`, or in
/// `quantize_config.json` beside the weights.
fn gptq_v2(checkpoint: &Checkpoint) -> bool {
    let says_v2 = |c: &serde_json::Value| {
        ["checkpoint_format", "format"]
            .iter()
            .any(|k| c.get(*k).and_then(|v| v.as_str()) == Some("gptq_v2"))
    };
    if checkpoint.quantization_config().is_some_and(says_v2) {
        return true;
    }
    let dir = match checkpoint.path() {
        p if p.is_dir() => p.to_path_buf(),
        p => p.parent().map(|d| d.to_path_buf()).unwrap_or_default(),
    };
    std::fs::read(dir.join("quantize_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|c| says_v2(&c))
}

/// How a REF tensor found its CAND partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    SameName,
    NameMapping,
    RuntimePrefix,
}

/// A REF/CAND pairing by logical-tensor index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pairing {
    Both { reference: usize, candidate: usize, by: MatchedBy },
    OnlyRef(usize),
    OnlyCand(usize),
}

/// Pairs logical tensors by name.
#[derive(Debug)]
pub struct Matcher {
    ref_format: ContainerFormat,
    cand_format: ContainerFormat,
}

fn strip_runtime_prefix(name: &str) -> &str {
    RUNTIME_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name)
}

impl Matcher {
    pub fn new(ref_format: ContainerFormat, cand_format: ContainerFormat) -> Self {
        Matcher { ref_format, cand_format }
    }

    /// The name REF's tensor would have in CAND's convention, when the containers differ.
    fn mapped(&self, ref_name: &str) -> Option<String> {
        match (self.ref_format, self.cand_format) {
            (ContainerFormat::Safetensors, ContainerFormat::Gguf) => {
                naming::hf_to_gguf_name(strip_runtime_prefix(ref_name))
            }
            (ContainerFormat::Gguf, ContainerFormat::Safetensors) => {
                naming::gguf_to_hf_name(ref_name)
            }
            _ => None,
        }
    }

    /// Pairs every REF tensor with at most one CAND tensor; REF order first, then the CAND
    /// tensors nobody matched, in CAND order.
    pub fn pair(
        &self,
        reference: &[LogicalTensor<'_>],
        candidate: &[LogicalTensor<'_>],
    ) -> Vec<Pairing> {
        let by_name: HashMap<&str, usize> =
            candidate.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut by_stripped: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, t) in candidate.iter().enumerate() {
            by_stripped.entry(strip_runtime_prefix(&t.name)).or_default().push(i);
        }
        let mut used = vec![false; candidate.len()];
        let mut out = Vec::with_capacity(reference.len() + candidate.len());
        for (ri, r) in reference.iter().enumerate() {
            let take = |i: usize, by: MatchedBy, used: &mut Vec<bool>| {
                (!used[i]).then(|| {
                    used[i] = true;
                    Pairing::Both { reference: ri, candidate: i, by }
                })
            };
            let found = by_name
                .get(r.name.as_str())
                .and_then(|&i| take(i, MatchedBy::SameName, &mut used))
                .or_else(|| {
                    let m = self.mapped(&r.name)?;
                    let &i = by_name.get(m.as_str())?;
                    take(i, MatchedBy::NameMapping, &mut used)
                })
                .or_else(|| {
                    let list = by_stripped.get(strip_runtime_prefix(&r.name))?;
                    let free: Vec<usize> = list.iter().copied().filter(|&i| !used[i]).collect();
                    // Only an unambiguous partner counts.
                    if free.len() == 1 {
                        take(free[0], MatchedBy::RuntimePrefix, &mut used)
                    } else {
                        None
                    }
                });
            out.push(found.unwrap_or(Pairing::OnlyRef(ri)));
        }
        out.extend((0..candidate.len()).filter(|&i| !used[i]).map(Pairing::OnlyCand));
        out
    }
}

/// Which direction CAND's rows must be re-indexed for a q/k tensor matched across containers,
/// if any; errors when the rows do not split into the heads the metadata announces.
pub fn qk_row_map(
    reference: &Input<'_>,
    candidate: &Input<'_>,
    ref_name: &str,
    cand_name: &str,
    shape: &[u64],
) -> Result<Option<RowMap>, DiffError> {
    let (rf, cf) = (reference.source.format(), candidate.source.format());
    if rf == cf {
        return Ok(None);
    }
    let Some(role) = QkRole::of(ref_name).or_else(|| QkRole::of(cand_name)) else {
        return Ok(None);
    };
    let gguf_side = if cf == ContainerFormat::Gguf { candidate } else { reference };
    let st_side = if cf == ContainerFormat::Gguf { reference } else { candidate };
    let Some(heads) = gguf_side.heads.or(st_side.heads) else { return Ok(None) };
    if !heads.permute {
        return Ok(None);
    }
    let (rows, cols) = match shape {
        [n] => (*n, 1),
        [n, k] => (*n, *k),
        _ => return Ok(None),
    };
    let n_heads = role.heads(heads.n_head, heads.n_head_kv);
    let hd = naming::head_rows(rows as usize, n_heads)
        .map_err(|source| DiffError::Permute { tensor: cand_name.to_string(), source })?;
    Ok(Some(RowMap { cols, hd: hd as u64, cand_is_gguf: cf == ContainerFormat::Gguf }))
}

/// Re-indexes rows of CAND into REF's row order (q/k permutation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMap {
    pub cols: u64,
    /// Rows per head.
    pub hd: u64,
    /// CAND holds GGUF order (REF is HF); otherwise CAND is HF and REF GGUF.
    pub cand_is_gguf: bool,
}

impl RowMap {
    /// The CAND row holding REF row `r`.
    pub fn cand_row(&self, r: u64) -> u64 {
        let (r, hd) = (r as usize, self.hd as usize);
        (if self.cand_is_gguf {
            naming::gguf_row_of_hf_row(r, hd)
        } else {
            naming::hf_row_of_gguf_row(r, hd)
        }) as u64
    }
}

/// A view whose rows are read through a [`RowMap`]: decodes whole rows, each from its CAND row.
#[derive(Debug)]
pub(crate) struct RowPermuted<'a> {
    pub inner: Box<dyn Dequantize + 'a>,
    pub map: RowMap,
    pub side: Side,
    pub name: String,
}

impl<'a> RowPermuted<'a> {
    pub fn new(
        inner: Box<dyn Dequantize + 'a>,
        map: RowMap,
        side: Side,
        name: &str,
    ) -> Result<Self, DiffError> {
        if map.cols == 0 || map.cols % inner.granule() != 0 {
            return Err(DiffError::Layout {
                side,
                tensor: name.to_string(),
                msg: format!(
                    "rows of {} elements are not whole units of {} elements, cannot reorder q/k rows",
                    map.cols,
                    inner.granule()
                ),
            });
        }
        Ok(RowPermuted { inner, map, side, name: name.to_string() })
    }
}

impl Dequantize for RowPermuted<'_> {
    fn granule(&self) -> u64 {
        self.map.cols
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        let cols = self.map.cols;
        if start % cols != 0 || out.len() as u64 % cols != 0 {
            return Err(DiffError::Layout {
                side: self.side,
                tensor: self.name.clone(),
                msg: format!("range at {start} does not cover whole rows of {cols}"),
            });
        }
        for (k, row) in out.chunks_exact_mut(cols as usize).enumerate() {
            let r = start / cols + k as u64;
            self.inner.decode(self.map.cand_row(r) * cols, row)?;
        }
        Ok(())
    }
}
