//! Output files that appear at their final path only when complete.
//!
//! Every writer creates a temporary file beside the target (same directory, so the final
//! `rename` is atomic), writes it, syncs it and renames it into place. A writer that fails or is
//! dropped early removes its temporary file, so a failing command leaves nothing at the output
//! path. Writing over one of the command's inputs is refused before anything is created.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written under a temporary name.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::invalid(&target, "output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{name}.qtool-tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile { target, tmp, file: Some(BufWriter::with_capacity(8 << 20, file)) })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// Flushes, fsyncs and renames the file to its target.
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut w = self.file.take().expect("AtomicFile committed twice");
        w.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let file = w.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        Ok(self.target.clone())
    }

    /// Flushes and fsyncs the file but leaves it under its temporary name, releasing the write
    /// buffer. Multi-file outputs (shards + index) seal each part as it completes and rename
    /// them all only once every part is ready.
    pub fn seal(mut self) -> Result<SealedFile> {
        let w = self.file.take().expect("AtomicFile sealed after commit");
        // Armed before anything can fail, so an error below still removes the temporary file.
        let sealed = SealedFile { target: self.target.clone(), tmp: self.tmp.clone(), armed: true };
        let file = w.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        Ok(sealed)
    }
}

/// A completely written and synced temporary file waiting for its rename; dropped before
/// [`SealedFile::commit`], it removes the temporary file.
#[derive(Debug)]
pub struct SealedFile {
    target: PathBuf,
    tmp: PathBuf,
    armed: bool,
}

impl SealedFile {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the file to its target.
    pub fn commit(mut self) -> Result<PathBuf> {
        fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.armed = false;
        Ok(self.target.clone())
    }
}

impl Drop for SealedFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.writer().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Refuses an output path that is (or resolves to) one of the inputs.
pub fn ensure_not_input(output: &Path, inputs: &[PathBuf]) -> Result<()> {
    let out = output.canonicalize().ok();
    for input in inputs {
        let same = match (&out, input.canonicalize().ok()) {
            (Some(o), Some(i)) => *o == i,
            _ => output == input,
        };
        if same {
            return Err(Error::invalid(output, "refusing to overwrite an input file"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!target.exists());
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");

        let other = dir.path().join("dropped.bin");
        let mut f = AtomicFile::create(&other).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert!(!other.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn refuses_to_overwrite_input() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        fs::write(&input, b"x").unwrap();
        let via_dot = dir.path().join(".").join("in.safetensors");
        assert!(ensure_not_input(&via_dot, std::slice::from_ref(&input)).is_err());
        assert!(ensure_not_input(&dir.path().join("new"), &[input]).is_ok());
    }
}
