//! The state a calibrated run keeps beside its output (`<OUT>.calib-state/`), so that an
//! interrupted run continues from the last finished block (`--resume`) and the finished
//! layers never have to be held in memory together:
//!
//! ```text
//!   state.json            what the run is (fingerprint) + next block + the per-layer log so far
//!   hidden.f32            the residual stream of every window after the last finished block
//!   t/<tensor>.q          a quantized linear (QuantizedInt, format below)
//!   t/<tensor>.f32        a float tensor the method changed (AWQ's rescaled norms / biases)
//! ```
//!
//! Every file is written under a temporary name and renamed, and `state.json` last, so a crash
//! leaves the previous consistent state. Reading checks every length against the file size
//! before allocating: a damaged state is an error naming the file, never a panic.
//!
//! `.q` layout (little endian): magic `QTQI1\0\0\0`, `bits u8, symmetric u8, has_g_idx u8,
//! pad u8, n u64, k u64, group i64`, then codes `[n·k] u8`, scales `[G·n] f32`, zeros `[G·n] u8`,
//! and when present g_idx `[k] u32`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use qtool_formats::{DType, TensorDType};
use qtool_quantizers::export::pipeline::Precomputed;
use qtool_quantizers::export::{int_layer, Action, ExportError, IntSettings, Layout, PlanEntry};
use qtool_quantizers::int::{Bits, GroupSize, QuantizedInt};

use super::PipelineError;

const MAGIC: &[u8; 8] = b"QTQI1\0\0\0";
/// Magic, four flag bytes, n, k, group.
const HEADER: usize = 36;

/// The state directory of one run.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    layout: Layout,
    settings: IntSettings,
}

fn state_err(path: &Path, msg: impl Into<String>) -> PipelineError {
    PipelineError::State { path: path.to_path_buf(), msg: msg.into() }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |e| state_err(path, e.to_string())
}

/// Writes `bytes` to `path` through a temporary file and a rename: an interrupted process
/// (Ctrl-C, out of memory) leaves either the old or the new file. No fsync: hundreds of small
/// files per block would cost more than the block's arithmetic, and surviving a power loss is
/// not what `--resume` is for.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content produced piece by piece by `fill` (through a buffered writer).
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), PipelineError> {
    let tmp = path.with_extension("tmp");
    let f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    fill(&mut w).and_then(|()| w.flush()).map_err(io_err(&tmp))?;
    drop(w);
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl Store {
    /// `<OUT>.calib-state` for an output path.
    pub fn dir_for(output: &Path) -> PathBuf {
        let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "out".into());
        name.push(".calib-state");
        output.with_file_name(name)
    }

    /// Opens the state directory, creating it (and `t/`) when missing.
    pub fn open(
        dir: PathBuf,
        layout: Layout,
        settings: IntSettings,
    ) -> Result<Store, PipelineError> {
        fs::create_dir_all(dir.join("t")).map_err(io_err(&dir))?;
        Ok(Store { dir, layout, settings })
    }

    /// Removes the whole state directory (a fresh run, or a finished one).
    pub fn remove(dir: &Path) -> Result<(), PipelineError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(state_err(dir, e.to_string())),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tensor_path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join("t").join(format!("{name}.{ext}"))
    }

    pub fn state_json(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn hidden_path(&self) -> PathBuf {
        self.dir.join("hidden.f32")
    }

    pub fn put_quantized(&self, name: &str, q: &QuantizedInt) -> Result<(), PipelineError> {
        let mut b = Vec::with_capacity(HEADER + q.codes.len() + q.scales.len() * 5 + q.k * 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[
            q.bits.get() as u8,
            u8::from(q.symmetric),
            u8::from(q.g_idx.is_some()),
            0,
        ]);
        b.extend_from_slice(&(q.n as u64).to_le_bytes());
        b.extend_from_slice(&(q.k as u64).to_le_bytes());
        b.extend_from_slice(&q.group_size.to_i64().to_le_bytes());
        b.extend_from_slice(&q.codes);
        b.extend(q.scales.iter().flat_map(|s| s.to_le_bytes()));
        b.extend_from_slice(&q.zeros);
        if let Some(g) = &q.g_idx {
            b.extend(g.iter().flat_map(|v| v.to_le_bytes()));
        }
        write_atomic(&self.tensor_path(name, "q"), &b)
    }

    pub fn get_quantized(&self, name: &str) -> Result<Option<QuantizedInt>, PipelineError> {
        let path = self.tensor_path(name, "q");
        let b = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_err(&path, e.to_string())),
        };
        parse_quantized(&b).map(Some).map_err(|m| state_err(&path, m))
    }

    pub fn put_float(&self, name: &str, v: &[f32]) -> Result<(), PipelineError> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_atomic(&self.tensor_path(name, "f32"), &b)
    }

    pub fn get_float(&self, name: &str) -> Result<Option<Vec<f32>>, PipelineError> {
        let path = self.tensor_path(name, "f32");
        match fs::read(&path) {
            Ok(b) if b.len() % 4 == 0 => Ok(Some(
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            )),
            Ok(b) => {
                Err(state_err(&path, format!("{} bytes is not a whole number of f32", b.len())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path, e.to_string())),
        }
    }
}

fn parse_quantized(b: &[u8]) -> Result<QuantizedInt, String> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err("not a qtool quantized-layer file (bad magic or truncated header)".into());
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let bits = Bits::from_u32(u32::from(b[8])).map_err(|e| e.to_string())?;
    let (symmetric, has_g) = (b[9] != 0, b[10] != 0);
    let (n, k) = (u64_at(12), u64_at(20));
    let group = GroupSize::from_i64(u64_at(28) as i64).map_err(|e| e.to_string())?;
    let body = (b.len() - HEADER) as u64;
    let nk = n.checked_mul(k).filter(|&v| v <= body).ok_or("n·k exceeds the file")?;
    let (n, k) = (n as usize, k as usize);
    let groups = group.num_groups(k).map_err(|e| e.to_string())?;
    let gn = (groups as u64).checked_mul(n as u64).ok_or("too many groups")?;
    let expected = nk + gn * 5 + if has_g { k as u64 * 4 } else { 0 };
    if body != expected {
        return Err(format!("the body has {body} bytes, the header promises {expected}"));
    }
    let mut o = HEADER;
    let mut take = |len: usize| {
        let s = &b[o..o + len];
        o += len;
        s
    };
    let codes = take(n * k).to_vec();
    let scales = take(groups * n * 4)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let zeros = take(groups * n).to_vec();
    let g_idx = has_g.then(|| {
        take(k * 4).chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    });
    let q = QuantizedInt { bits, n, k, group_size: group, symmetric, codes, scales, zeros, g_idx };
    q.validate().map_err(|e| e.to_string())?;
    Ok(q)
}

/// Float bytes in the stored dtype of a tensor the method changed.
fn float_bytes(dtype: TensorDType, v: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        TensorDType::St(DType::F32) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorDType::St(DType::F16) => {
            v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
        }
        TensorDType::St(DType::BF16) => {
            v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()
        }
        _ => return None,
    })
}

impl Precomputed for Store {
    fn parts(&self, e: &PlanEntry) -> Option<Result<Vec<Vec<u8>>, ExportError>> {
        let fail = |msg: String| Some(Err(ExportError::Usage(msg)));
        let here = |msg: String| format!("calibration state {}: {msg}", self.dir.display());
        match &e.action {
            Action::Quantize(l) => match self.get_quantized(&e.name) {
                Ok(None) => None,
                Ok(Some(q)) if q.n != l.rows || q.k != l.cols => fail(here(format!(
                    "{}: stored as [{}, {}], the plan has [{}, {}]",
                    e.name, q.n, q.k, l.rows, l.cols
                ))),
                Ok(Some(q)) => {
                    Some(int_layer::pack(self.layout, &self.settings, l, &q).map_err(|source| {
                        ExportError::QuantizeInt {
                            path: self.dir.clone(),
                            tensor: e.name.clone(),
                            source,
                        }
                    }))
                }
                Err(err) => fail(err.to_string()),
            },
            Action::Copy => match self.get_float(&e.name) {
                Ok(None) => None,
                Ok(Some(v)) => {
                    let out = e.outputs.first()?;
                    let numel: u64 = out.shape.iter().product();
                    if numel != v.len() as u64 {
                        return fail(here(format!(
                            "{}: {} values stored, the tensor has {numel}",
                            e.name,
                            v.len()
                        )));
                    }
                    match float_bytes(out.dtype, &v) {
                        Some(b) => Some(Ok(vec![b])),
                        None => {
                            fail(here(format!("{}: cannot rewrite a {} tensor", e.name, out.dtype)))
                        }
                    }
                }
                Err(err) => fail(err.to_string()),
            },
            Action::Marker(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtool_quantizers::int::GptqZeros;

    fn store(dir: &Path) -> Store {
        let s = IntSettings {
            bits: Bits::B4,
            group_size: GroupSize::Size(4),
            symmetric: true,
            zeros: GptqZeros::V1,
        };
        Store::open(dir.join("x.calib-state"), Layout::Gptq, s).unwrap()
    }

    fn sample() -> QuantizedInt {
        QuantizedInt {
            bits: Bits::B4,
            n: 2,
            k: 8,
            group_size: GroupSize::Size(4),
            symmetric: true,
            codes: (0..16).map(|i| (i % 16) as u8).collect(),
            scales: vec![0.5, 0.25, 1.0, 2.0],
            zeros: vec![8; 4],
            g_idx: Some(vec![1, 0, 1, 0, 1, 0, 1, 0]),
        }
    }

    #[test]
    fn quantized_layers_round_trip_through_the_state() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        s.put_quantized("model.layers.0.mlp.up_proj.weight", &sample()).unwrap();
        assert_eq!(s.get_quantized("model.layers.0.mlp.up_proj.weight").unwrap(), Some(sample()));
        assert_eq!(s.get_quantized("absent").unwrap(), None);
        s.put_float("n.weight", &[1.0, -2.5]).unwrap();
        assert_eq!(s.get_float("n.weight").unwrap(), Some(vec![1.0, -2.5]));
    }

    #[test]
    fn damaged_state_files_are_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        s.put_quantized("a", &sample()).unwrap();
        let p = s.tensor_path("a", "q");
        let mut b = fs::read(&p).unwrap();
        b.truncate(b.len() - 3);
        fs::write(&p, &b).unwrap();
        let e = s.get_quantized("a").unwrap_err().to_string();
        assert!(e.contains("a.q") && e.contains("header promises"), "{e}");
        // A lying n·k must not allocate.
        let mut b = fs::read(&p).unwrap();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&p, &b).unwrap();
        assert!(s.get_quantized("a").unwrap_err().to_string().contains("exceeds the file"));
        fs::write(&p, b"garbage").unwrap();
        assert!(s.get_quantized("a").unwrap_err().to_string().contains("bad magic"));
        fs::write(s.tensor_path("f", "f32"), [0u8; 5]).unwrap();
        assert!(s.get_float("f").is_err());
    }
}
