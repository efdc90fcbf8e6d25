//! An output directory that appears only when complete: files are written into a hidden
//! sibling directory, which is renamed onto the target at the end and removed if the
//! conversion fails (or panics) before that.

use std::path::{Path, PathBuf};

use super::{ConvertError, Result};

#[derive(Debug)]
pub(crate) struct StagingDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Refuses a target that exists and is not an empty directory, so nothing of the user's is
    /// overwritten or mixed with the new files.
    pub(crate) fn create(target: &Path) -> Result<Self> {
        if target.exists() {
            let empty_dir = target.is_dir()
                && std::fs::read_dir(target)
                    .map_err(|e| ConvertError::io(target, e))?
                    .next()
                    .is_none();
            if !empty_dir {
                return Err(ConvertError::Output {
                    path: target.to_path_buf(),
                    msg: "output exists and is not an empty directory; choose a new path".into(),
                });
            }
        }
        let name = target.file_name().ok_or_else(|| ConvertError::Output {
            path: target.to_path_buf(),
            msg: "output path has no directory name".into(),
        })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging =
            parent.join(format!(".{}.qtool-tmp-{}", name.to_string_lossy(), std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| ConvertError::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| ConvertError::io(&staging, e))?;
        Ok(StagingDir { target: target.to_path_buf(), staging, committed: false })
    }

    /// Where to write the files now.
    pub(crate) fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the directory into place; returns the final path.
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        if self.target.is_dir() {
            // Checked empty on create; `remove_dir` fails rather than delete anything new.
            std::fs::remove_dir(&self.target).map_err(|e| ConvertError::io(&self.target, e))?;
        }
        std::fs::rename(&self.staging, &self.target)
            .map_err(|e| ConvertError::io(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
