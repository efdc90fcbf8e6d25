//! NVRTC: compiling `kernels/cuda/*.cu` to a cubin for one architecture, with a disk cache.
//!
//! Needs only libnvrtc and the CUDA headers, never a driver, so the compile test runs in CI.
//! Every program gets `qtool_common.cuh` (shared device helpers) as an in-memory header, so the
//! `.cu` files stay self-contained strings (`include_str!`) with no include path of their own.

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::sys;

use crate::error::{KResult, KernelError};
use crate::libs;

/// One `.cu` file: its name (for logs and cache file names) and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// File stem, e.g. `"fp8"`; also the program name NVRTC reports in errors.
    pub name: &'static str,
    /// The CUDA C++ source.
    pub code: &'static str,
}

/// Declares a [`KernelSource`] for `kernels/cuda/<name>.cu`.
#[macro_export]
macro_rules! kernel_source {
    ($name:literal) => {
        $crate::KernelSource {
            name: $name,
            code: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/", $name, ".cu")),
        }
    };
}

/// The header every program may `#include "qtool_common.cuh"`.
pub const COMMON_HEADER: (&str, &str) =
    ("qtool_common.cuh", include_str!("../cuda/qtool_common.cuh"));

/// The NVRTC architecture name for a compute capability: the `a` (architecture-specific)
/// variants on 9.0 and 10.0 so `wgmma`/`setmaxnreg`-class instructions are allowed there.
pub fn arch_for(cc: (u32, u32)) -> String {
    match cc {
        (9, 0) => "sm_90a".to_string(),
        (10, 0) => "sm_100a".to_string(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// NVRTC's `major.minor`, or why NVRTC is unusable.
pub fn nvrtc_version() -> KResult<(i32, i32)> {
    static V: OnceLock<Result<(i32, i32), String>> = OnceLock::new();
    V.get_or_init(|| {
        if libs::nvrtc_library().is_none() {
            return Err(
                "NVRTC library not found (set QTOOL_NVRTC_LIB or install nvidia-cuda-nvrtc)".into(),
            );
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: valid out-pointers; the library was found above, so cudarc's load succeeds.
        let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcVersion failed: {r:?}"));
        }
        Ok((major, minor))
    })
    .clone()
    .map_err(KernelError::NoGpu)
}

/// The real architectures NVRTC can emit cubins for, as `sm_XY` numbers (e.g. 80, 90, 100).
pub fn supported_archs() -> KResult<Vec<u32>> {
    nvrtc_version()?;
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; NVRTC is loaded (nvrtc_version succeeded).
    let r = unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || n < 0 {
        return Err(KernelError::NoGpu(format!("nvrtcGetNumSupportedArchs failed: {r:?}")));
    }
    let mut archs = vec![0 as c_int; n as usize];
    // SAFETY: the buffer holds exactly the `n` entries NVRTC reported.
    let r = unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(KernelError::NoGpu(format!("nvrtcGetSupportedArchs failed: {r:?}")));
    }
    Ok(archs.into_iter().map(|a| a as u32).collect())
}

/// The options every compile uses (besides the architecture).
fn base_options(include: &std::path::Path) -> Vec<String> {
    vec![
        format!("-I{}", include.display()),
        "--std=c++17".to_string(),
        // Kernels are written for speed but must be bit-stable against the CPU reference up to
        // rounding: no fast-math approximations.
        "--fmad=true".to_string(),
        "-DQTOOL_NVRTC=1".to_string(),
    ]
}

/// Compiles `src` for `arch` (e.g. `"sm_90a"`) and returns the cubin. Needs only NVRTC and the
/// CUDA headers. Not cached; see [`compile_cached`].
pub fn compile_for_arch(src: &KernelSource, arch: &str) -> KResult<Vec<u8>> {
    nvrtc_version()?;
    let include = libs::cuda_include_dir().ok_or_else(|| {
        KernelError::NoGpu(format!(
            "CUDA headers (cuda_fp16.h) not found: set {} or install nvidia-cuda-runtime",
            libs::ENV_CUDA_INCLUDE
        ))
    })?;
    let nvrtc_err = |log: String| KernelError::Nvrtc { kernel: src.name.to_string(), log };
    let code =
        CString::new(src.code).map_err(|_| nvrtc_err("source contains a NUL byte".into()))?;
    let name =
        CString::new(format!("{}.cu", src.name)).map_err(|_| nvrtc_err("bad name".into()))?;
    let header_name = CString::new(COMMON_HEADER.0).expect("static name");
    let header_code = CString::new(COMMON_HEADER.1).expect("static header");
    let headers = [header_code.as_ptr()];
    let header_names = [header_name.as_ptr()];

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a live NUL-terminated string that outlives the program (all are
    // dropped after `nvrtcDestroyProgram` below).
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            code.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            header_names.as_ptr(),
        )
    };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_err(format!("nvrtcCreateProgram: {r:?}")));
    }

    let mut options = base_options(&include);
    options.push(format!("--gpu-architecture={arch}"));
    let c_opts: Vec<CString> =
        options.iter().map(|o| CString::new(o.as_str()).expect("options have no NUL")).collect();
    let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();

    // SAFETY: `prog` is a live program; the option pointers outlive the call.
    let compiled =
        unsafe { sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let result = if compiled == sys::nvrtcResult::NVRTC_SUCCESS {
        // SAFETY: `prog` compiled successfully.
        unsafe { cubin_of(prog) }.map_err(|e| nvrtc_err(format!("nvrtcGetCUBIN: {e:?}")))
    } else {
        // SAFETY: `prog` is live; the log is read before destruction.
        let log = unsafe { program_log(prog) };
        Err(nvrtc_err(format!("{compiled:?} for {arch}\n{log}")))
    };
    // SAFETY: `prog` was created above and is destroyed exactly once.
    unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    result
}

/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn cubin_of(prog: sys::nvrtcProgram) -> Result<Vec<u8>, sys::nvrtcResult> {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(r);
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC reported.
    let r = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(r);
    }
    if buf.is_empty() {
        return Err(sys::nvrtcResult::NVRTC_ERROR_INVALID_PROGRAM);
    }
    Ok(buf)
}

/// # Safety
/// `prog` must be a live program.
unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS {
        return "(no log)".to_string();
    }
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` holds at least the `size` bytes NVRTC reported.
    if unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) }
        != sys::nvrtcResult::NVRTC_SUCCESS
    {
        return "(no log)".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// The cache folder: `$QTOOL_KERNEL_CACHE`, else `$XDG_CACHE_HOME/qtool/kernels`, else
/// `~/.cache/qtool/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QTOOL_KERNEL_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("qtool/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qtool/kernels"))
}

/// 64-bit FNV-1a, run twice with different offsets for a 128-bit cache key. Not cryptographic:
/// it only has to keep distinct (source, header, arch, NVRTC, options) tuples apart.
fn cache_key(src: &KernelSource, arch: &str, version: (i32, i32)) -> String {
    let mut parts: Vec<&[u8]> =
        vec![src.code.as_bytes(), COMMON_HEADER.1.as_bytes(), arch.as_bytes()];
    let v = format!("{}.{}", version.0, version.1);
    parts.push(v.as_bytes());
    let opts = base_options(std::path::Path::new("")).join(" ");
    parts.push(opts.as_bytes());
    let fnv = |mut h: u64| {
        for p in &parts {
            for &b in p.iter().chain([0xFFu8].iter()) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    };
    format!("{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

/// Path of the cached cubin for `src` on `arch`.
pub fn cache_path(src: &KernelSource, arch: &str) -> KResult<Option<PathBuf>> {
    let version = nvrtc_version()?;
    Ok(cache_dir().map(|d| {
        d.join(format!(
            "{}-{arch}-nvrtc{}.{}-{}.cubin",
            src.name,
            version.0,
            version.1,
            cache_key(src, arch, version)
        ))
    }))
}

/// Compiles `src` for `arch`, or reads the cubin a previous process cached. The cache is an
/// optimisation only: an unwritable folder is not an error.
pub fn compile_cached(src: &KernelSource, arch: &str) -> KResult<Vec<u8>> {
    let path = cache_path(src, arch)?;
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if is_elf(&bytes) {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile_for_arch(src, arch)?;
    if let Some(p) = &path {
        store(p, &cubin);
    }
    Ok(cubin)
}

/// Forgets the cached cubin (e.g. when the driver rejected it).
pub fn evict(src: &KernelSource, arch: &str) {
    if let Ok(Some(p)) = cache_path(src, arch) {
        let _ = std::fs::remove_file(p);
    }
}

fn is_elf(bytes: &[u8]) -> bool {
    bytes.len() > 4 && &bytes[..4] == b"\x7fELF"
}

/// Writes through a temporary file and a rename so concurrent processes never read half a file.
fn store(path: &std::path::Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("k"),
        std::process::id()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(arch_for((9, 0)), "sm_90a");
        assert_eq!(arch_for((10, 0)), "sm_100a");
        assert_eq!(arch_for((8, 9)), "sm_89");
        assert_eq!(arch_for((8, 0)), "sm_80");
        assert_eq!(arch_for((12, 0)), "sm_120");
    }

    #[test]
    fn cache_key_separates_source_and_arch() {
        let a = KernelSource { name: "a", code: "x" };
        let b = KernelSource { name: "a", code: "y" };
        let v = (13, 0);
        assert_ne!(cache_key(&a, "sm_90a", v), cache_key(&b, "sm_90a", v));
        assert_ne!(cache_key(&a, "sm_90a", v), cache_key(&a, "sm_89", v));
        assert_ne!(cache_key(&a, "sm_90a", v), cache_key(&a, "sm_90a", (13, 1)));
        assert_eq!(cache_key(&a, "sm_90a", v), cache_key(&a, "sm_90a", v));
    }

    #[test]
    fn elf_check() {
        assert!(is_elf(b"\x7fELF\x02"));
        assert!(!is_elf(b"//ptx"));
    }
}
