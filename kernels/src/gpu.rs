//! One GPU as qtool uses it: a CUDA context, one stream, lazily created cuBLAS/cuBLASLt handles
//! and the modules NVRTC compiled for this device.
//!
//! Everything runs on a single stream, so cudarc's cross-stream event bookkeeping never has to
//! order anything and host↔device copies are ordered with the launches around them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};

use crate::blas::Blas;
use crate::error::{KResult, KernelError};
use crate::nvrtc::{self, KernelSource};
use crate::probe::{probe, GpuDevice};

/// A CUDA device ready to run qtool's kernels. Create with [`Gpu::open`].
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    device: GpuDevice,
    arch: String,
    driver_version: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: OnceLock<Result<Arc<Blas>, String>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("device", &self.device).field("arch", &self.arch).finish()
    }
}

impl Gpu {
    /// Opens GPU `ordinal`. Runs the probe first, so a machine without a driver, NVRTC or GPU
    /// gets [`KernelError::NoGpu`] with the probe's reason instead of a panic inside cudarc.
    pub fn open(ordinal: usize) -> KResult<Gpu> {
        let p = probe();
        if let Some(reason) = p.unusable_reason() {
            return Err(KernelError::NoGpu(reason));
        }
        let device = p.devices.get(ordinal).cloned().ok_or_else(|| {
            KernelError::NoGpu(format!("GPU {ordinal} does not exist ({} found)", p.devices.len()))
        })?;
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.new_stream()?;
        Ok(Gpu {
            ctx,
            stream,
            arch: nvrtc::arch_for(device.compute_capability),
            device,
            driver_version: p.driver_version.unwrap_or_default(),
            modules: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
        })
    }

    /// GPU 0 for a test suite that needs one: `None` after printing `skipped: <reason>` when
    /// there is no usable GPU, except under `QTOOL_REQUIRE_GPU=1`, where that panics — so a run
    /// on a GPU machine cannot pass by skipping. Any other failure to open it panics.
    pub fn for_tests() -> Option<Gpu> {
        match Gpu::open(0) {
            Ok(g) => Some(g),
            Err(e @ KernelError::NoGpu(_)) => {
                if std::env::var("QTOOL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("QTOOL_REQUIRE_GPU=1 but {e}");
                }
                println!("skipped: {e}");
                None
            }
            Err(e) => panic!("opening the GPU failed: {e}"),
        }
    }

    /// The device's name, compute capability and memory as the probe found them.
    pub fn device(&self) -> &GpuDevice {
        &self.device
    }

    /// The NVRTC architecture kernels are compiled for (`sm_90a` on Hopper).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// CUDA driver version, `major.minor`.
    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// One integer device attribute (e.g. SM count, shared memory limits).
    pub fn attribute(&self, a: cudarc::driver::sys::CUdevice_attribute) -> KResult<i32> {
        Ok(self.ctx.attribute(a)?)
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> KResult<u32> {
        Ok(self.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )? as u32)
    }

    /// The module compiled from `src` for this device: compiled (or read from the disk cache)
    /// once per process, then shared.
    pub fn module(&self, src: &KernelSource) -> KResult<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(src.name) {
            return Ok(m.clone());
        }
        let cubin = nvrtc::compile_cached(src, &self.arch)?;
        let module = match self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
            Ok(m) => m,
            Err(_) => {
                // A stale or damaged cache entry: compile afresh once.
                nvrtc::evict(src, &self.arch);
                let cubin = nvrtc::compile_for_arch(src, &self.arch)?;
                self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)).map_err(|e| {
                    KernelError::Cuda(format!("loading {} for {}: {e}", src.name, self.arch))
                })?
            }
        };
        modules.insert(src.name, module.clone());
        Ok(module)
    }

    /// Kernel `name` (an `extern "C"` function) from `src`.
    pub fn function(&self, src: &KernelSource, name: &str) -> KResult<CudaFunction> {
        self.module(src)?
            .load_function(name)
            .map_err(|e| KernelError::Cuda(format!("kernel {name} not found in {}: {e}", src.name)))
    }

    /// cuBLAS + cuBLASLt, created on first use (their libraries are probed first).
    pub(crate) fn blas(&self) -> KResult<Arc<Blas>> {
        self.blas.get_or_init(|| Blas::new(self).map(Arc::new)).clone().map_err(KernelError::NoGpu)
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, host: &[T]) -> KResult<CudaSlice<T>> {
        if host.is_empty() {
            // cuMemAlloc(0) fails; a 1-element zeroed buffer stands in and is never read.
            return Ok(self.stream.alloc_zeros::<T>(1)?);
        }
        Ok(self.stream.clone_htod(host)?)
    }

    /// A new zero-filled device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> KResult<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros::<T>(len.max(1))?)
    }

    /// Copies a device buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> KResult<Vec<T>> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// Waits for all work on the stream; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> KResult<()> {
        Ok(self.stream.synchronize()?)
    }
}
