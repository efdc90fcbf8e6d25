//! Where a quantized checkpoint goes: one `.safetensors` file, or a directory that mirrors the
//! input — one output shard per input shard with the same file names, the index when the input
//! had one, `config.json` (with `quantization_config` where the layout needs it), ModelOpt's
//! `hf_quant_config.json`, and the tokenizer files copied beside.
//!
//! Nothing appears at the output path unless everything succeeded: shards are written under
//! temporary names and renamed at the end, and on failure every file written (and a directory
//! this run created) is removed again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use qtool_formats::atomic::{ensure_not_input, AtomicFile};
use qtool_formats::checkpoint::{Checkpoint, INDEX_FILE};
use qtool_formats::safetensors::{string_metadata, SafetensorsWriter};
use qtool_formats::{Error, TensorSink};
use serde_json::Value;

use super::config;
use super::error::ExportError;
use super::pipeline;
use super::plan::{PlanEntry, QuantizePlan};

/// Files that travel with a Hugging Face checkpoint and are copied unchanged.
pub const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
];

/// Whether `out` names a single `.safetensors` file (otherwise it is a directory).
pub fn is_file_output(out: &Path) -> bool {
    out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Checks what can be checked before any work: output kind vs input and layout, output path.
pub fn check_target(ckpt: &Checkpoint, plan: &QuantizePlan, out: &Path) -> Result<(), ExportError> {
    let files = ckpt.source().files();
    if is_file_output(out) {
        if files.len() > 1 {
            return Err(Error::invalid(
                out,
                format!(
                    "the input has {} shards; give a directory as -o to get a sharded output",
                    files.len()
                ),
            )
            .into());
        }
        if plan.layout.needs_config() {
            return Err(Error::invalid(
                out,
                format!("layout {} keeps its quantization_config in config.json; give a directory as -o", plan.layout),
            )
            .into());
        }
        ensure_not_input(out, files)?;
    } else if out.exists() {
        let empty =
            out.is_dir() && fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty {
            return Err(Error::invalid(out, "output directory exists and is not empty").into());
        }
    }
    Ok(())
}

/// Writes the quantized checkpoint; returns the files written.
pub fn write(
    ckpt: &Checkpoint,
    plan: &QuantizePlan,
    out: &Path,
    progress: &mut dyn FnMut(&PlanEntry),
) -> Result<Vec<PathBuf>, ExportError> {
    write_with(ckpt, plan, out, progress, None)
}

/// [`write`] with some entries' bytes computed elsewhere ([`pipeline::Precomputed`]).
pub fn write_with(
    ckpt: &Checkpoint,
    plan: &QuantizePlan,
    out: &Path,
    progress: &mut dyn FnMut(&PlanEntry),
    pre: Option<&dyn pipeline::Precomputed>,
) -> Result<Vec<PathBuf>, ExportError> {
    check_target(ckpt, plan, out)?;
    let source = ckpt.source();
    let metadata = string_metadata(source);
    if is_file_output(out) {
        let mut writer = SafetensorsWriter::create(out, plan.planned_tensors(), metadata, None)?;
        pipeline::run_with(source, plan, &mut writer, progress, pre)?;
        return Ok(writer.finish()?);
    }
    let created = !out.exists();
    if created {
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let mut written = Vec::new();
    let result = write_dir(ckpt, plan, out, metadata, progress, pre, &mut written);
    if result.is_err() {
        for p in &written {
            let _ = fs::remove_file(p);
        }
        if created {
            let _ = fs::remove_dir_all(out);
        }
    }
    result.map(|()| written)
}

fn write_dir(
    ckpt: &Checkpoint,
    plan: &QuantizePlan,
    out: &Path,
    metadata: BTreeMap<String, String>,
    progress: &mut dyn FnMut(&PlanEntry),
    pre: Option<&dyn pipeline::Precomputed>,
    written: &mut Vec<PathBuf>,
) -> Result<(), ExportError> {
    let source = ckpt.source();
    let files = source.files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();

    // Entries arrive grouped by input file (sources list tensors file by file).
    let mut shards: Vec<(Range<usize>, SafetensorsWriter)> = Vec::with_capacity(files.len());
    let mut weight_map = BTreeMap::new();
    let mut pos = 0usize;
    let mut total = 0u64;
    for (i, name) in names.iter().enumerate() {
        let entries: Vec<&PlanEntry> = plan.entries.iter().filter(|e| e.file == i).collect();
        let tensors: Vec<_> = entries.iter().flat_map(|e| e.outputs.iter().cloned()).collect();
        for t in &tensors {
            weight_map.insert(t.name.clone(), name.clone());
            total += t.nbytes;
        }
        let n = tensors.len();
        let writer = SafetensorsWriter::create(&out.join(name), tensors, metadata.clone(), None)?;
        shards.push((pos..pos + n, writer));
        pos += n;
    }
    let grouped = plan.entries.windows(2).all(|w| w[0].file <= w[1].file);
    if !grouped {
        return Err(Error::invalid(&files[0], "tensors of the input shards are interleaved").into());
    }
    let mut sink = ShardedSink { shards, next: 0 };
    pipeline::run_with(source, plan, &mut sink, progress, pre)?;
    for (_, writer) in sink.shards {
        written.extend(writer.finish()?);
    }

    if files.len() > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        written.push(write_json(&out.join(INDEX_FILE), &index)?);
    }
    let input_dir = match ckpt {
        Checkpoint::Safetensors { path, .. } if path.is_dir() => path.clone(),
        _ => files[0].parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut cfg = ckpt.config().cloned();
    if let Some(qc) = config::quantization_config(plan) {
        let mut c = cfg.take().unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut c {
            map.insert("quantization_config".into(), qc);
        }
        cfg = Some(c);
        written.push(write_json(&out.join("config.json"), cfg.as_ref().unwrap_or(&Value::Null))?);
    } else if ckpt.config().is_some() {
        written.push(copy_file(&input_dir.join("config.json"), &out.join("config.json"))?);
    }
    if let Some(qc) = config::gptq(plan) {
        written.push(write_json(&out.join("quantize_config.json"), &qc)?);
    }
    if let Some(hf) = config::modelopt(plan) {
        written.push(write_json(&out.join("hf_quant_config.json"), &hf)?);
    }
    for name in SIDE_FILES {
        let src = input_dir.join(name);
        if src.is_file() {
            written.push(copy_file(&src, &out.join(name))?);
        }
    }
    Ok(())
}

/// Routes the plan's tensors to one writer per output shard, in order.
struct ShardedSink {
    shards: Vec<(Range<usize>, SafetensorsWriter)>,
    next: usize,
}

impl TensorSink for ShardedSink {
    fn write(&mut self, name: &str, data: &[u8]) -> qtool_formats::Result<()> {
        let next = self.next;
        let Some((_, writer)) = self.shards.iter_mut().find(|(r, _)| r.contains(&next)) else {
            return Err(Error::invalid("<output>", format!("tensor '{name}' is not in the plan")));
        };
        writer.write(name, data)?;
        self.next += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> qtool_formats::Result<Vec<PathBuf>> {
        let mut done = Vec::new();
        for (_, w) in self.shards {
            done.extend(w.finish()?);
        }
        Ok(done)
    }
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<PathBuf, ExportError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(path, format!("cannot serialize: {e}")))?;
    text.push('\n');
    let mut f = AtomicFile::create(path)?;
    f.writer().write_all(text.as_bytes()).map_err(|e| Error::io(path, e))?;
    Ok(f.commit()?)
}

pub(crate) fn copy_file(src: &Path, dst: &Path) -> Result<PathBuf, ExportError> {
    let bytes = fs::read(src).map_err(|e| Error::io(src, e))?;
    let mut f = AtomicFile::create(dst)?;
    f.writer().write_all(&bytes).map_err(|e| Error::io(dst, e))?;
    Ok(f.commit()?)
}
