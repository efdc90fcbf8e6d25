//! Read-only memory maps of checkpoint files.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A file mapped read-only. Empty files map to an empty slice (mmap of length 0 is an error on
/// Linux).
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if !file.metadata().map_err(|e| Error::io(&path, e))?.is_file() {
            return Err(Error::invalid(&path, "not a regular file"));
        }
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only. Another process truncating the file while it is
            // mapped would fault the reader (SIGBUS); that is the accepted contract of every
            // mmap-based model loader (safetensors, llama.cpp), and qtool never writes to its
            // inputs.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            // Tensors are usually read front to back once; tell the kernel so it reads ahead.
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Sequential);
            Some(map)
        };
        Ok(MappedFile { path, map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}
