//! Finding the CUDA driver, NVRTC and a GPU.
//!
//! cudarc with `dynamic-loading` opens `libcuda`/`libnvrtc` on first use and *panics* when they
//! are missing (or when a symbol is absent from an older library). qtool must run on machines
//! without any of that, so the probe first tries to open the very library names cudarc would try
//! (through `libloading`, dropping the handle again), and only calls into cudarc when that
//! worked. Every cudarc call additionally runs under `catch_unwind` with a silenced panic hook,
//! so a library that loads but lacks a symbol still yields a reason instead of a crash.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use serde::Serialize;

/// What the probe found. Every field that could not be determined is `None`/empty, and
/// `problems` says why, in words a user can act on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuProbe {
    /// The file name of the CUDA driver library that loaded (e.g. `libcuda.so.1`).
    pub driver_library: Option<String>,
    /// The file name of the NVRTC library that loaded (e.g. `libnvrtc.so.13`).
    pub nvrtc_library: Option<String>,
    /// CUDA driver API version as `major.minor` (from `cuDriverGetVersion`).
    pub driver_version: Option<String>,
    /// NVRTC version as `major.minor`.
    pub nvrtc_version: Option<String>,
    /// The GPUs the driver reports, in ordinal order.
    pub devices: Vec<GpuDevice>,
    /// Why something is missing; empty when driver, NVRTC and at least one GPU were found.
    pub problems: Vec<String>,
}

/// One CUDA device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuDevice {
    pub ordinal: u32,
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub compute_capability: (u32, u32),
    pub total_memory_bytes: u64,
}

impl GpuProbe {
    /// Whether qtool can run kernels: a driver, NVRTC and at least one GPU.
    pub fn is_usable(&self) -> bool {
        self.driver_version.is_some() && self.nvrtc_version.is_some() && !self.devices.is_empty()
    }

    /// A one-line reason why kernels cannot run, or `None` when they can.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.is_usable() {
            return None;
        }
        if self.problems.is_empty() {
            // Cannot happen with `probe()`, which records a problem for every missing piece; kept
            // so a hand-built probe still yields a reason.
            return Some("no usable CUDA GPU".to_string());
        }
        Some(self.problems.join("; "))
    }
}

/// Probes for the CUDA driver, NVRTC and GPUs. Never panics, whatever is (not) installed.
pub fn probe() -> GpuProbe {
    let mut out = GpuProbe {
        driver_library: find_library(&["cuda", "nvcuda"]),
        nvrtc_library: crate::libs::nvrtc_library(),
        ..GpuProbe::default()
    };

    match &out.driver_library {
        None => out.problems.push(
            "CUDA driver library not found (libcuda.so / libcuda.so.1: is an NVIDIA driver installed?)"
                .to_string(),
        ),
        Some(_) => probe_driver(&mut out),
    }
    match &out.nvrtc_library {
        None => out.problems.push(
            "NVRTC library not found (libnvrtc.so.13 / libnvrtc.so: install the CUDA toolkit's NVRTC or the nvidia-cuda-nvrtc wheel, add it to LD_LIBRARY_PATH, or set QTOOL_NVRTC_LIB)"
                .to_string(),
        ),
        Some(_) => match guarded(|| {
            let (mut major, mut minor) = (0, 0);
            // SAFETY: both pointers are valid for writes; the library is known to load.
            let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
            (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
        }) {
            Ok(Some((major, minor))) => out.nvrtc_version = Some(format!("{major}.{minor}")),
            Ok(None) => out.problems.push("nvrtcVersion failed".to_string()),
            Err(msg) => out.problems.push(format!("NVRTC library unusable: {msg}")),
        },
    }
    out
}

/// The driver part of the probe: version, device count and each device's properties.
fn probe_driver(out: &mut GpuProbe) {
    use cudarc::driver::result;
    use cudarc::driver::sys::CUdevice_attribute as Attr;

    let found = guarded(|| -> Result<(String, Vec<GpuDevice>), String> {
        let mut version = 0;
        // SAFETY: valid out-pointer; the driver library is known to load.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| format!("cuDriverGetVersion failed: {e}"))?;
        let version = format!("{}.{}", version / 1000, (version % 1000) / 10);
        result::init().map_err(|e| format!("cuInit failed (driver {version}): {e}"))?;
        let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
        let mut devices = Vec::new();
        for ordinal in 0..count.max(0) {
            let dev = result::device::get(ordinal).map_err(|e| format!("cuDeviceGet: {e}"))?;
            let name =
                result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName: {e}"))?;
            // SAFETY: `dev` came from cuDeviceGet.
            let (major, minor, mem) = unsafe {
                (
                    result::device::get_attribute(
                        dev,
                        Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    ),
                    result::device::get_attribute(
                        dev,
                        Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    ),
                    result::device::total_mem(dev),
                )
            };
            let attr = |r: Result<i32, _>| r.map_err(|e| format!("cuDeviceGetAttribute: {e}"));
            devices.push(GpuDevice {
                ordinal: ordinal as u32,
                name,
                compute_capability: (attr(major)? as u32, attr(minor)? as u32),
                total_memory_bytes: mem.map_err(|e| format!("cuDeviceTotalMem: {e}"))? as u64,
            });
        }
        Ok((version, devices))
    });
    match found {
        Ok(Ok((version, devices))) => {
            out.driver_version = Some(version);
            if devices.is_empty() {
                out.problems.push("the CUDA driver reports no GPU".to_string());
            }
            out.devices = devices;
        }
        Ok(Err(msg)) => out.problems.push(msg),
        Err(msg) => out.problems.push(format!("CUDA driver library unusable: {msg}")),
    }
}

/// The first of cudarc's candidate file names for any of `names` that `dlopen` accepts.
fn find_library(names: &[&str]) -> Option<String> {
    names.iter().flat_map(|n| cudarc::get_lib_name_candidates(n)).find(|candidate| {
        // SAFETY: loading a shared library runs its initialisers; the CUDA libraries are the
        // ones cudarc would load anyway. The handle is dropped at once: cudarc keeps its own.
        unsafe { libloading::Library::new(candidate) }.is_ok()
    })
}

/// Runs `f`, turning a panic into its message. The panic hook is silenced meanwhile so nothing
/// reaches stderr; a mutex keeps concurrent probes from restoring each other's hooks.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK_LOCK: Mutex<()> = Mutex::new(());
    let _guard = HOOK_LOCK.lock().unwrap_or_else(|poison| poison.into_inner());
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(previous);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string())
            .lines()
            .next()
            .unwrap_or("panicked")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_explains_itself() {
        let p = probe();
        // Either usable, or there is a reason; never both absent.
        assert_eq!(p.is_usable(), p.unusable_reason().is_none());
        if p.driver_library.is_none() {
            assert!(p.driver_version.is_none() && p.devices.is_empty());
            assert!(p.problems.iter().any(|m| m.contains("driver library not found")));
        }
        if p.nvrtc_library.is_none() {
            assert!(p.nvrtc_version.is_none());
        }
    }

    #[test]
    fn guarded_turns_panics_into_messages() {
        let r: Result<(), String> = guarded(|| panic!("boom\nsecond line"));
        assert_eq!(r, Err("boom".to_string()));
        assert_eq!(guarded(|| 7), Ok(7));
    }

    #[test]
    fn missing_library_is_not_found() {
        assert_eq!(find_library(&["qtool-no-such-library-xyz"]), None);
    }

    #[test]
    fn hand_built_probe_reasons() {
        let p = GpuProbe::default();
        assert!(!p.is_usable());
        assert!(p.unusable_reason().is_some());
        let ok = GpuProbe {
            driver_version: Some("13.0".into()),
            nvrtc_version: Some("13.0".into()),
            devices: vec![GpuDevice {
                ordinal: 0,
                name: "X".into(),
                compute_capability: (9, 0),
                total_memory_bytes: 1,
            }],
            ..GpuProbe::default()
        };
        assert!(ok.is_usable());
        assert_eq!(ok.unusable_reason(), None);
    }
}
