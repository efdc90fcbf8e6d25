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

    /// Drops the pages of `offset..offset + len` from this process's memory (they are read back
    /// from the file if touched again). Streaming pipelines call it once a tensor is consumed,
    /// so resident memory stays near the largest tensor instead of growing to the file's size.
    /// A hint: failures (e.g. a platform without `madvise`) are ignored.
    pub fn release(&self, offset: u64, len: u64) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            const PAGE: u64 = 4096;
            let start = offset / PAGE * PAGE;
            let end = offset.saturating_add(len).min(map.len() as u64);
            if end <= start {
                return;
            }
            // SAFETY: the map is a read-only file mapping. MADV_DONTNEED only unmaps its pages
            // from this process; the next access faults them in again from the file, so every
            // slice borrowed from the map keeps reading the same bytes.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start as usize,
                    (end - start) as usize,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}
