//! Finding the CUDA shared libraries and headers outside the loader's default path.
//!
//! cudarc opens its libraries by bare file name (`libnvrtc.so.13`, `libcublasLt.so.13`, ...), so
//! only what the dynamic loader finds on its own is visible to it. NVRTC and the CUDA headers are
//! also shipped as Python wheels (`nvidia-cuda-nvrtc`, which CI installs into the repository's
//! `.venv`), and the device's toolkit lives in `/usr/local/cuda`. When a library is not on the
//! default path we open it here by absolute path and keep the handle for the whole process:
//! glibc's `dlopen` of a bare name returns an already-loaded object whose SONAME matches, so
//! cudarc's later lookup finds the very same library.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Environment variable naming NVRTC's library file (or the folder holding it).
pub const ENV_NVRTC_LIB: &str = "QTOOL_NVRTC_LIB";
/// Environment variable naming the CUDA include folder (with `cuda_fp16.h`, `cuda_bf16.h`, ...).
pub const ENV_CUDA_INCLUDE: &str = "QTOOL_CUDA_INCLUDE";

/// Folders that may hold CUDA libraries, most specific first: the env override, the active or
/// repository virtualenv's `nvidia/cu13` wheel folders, then the system toolkit.
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os(ENV_NVRTC_LIB).map(PathBuf::from) {
        if p.is_dir() {
            dirs.push(p);
        } else if let Some(parent) = p.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for site in site_packages() {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cublas/lib"] {
            dirs.push(site.join(sub));
        }
    }
    for sys in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"] {
        dirs.push(PathBuf::from(sys));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// The `site-packages` folders of the virtualenvs qtool knows about: `$QTOOL_VENV`,
/// `$VIRTUAL_ENV`, and the repository's own `.venv` (where `scripts/setup-python.sh` installs
/// the NVRTC wheel for the compile test).
fn site_packages() -> Vec<PathBuf> {
    let mut venvs: Vec<PathBuf> = ["QTOOL_VENV", "VIRTUAL_ENV"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let mut out = Vec::new();
    for venv in venvs {
        let Ok(entries) = std::fs::read_dir(venv.join("lib")) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python"))
            })
            .collect();
        pythons.sort();
        out.extend(pythons.into_iter().map(|p| p.join("site-packages")));
    }
    out
}

/// Handles opened by absolute path; kept open for the life of the process (see module docs).
fn pinned() -> &'static Mutex<Vec<libloading::Library>> {
    static PINNED: OnceLock<Mutex<Vec<libloading::Library>>> = OnceLock::new();
    PINNED.get_or_init(|| Mutex::new(Vec::new()))
}

/// Makes one of `names`' cudarc candidate files loadable by cudarc, and returns the name (or
/// absolute path) that loaded. The default loader path is tried first; then each known folder.
pub fn ensure_library(names: &[&str]) -> Option<String> {
    let candidates: Vec<String> =
        names.iter().flat_map(|n| cudarc::get_lib_name_candidates(n)).collect();
    for candidate in &candidates {
        // SAFETY: loading a shared library runs its initialisers; these are the CUDA libraries
        // cudarc would load anyway. The handle is dropped at once: cudarc keeps its own.
        if unsafe { libloading::Library::new(candidate) }.is_ok() {
            return Some(candidate.clone());
        }
    }
    for dir in library_dirs() {
        for candidate in &candidates {
            let path = dir.join(candidate);
            if !path.is_file() {
                continue;
            }
            // SAFETY: as above; this handle is kept so that cudarc's by-name open finds it.
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                pinned().lock().unwrap_or_else(|p| p.into_inner()).push(lib);
                return Some(path.display().to_string());
            }
        }
    }
    None
}

/// NVRTC, made loadable for cudarc. Cached: the search runs once per process.
pub fn nvrtc_library() -> Option<String> {
    static FOUND: OnceLock<Option<String>> = OnceLock::new();
    FOUND.get_or_init(|| ensure_library(&["nvrtc"])).clone()
}

/// cuBLAS and cuBLASLt, made loadable for cudarc; `Err` names the one that is missing.
pub fn cublas_libraries() -> Result<(), String> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            for name in ["cublas", "cublasLt"] {
                if ensure_library(&[name]).is_none() {
                    return Err(format!(
                        "lib{name} not found (install the CUDA toolkit's cuBLAS or add it to LD_LIBRARY_PATH)"
                    ));
                }
            }
            Ok(())
        })
        .clone()
}

/// The CUDA include folder NVRTC needs for `cuda_bf16.h`, `cuda_fp8.h`, ...:
/// `$QTOOL_CUDA_INCLUDE`, the toolkit's `/usr/local/cuda/include`, or a wheel's
/// `nvidia/cu13/include`. `None` when none holds `cuda_fp16.h`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(ENV_CUDA_INCLUDE) {
        dirs.push(PathBuf::from(p));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    for site in site_packages() {
        dirs.push(site.join("nvidia/cu13/include"));
        dirs.push(site.join("nvidia/cuda_runtime/include"));
    }
    dirs.into_iter().find(|d| d.join("cuda_fp16.h").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_library_is_not_found() {
        assert_eq!(ensure_library(&["qtool-no-such-library-xyz"]), None);
    }

    #[test]
    fn include_dir_has_the_fp16_header_when_found() {
        if let Some(d) = cuda_include_dir() {
            assert!(d.join("cuda_fp16.h").is_file());
        }
    }
}
