//! The device's read bandwidth for a buffer of a given size: the ceiling any weight-streaming
//! kernel works against (Marlin at small m is reading `k·n/2` bytes of int4 weights). Reported
//! next to Marlin in `bench_marlin` so a speed-up target can be judged against what the memory
//! system delivers at that size, not only against the data-sheet peak.

use cudarc::driver::PushKernelArg;

use crate::error::{KResult, KernelError};
use crate::gpu::Gpu;
use crate::launch::{config, launch};
use crate::timing::median_micros;
use crate::KernelSource;

const SRC: KernelSource = crate::kernel_source!("hbm");

/// The best read time of one `bytes`-sized buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadProbe {
    pub bytes: usize,
    /// Median µs of one full read with the best launch shape.
    pub micros: f64,
    pub gbps: f64,
    /// `(CTAs per SM, threads per CTA)` of the best shape.
    pub shape: (u32, u32),
}

/// Reads `bytes` (rounded up to 16) from `copies` distinct buffers in rotation — enough of them
/// to exceed the L2 twice, so every read comes from HBM, as in `bench_marlin` — timing each
/// launch shape over `reps` runs, and keeps the fastest.
pub fn read_probe(gpu: &Gpu, bytes: usize, reps: usize) -> KResult<ReadProbe> {
    if bytes == 0 {
        return Err(KernelError::Shape("read probe of 0 bytes".into()));
    }
    let n16 = bytes.div_ceil(16);
    let l2 = gpu
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?
        as usize;
    let copies = ((2 * l2).div_ceil(n16 * 16) + 1).clamp(2, 64);
    let bufs: Vec<_> = (0..copies).map(|_| gpu.zeros::<u32>(n16 * 4)).collect::<KResult<_>>()?;
    let mut sink = gpu.zeros::<u32>(1)?;
    let f = gpu.function(&SRC, "hbm_read")?;
    let sms = gpu.sm_count()?;
    let (n16u, never) = (n16 as u64, 0x5EED_F00Du32);
    let mut best: Option<ReadProbe> = None;
    for per_sm in [1u32, 2, 4, 8] {
        for threads in [256u32, 512, 1024] {
            if per_sm * threads > 2048 {
                continue;
            }
            let mut turn = 0usize;
            let us = median_micros(gpu, reps, || {
                let buf = &bufs[turn % copies];
                turn += 1;
                let mut b = gpu.stream().launch_builder(&f);
                b.arg(buf).arg(&n16u).arg(&never).arg(&mut sink);
                launch(gpu, &f, "hbm_read", b, config((sms * per_sm, 1, 1), (threads, 1, 1), 0))
            })?;
            let gbps = (n16 * 16) as f64 / (us * 1e-6) / 1e9;
            if best.as_ref().is_none_or(|b| us < b.micros) {
                best =
                    Some(ReadProbe { bytes: n16 * 16, micros: us, gbps, shape: (per_sm, threads) });
            }
        }
    }
    Ok(best.expect("at least one shape ran"))
}
