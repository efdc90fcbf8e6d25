//! Deliberately corrupted copies of real checkpoints: the silent failures `qtool verify --ref`
//! must catch, each one a plausible bug of a converter or loader.
//!
//! | corruption | what changes | the bug it stands for |
//! |---|---|---|
//! | [`Corruption::FlipNibbles`] | the two 4-bit codes of every byte of one layer's packed weight change places (int4 words, Marlin tiles, NVFP4 bytes) | even/odd element order mixed up (ComfyUI high-first vs ModelOpt low-first) |
//! | [`Corruption::ScalePermutation`] | Marlin: `s` written without `scale_perm` (natural order); GPTQ/AWQ/compressed-tensors: the scales' N axis permuted by Marlin's 64-entry `scale_perm` | a repacker that forgets (or wrongly applies) the scale permutation |
//! | [`Corruption::ZeroPoints`] | `checkpoint_format` relabelled `gptq` ↔ `gptq_v2` in `config.json` (and `quantize_config.json`) | v1 zeros (`zero − 1` stored) read as v2 or the reverse |
//! | [`Corruption::UnswizzledScales`] | one ComfyUI NVFP4 layer's block scales stored row-major where the 128×4 swizzle is expected | a writer that skips `to_blocked` |
//!
//! A copy is made of every file of the checkpoint (a directory's top-level files, or the one
//! file), then the affected tensor's bytes are rewritten in place at their offsets: the
//! container structure stays valid, only the numbers are wrong. The layer-level corruptions
//! touch the first eligible layer (or the first one matching a name filter), so a test can
//! check that exactly that layer fails.

use std::fs;
use std::path::{Path, PathBuf};

use qtool_formats::{DType, TensorDType, TensorRef};
use qtool_quantizers::float::swizzle;
use qtool_quantizers::int::marlin::{marlin_scale_perm, marlin_scale_perm_single};

use crate::discover::{discover, input, IntFamily, Layer, LayerFormat, Nvfp4Layout};
use crate::error::{Result, VerifyError};

/// The corruptions, by the name the `corrupt` example takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    FlipNibbles,
    ScalePermutation,
    ZeroPoints,
    UnswizzledScales,
}

impl Corruption {
    pub const ALL: [Corruption; 4] = [
        Corruption::FlipNibbles,
        Corruption::ScalePermutation,
        Corruption::ZeroPoints,
        Corruption::UnswizzledScales,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Corruption::FlipNibbles => "flip-nibbles",
            Corruption::ScalePermutation => "scale-perm",
            Corruption::ZeroPoints => "zero-points",
            Corruption::UnswizzledScales => "unswizzled-scales",
        }
    }

    pub fn from_name(name: &str) -> Option<Corruption> {
        Corruption::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether this corruption applies to a layer.
    fn applies(self, layer: &Layer<'_>) -> bool {
        match (self, layer.format) {
            (Corruption::FlipNibbles, LayerFormat::Int { bits: 4, .. })
            | (Corruption::FlipNibbles, LayerFormat::Marlin { bits: 4, .. })
            | (Corruption::FlipNibbles, LayerFormat::Nvfp4 { .. }) => true,
            (Corruption::ScalePermutation, LayerFormat::Marlin { .. }) => true,
            (Corruption::ScalePermutation, LayerFormat::Int { .. }) => layer.n % 64 == 0,
            (Corruption::ZeroPoints, LayerFormat::Int { family: IntFamily::Gptq { .. }, .. }) => {
                true
            }
            (Corruption::UnswizzledScales, LayerFormat::Nvfp4 { layout: Nvfp4Layout::Comfy }) => {
                true
            }
            _ => false,
        }
    }
}

/// What was corrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupted {
    /// The layers whose numbers are now wrong.
    pub layers: Vec<String>,
    /// The files written.
    pub files: Vec<PathBuf>,
}

fn io(path: &Path, source: std::io::Error) -> VerifyError {
    VerifyError::Io { path: path.display().to_string(), source }
}

/// Copies `input` (a checkpoint file or directory) to `output` and applies `kind` to the first
/// eligible layer whose name contains `layer_filter` (any layer when `None`); the zero-point
/// relabelling applies to the whole checkpoint.
pub fn corrupt(
    input_path: &Path,
    output: &Path,
    kind: Corruption,
    layer_filter: Option<&str>,
) -> Result<Corrupted> {
    let checkpoint = qtool_formats::open(input_path)?;
    let cinput = input(&checkpoint);
    let found = discover(&cinput, &|name| layer_filter.is_none_or(|f| name.contains(f)))?;
    let eligible: Vec<&Layer<'_>> = found.layers.iter().filter(|l| kind.applies(l)).collect();
    let Some(first) = eligible.first() else {
        return Err(VerifyError::Layer {
            layer: input_path.display().to_string(),
            msg: format!("no layer to apply '{}' to", kind.name()),
        });
    };
    // Copy every file.
    let files = copy_checkpoint(input_path, output)?;
    let out_file_of = |t: &TensorRef<'_>| -> PathBuf {
        let src = &checkpoint.source().files()[t.info.file];
        if output.is_dir() || input_path.is_dir() {
            output.join(src.file_name().unwrap_or_default())
        } else {
            output.to_path_buf()
        }
    };
    let patch = |t: TensorRef<'_>, bytes: &[u8]| -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        assert_eq!(bytes.len(), t.data.len(), "a patch keeps the tensor's size");
        let path = out_file_of(&t);
        let mut f = fs::OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, e))?;
        f.seek(SeekFrom::Start(t.info.offset)).map_err(|e| io(&path, e))?;
        f.write_all(bytes).map_err(|e| io(&path, e))?;
        f.sync_all().map_err(|e| io(&path, e))
    };
    let layer = *first;
    let layer_err = |msg: String| VerifyError::Layer { layer: layer.name.clone(), msg };
    let mut layers = vec![layer.name.clone()];
    match kind {
        Corruption::FlipNibbles => {
            let role = match layer.format {
                LayerFormat::Marlin { .. } => "B",
                LayerFormat::Int { family: IntFamily::CompressedTensors, .. } => "weight_packed",
                LayerFormat::Int { .. } => "qweight",
                LayerFormat::Nvfp4 { layout: Nvfp4Layout::CompressedTensors } => "weight_packed",
                _ => "weight",
            };
            let t = layer.require(role)?;
            patch(t, &flip_nibbles(t.data))?;
        }
        Corruption::ScalePermutation => match layer.format {
            LayerFormat::Marlin { .. } => {
                let s = layer.require("s")?;
                let groups = s.info.shape[0] as usize;
                patch(s, &unpermute_marlin_scales(s.data, groups, layer.n, 2).map_err(layer_err)?)?;
            }
            _ => {
                let (role, axis_n_last) = match layer.format {
                    LayerFormat::Int { family: IntFamily::CompressedTensors, .. } => {
                        ("weight_scale", false)
                    }
                    _ => ("scales", true),
                };
                let s = layer.require(role)?;
                let width = elem_width(s).map_err(layer_err)?;
                patch(s, &permute_n(s.data, layer.n, width, axis_n_last).map_err(layer_err)?)?;
            }
        },
        Corruption::UnswizzledScales => {
            let s = layer.require("weight_scale")?;
            let (rows, cols) = (layer.n, layer.k.div_ceil(16));
            let linear =
                swizzle::from_blocked(s.data, rows, cols).map_err(|e| layer_err(e.to_string()))?;
            let mut bytes = vec![0u8; s.data.len()];
            bytes[..linear.len()].copy_from_slice(&linear);
            patch(s, &bytes)?;
        }
        Corruption::ZeroPoints => {
            layers = eligible.iter().map(|l| l.name.clone()).collect();
            relabel_gptq(input_path, output)?;
        }
    }
    Ok(Corrupted { layers, files })
}

/// Swaps the two nibbles of every byte.
pub fn flip_nibbles(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b.rotate_left(4)).collect()
}

fn elem_width(t: TensorRef<'_>) -> Result<usize, String> {
    match t.info.dtype {
        TensorDType::St(DType::F16 | DType::BF16) => Ok(2),
        TensorDType::St(DType::F32) => Ok(4),
        other => Err(format!("scales of dtype {other} are not supported")),
    }
}

/// Permutes the N axis of a scale tensor in 64-entry chunks by Marlin's `scale_perm`:
/// `[G, N]` (`n_last`) or `[N, G]`.
pub fn permute_n(data: &[u8], n: usize, width: usize, n_last: bool) -> Result<Vec<u8>, String> {
    if n % 64 != 0 || data.len() % (n * width) != 0 {
        return Err(format!(
            "scales of {} bytes do not hold whole 64-chunks of N = {n}",
            data.len()
        ));
    }
    let perm = marlin_scale_perm();
    let other = data.len() / (n * width);
    let mut out = vec![0u8; data.len()];
    for o in 0..other {
        for j in 0..n {
            let src_n = (j / 64) * 64 + perm[j % 64];
            let (dst, src) = if n_last {
                ((o * n + j) * width, (o * n + src_n) * width)
            } else {
                ((j * other + o) * width, (src_n * other + o) * width)
            };
            out[dst..dst + width].copy_from_slice(&data[src..src + width]);
        }
    }
    Ok(out)
}

/// Undoes Marlin's scale permutation on `[G, N]` elements of `width` bytes: the scales as they
/// were before `scale_perm` (64 entries, grouped) / `scale_perm_single` (32, per-channel).
pub fn unpermute_marlin_scales(
    data: &[u8],
    groups: usize,
    n: usize,
    width: usize,
) -> Result<Vec<u8>, String> {
    let perm: Vec<usize> =
        if groups > 1 { marlin_scale_perm().to_vec() } else { marlin_scale_perm_single().to_vec() };
    let c = perm.len();
    if n % c != 0 || data.len() != groups * n * width {
        return Err(format!("Marlin scales of {} bytes do not fit [{groups}, {n}]", data.len()));
    }
    // Marlin stores chunk[i] = natural[perm[i]]; natural[perm[i]] = stored[i].
    let mut out = vec![0u8; data.len()];
    for chunk in 0..groups * n / c {
        for (i, &p) in perm.iter().enumerate() {
            let (dst, src) = ((chunk * c + p) * width, (chunk * c + i) * width);
            out[dst..dst + width].copy_from_slice(&data[src..src + width]);
        }
    }
    Ok(out)
}

/// Copies a checkpoint file, or a directory's top-level files, to `output`.
fn copy_checkpoint(input: &Path, output: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        fs::create_dir_all(output).map_err(|e| io(output, e))?;
        let mut files = Vec::new();
        for entry in fs::read_dir(input).map_err(|e| io(input, e))? {
            let entry = entry.map_err(|e| io(input, e))?;
            if entry.file_type().map_err(|e| io(input, e))?.is_file() {
                let to = output.join(entry.file_name());
                fs::copy(entry.path(), &to).map_err(|e| io(&to, e))?;
                files.push(to);
            }
        }
        files.sort();
        Ok(files)
    } else {
        fs::copy(input, output).map_err(|e| io(output, e))?;
        Ok(vec![output.to_path_buf()])
    }
}

/// Flips `checkpoint_format` between `gptq` and `gptq_v2` in the copy's `config.json`
/// `quantization_config` and `quantize_config.json` (whichever exist; at least one must).
fn relabel_gptq(input: &Path, output: &Path) -> Result<()> {
    let dir_in = if input.is_dir() {
        input.to_path_buf()
    } else {
        input.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let dir_out = if output.is_dir() {
        output.to_path_buf()
    } else {
        output.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let flip = |v: &mut serde_json::Value| -> bool {
        let Some(obj) = v.as_object_mut() else { return false };
        let now =
            obj.get("checkpoint_format").and_then(|f| f.as_str()).unwrap_or("gptq").to_string();
        let next = if now == "gptq_v2" { "gptq" } else { "gptq_v2" };
        obj.insert("checkpoint_format".into(), serde_json::Value::String(next.into()));
        // GPTQModel's spelling, kept consistent.
        if obj.contains_key("format") {
            obj.insert("format".into(), serde_json::Value::String(next.into()));
        }
        true
    };
    let mut changed = false;
    for (name, nested) in [("config.json", true), ("quantize_config.json", false)] {
        let path = dir_in.join(name);
        let Ok(bytes) = fs::read(&path) else { continue };
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            VerifyError::Layer { layer: path.display().to_string(), msg: e.to_string() }
        })?;
        let target = if nested { json.get_mut("quantization_config") } else { Some(&mut json) };
        if target.is_some_and(flip) {
            let to = dir_out.join(name);
            let text = serde_json::to_string_pretty(&json).unwrap_or_default();
            fs::write(&to, text).map_err(|e| io(&to, e))?;
            changed = true;
        }
    }
    if !changed {
        return Err(VerifyError::Layer {
            layer: input.display().to_string(),
            msg: "no config.json quantization_config or quantize_config.json to relabel".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_flip_is_an_involution() {
        let d = [0x12u8, 0xAB, 0x00, 0xF0];
        assert_eq!(flip_nibbles(&d), vec![0x21, 0xBA, 0x00, 0x0F]);
        assert_eq!(flip_nibbles(&flip_nibbles(&d)), d.to_vec());
    }

    #[test]
    fn marlin_unpermute_inverts_the_packer() {
        use qtool_quantizers::int::marlin::marlin_permute_scales;
        use qtool_quantizers::int::rtn::GroupSize;
        for (groups, gs) in [(2usize, GroupSize::Size(128)), (1, GroupSize::PerChannel)] {
            let (n, k) = (128, 256);
            let natural: Vec<f32> = (0..groups * n).map(|i| i as f32).collect();
            let stored = marlin_permute_scales(&natural, groups, n, k, gs).unwrap();
            let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
            let back = unpermute_marlin_scales(&bytes, groups, n, 4).unwrap();
            let back: Vec<f32> = back
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(back, natural);
        }
    }

    #[test]
    fn permute_n_moves_whole_elements_along_n_only() {
        let (g, n) = (2, 64);
        let data: Vec<u8> = (0..g * n).flat_map(|i| (i as u16).to_le_bytes()).collect();
        let out = permute_n(&data, n, 2, true).unwrap();
        let vals: Vec<u16> =
            out.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let perm = marlin_scale_perm();
        for (j, v) in vals.iter().enumerate() {
            assert_eq!(*v as usize, (j / 64) * 64 + perm[j % 64]);
        }
        assert_ne!(out, data);
        assert!(permute_n(&data, 32, 2, true).is_err());
    }
}
