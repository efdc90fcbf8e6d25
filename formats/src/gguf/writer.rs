//! Writing GGUF v3 by streaming: the header (KVs and every tensor info) is encoded up front from
//! the plan, tensors follow in plan order, each padded with zeros to the alignment, so each
//! tensor's offset is the running sum of the padded sizes before it — the only layout llama.cpp
//! loads. The output appears at its path only on [`GgufWriter::finish`] ([`AtomicFile`]).
//!
//! Nothing depends on time, thread count or hash order, so the same input gives the same bytes.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::reader::align_up;
use super::value::{encode_str, Array, Value};
use super::{
    GgmlType, GgufError, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_NAME_LEN,
    WRITE_VERSION,
};
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::tensor::{check_next, PlannedTensor, TensorDType, TensorSink};

/// A GGUF file being written.
#[derive(Debug)]
pub struct GgufWriter {
    file: AtomicFile,
    plan: Vec<PlannedTensor>,
    alignment: u64,
    next: usize,
}

impl GgufWriter {
    /// Validates the KVs and the plan, then creates the temporary file and writes the header.
    ///
    /// `plan` shapes are in GGUF order (`ne[0]` first) and every dtype must be a
    /// [`TensorDType::Ggml`]. If `kvs` holds `general.alignment` it must be the UINT32
    /// `alignment`; if it does not and `alignment` is not the default 32, the key is appended,
    /// because a reader would otherwise assume 32.
    pub fn create(
        target: &Path,
        kvs: Vec<(String, Value)>,
        plan: Vec<PlannedTensor>,
        alignment: u32,
    ) -> Result<Self> {
        let header = encode_header(target, kvs, &plan, alignment)?;
        let mut file = AtomicFile::create(target)?;
        file.write_all(&header).map_err(|e| Error::io(target, e))?;
        Ok(GgufWriter { file, plan, alignment: alignment.into(), next: 0 })
    }

    /// Checks that every planned tensor was written, then syncs and renames the file into place.
    pub fn finish(self) -> Result<PathBuf> {
        if let Some(missing) = self.plan.get(self.next) {
            return Err(GgufError::Write {
                path: self.file.target().into(),
                msg: format!(
                    "finished after {} of {} tensors; '{}' was never written",
                    self.next,
                    self.plan.len(),
                    missing.name
                ),
            }
            .into());
        }
        self.file.commit()
    }
}

impl TensorSink for GgufWriter {
    fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let target = self.file.target().to_path_buf();
        check_next(&self.plan, self.next, name, data.len(), &target)?;
        let len = data.len() as u64;
        // Cannot overflow: the header encoder summed the same padded sizes with checks.
        let pad = align_up(len, self.alignment).unwrap_or(len) - len;
        let w = self.file.writer();
        w.write_all(data).map_err(|e| Error::io(&target, e))?;
        write_zeros(w, pad).map_err(|e| Error::io(&target, e))?;
        self.next += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<PathBuf>> {
        GgufWriter::finish(*self).map(|p| vec![p])
    }
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Everything before the first tensor's data, padding included.
pub(crate) fn encode_header(
    target: &Path,
    mut kvs: Vec<(String, Value)>,
    plan: &[PlannedTensor],
    alignment: u32,
) -> Result<Vec<u8>, GgufError> {
    let bad = |msg: String| GgufError::Write { path: target.into(), msg };
    if !alignment.is_power_of_two() {
        return Err(bad(format!("alignment {alignment} is not a power of two")));
    }

    let mut keys = HashSet::new();
    for (key, value) in &kvs {
        if key.is_empty() {
            return Err(bad("empty metadata key".into()));
        }
        if !keys.insert(key.as_str()) {
            return Err(bad(format!("duplicate metadata key '{key}'")));
        }
        if let Value::Array(a) = value {
            if depth(a) > MAX_ARRAY_DEPTH {
                return Err(bad(format!("array '{key}' nests deeper than {MAX_ARRAY_DEPTH}")));
            }
        }
    }
    match kvs.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        Some((_, Value::U32(a))) if *a == alignment => {}
        Some((_, v)) => {
            return Err(bad(format!(
                "general.alignment is {v:?} but the file is written with alignment {alignment}"
            )))
        }
        None if alignment != DEFAULT_ALIGNMENT => {
            kvs.push((ALIGNMENT_KEY.to_owned(), Value::U32(alignment)))
        }
        None => {}
    }

    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
    out.extend_from_slice(&(plan.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in &kvs {
        encode_str(key, &mut out);
        out.extend_from_slice(&value.value_type().id().to_le_bytes());
        value.encode(&mut out);
    }

    let mut names = HashSet::new();
    let mut offset = 0u64;
    for t in plan {
        let ggml = check_planned(t).map_err(|m| bad(format!("tensor '{}': {m}", t.name)))?;
        if !names.insert(t.name.as_str()) {
            return Err(bad(format!("duplicate tensor name '{}'", t.name)));
        }
        encode_str(&t.name, &mut out);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ggml.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = align_up(t.nbytes, alignment.into())
            .and_then(|padded| offset.checked_add(padded))
            .ok_or_else(|| bad("tensor data exceeds 2^64 bytes".into()))?;
    }
    let padded = align_up(out.len() as u64, alignment.into()).unwrap_or(u64::MAX);
    out.resize(padded as usize, 0);
    Ok(out)
}

/// The GGML type of a planned tensor once its name, shape and byte count are consistent.
fn check_planned(t: &PlannedTensor) -> std::result::Result<GgmlType, String> {
    let TensorDType::Ggml(ggml) = t.dtype else {
        return Err(format!("dtype {} is not a GGML type", t.dtype));
    };
    if t.name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes; llama.cpp accepts at most {MAX_NAME_LEN}",
            t.name.len()
        ));
    }
    if t.shape.len() > MAX_DIMS as usize {
        return Err(format!("{} dimensions (GGUF allows at most {MAX_DIMS})", t.shape.len()));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| format!("the element count of shape {:?} overflows", t.shape))?;
    let ne0 = t.shape.first().copied().unwrap_or(1);
    if ne0 % ggml.block_size() != 0 {
        return Err(format!(
            "ne[0] = {ne0} is not a multiple of the {ggml} block size {}",
            ggml.block_size()
        ));
    }
    let nbytes = ggml
        .byte_len(ne0, numel)
        .ok_or_else(|| format!("the byte size of shape {:?} overflows", t.shape))?;
    if nbytes != t.nbytes {
        return Err(format!(
            "plan says {} bytes, but {ggml} of shape {:?} is {nbytes} bytes",
            t.nbytes, t.shape
        ));
    }
    Ok(ggml)
}

fn depth(a: &Array) -> usize {
    match a {
        Array::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}
