//! Opening a checkpoint path: a `.safetensors` file, a `.gguf` file, or a directory of
//! safetensors shards (with or without `model.safetensors.index.json`), plus the `config.json`
//! that travels with Hugging Face checkpoints.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::safetensors::SafetensorsSource;
use crate::tensor::TensorSource;

/// The index file name Hugging Face uses for sharded safetensors checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// An opened checkpoint.
#[derive(Debug)]
pub enum Checkpoint {
    Safetensors {
        /// The path the user gave.
        path: PathBuf,
        source: SafetensorsSource,
        /// `config.json` of the checkpoint's directory, when there is one.
        config: Option<serde_json::Value>,
    },
    Gguf {
        path: PathBuf,
        file: GgufFile,
    },
}

impl Checkpoint {
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Safetensors { path, .. } | Checkpoint::Gguf { path, .. } => path,
        }
    }

    pub fn source(&self) -> &dyn TensorSource {
        match self {
            Checkpoint::Safetensors { source, .. } => source,
            Checkpoint::Gguf { file, .. } => file,
        }
    }

    pub fn config(&self) -> Option<&serde_json::Value> {
        match self {
            Checkpoint::Safetensors { config, .. } => config.as_ref(),
            Checkpoint::Gguf { .. } => None,
        }
    }

    /// `config.json`'s `quantization_config`, when present.
    pub fn quantization_config(&self) -> Option<&serde_json::Value> {
        self.config()?.get("quantization_config")
    }
}

/// Opens a checkpoint by looking at what `path` is: a directory, a GGUF file (by magic), or a
/// safetensors file.
pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return open_dir(path);
    }
    // A `.gguf` name goes to the GGUF reader even without the magic, so a damaged file gets
    // the reader's precise "not a GGUF file (magic ...)" rather than "unknown format".
    let is_gguf_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf_name || has_gguf_magic(path)? {
        return Ok(Checkpoint::Gguf { path: path.to_path_buf(), file: GgufFile::open(path)? });
    }
    let is_st = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_st {
        return Err(Error::UnknownFormat { path: path.to_path_buf() });
    }
    let source = SafetensorsSource::open_file(path)?;
    let config = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => read_config(dir)?,
        _ => read_config(Path::new("."))?,
    };
    Ok(Checkpoint::Safetensors { path: path.to_path_buf(), source, config })
}

fn open_dir(dir: &Path) -> Result<Checkpoint> {
    let index = dir.join(INDEX_FILE);
    let source = if index.is_file() {
        SafetensorsSource::open_index(&index)?
    } else {
        let mut shards: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            })
            .collect();
        if shards.is_empty() {
            return Err(Error::invalid(
                dir,
                "directory holds no *.safetensors files and no model.safetensors.index.json",
            ));
        }
        shards.sort();
        SafetensorsSource::open_files(&shards)?
    };
    let config = read_config(dir)?;
    Ok(Checkpoint::Safetensors { path: dir.to_path_buf(), source, config })
}

fn has_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == 4 && &magic == b"GGUF")
}

/// Reads `dir/config.json` if it exists. A config that is present but not JSON is an error: a
/// silently ignored `quantization_config` would make qtool misjudge the checkpoint.
fn read_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::invalid(&path, format!("config.json is not valid JSON: {e}")))
}
