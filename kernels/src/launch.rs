//! The one place where qtool's own kernels are launched.
//!
//! Wrappers build the argument list with cudarc's `LaunchArgs` (the argument order and types
//! must match the kernel's `extern "C"` signature, and every kernel bounds-checks against the
//! sizes it is passed), then call [`launch`], which checks the configuration against the
//! function's and the device's limits before the unsafe call, so a bad shape becomes a
//! [`KernelError::Launch`] instead of a driver error or a silent no-op.

use cudarc::driver::sys::{CUdevice_attribute as DevAttr, CUfunction_attribute as FnAttr};
use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig};

use crate::error::{KResult, KernelError};
use crate::gpu::Gpu;

/// Static shared memory every kernel may use without opting in.
const DEFAULT_SMEM: u32 = 48 * 1024;

/// A launch configuration: grid, block, dynamic shared memory in bytes.
pub fn config(
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_mem_bytes: u32,
) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes }
}

/// `ceil(a / b)` as a grid dimension, failing instead of overflowing `u32`.
pub fn blocks(a: usize, b: usize) -> KResult<u32> {
    u32::try_from(a.div_ceil(b))
        .map_err(|_| KernelError::Launch(format!("{a} / {b} blocks exceed the grid limit")))
}

/// Checks `cfg` against `func`'s and the device's limits, raises the function's dynamic
/// shared-memory limit when `cfg` needs more than 48 KiB, and launches `args`.
///
/// `what` names the kernel in errors. The argument list inside `args` must match the kernel's
/// signature; callers in this crate keep each wrapper next to its kernel's signature comment.
pub(crate) fn launch(
    gpu: &Gpu,
    func: &CudaFunction,
    what: &str,
    mut args: LaunchArgs<'_>,
    cfg: LaunchConfig,
) -> KResult<()> {
    check(gpu, func, what, &cfg)?;
    // SAFETY: the configuration is within the device's and function's limits (checked above);
    // the argument list matches the kernel signature (the wrappers' responsibility, see module
    // docs); every buffer is a live cudarc allocation whose events order it on this stream.
    unsafe { args.launch(cfg) }.map_err(|e| KernelError::Cuda(format!("launching {what}: {e}")))?;
    Ok(())
}

fn check(gpu: &Gpu, func: &CudaFunction, what: &str, cfg: &LaunchConfig) -> KResult<()> {
    let err = |msg: String| Err(KernelError::Launch(format!("{what}: {msg}")));
    let (bx, by, bz) = cfg.block_dim;
    let threads = bx as u64 * by as u64 * bz as u64;
    let fn_max = func.get_attribute(FnAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)? as u64;
    if threads == 0 || threads > fn_max {
        return err(format!(
            "{threads} threads per block (this kernel allows 1..={fn_max} at its register count)"
        ));
    }
    let (gx, gy, gz) = cfg.grid_dim;
    let gmax = (
        gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)? as u32,
        gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)? as u32,
        gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)? as u32,
    );
    if gx == 0 || gy == 0 || gz == 0 || gx > gmax.0 || gy > gmax.1 || gz > gmax.2 {
        return err(format!(
            "grid ({gx}, {gy}, {gz}) outside 1..=({}, {}, {})",
            gmax.0, gmax.1, gmax.2
        ));
    }
    let smem = cfg.shared_mem_bytes;
    if smem > DEFAULT_SMEM {
        let optin =
            gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let static_smem = func.get_attribute(FnAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)? as u32;
        if smem + static_smem > optin {
            return err(format!("{smem} B dynamic + {static_smem} B static shared memory exceed the device's {optin} B"));
        }
        func.set_attribute(FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_counts() {
        assert_eq!(blocks(0, 128).unwrap(), 0);
        assert_eq!(blocks(1, 128).unwrap(), 1);
        assert_eq!(blocks(256, 128).unwrap(), 2);
        assert_eq!(blocks(257, 128).unwrap(), 3);
        assert!(blocks(usize::MAX, 1).is_err());
    }
}
