//! The Marlin W4A16 GEMM (kernels/cuda/marlin.cu) on the exact bytes `qtool repack --target
//! marlin` writes: `B [k/16, 2n]` int32 and permuted f16 scales `[G, n]` (formats.md §4.2–§4.3,
//! `qtool_quantizers::int::marlin`). Symmetric 4-bit (codes − 8), group size 32/64/128 or
//! per-channel; `k % 128 == 0`, `n % 64 == 0` (the shape rules of `marlin_check.rs`).
//!
//! Weights and scales are uploaded once ([`MarlinWeights`]) so a benchmark times the kernel
//! alone; [`Gpu::marlin_w4a16`] is the one-shot form `verify` uses.
//!
//! Two kernels: the register-direct small-batch kernel (`marlin_small_*`, m ≤ 16: each warp
//! loads its fragments straight from global memory, no shared-memory pipeline, see the second
//! half of marlin.cu), the default for m ≤ 8 and for m ≤ 16 below [`SMALL_WIDE_N`] columns; and
//! the cp.async stream kernel (`marlin_w4a16_*`, any m), the default above and selectable
//! everywhere ([`MarlinChoice`]) for comparison and tests. H200, group 128: 2.0–2.9× cuBLAS
//! BF16 at m = 1, 1.2–1.8× at m = 16 (docs/PERFORMANCE.md).
//!
//! The stream kernel partitions the tile grid into equal stripes, one per SM, and reduces a tile
//! column shared by several CTAs in a fixed order through per-column locks (see the .cu header).
//! The small kernel splits each 64-column strip's k range over `splits` CTAs that store partial
//! sums; the last CTA to arrive sums them in split order. The locks/counters and the partial
//! sums live in [`MarlinWorkspace`]; every complete launch leaves the locks at zero again, so one
//! zeroed allocation serves any number of launches on the stream.

use cudarc::driver::sys::{CUdevice_attribute as DevAttr, CUfunction_attribute as FnAttr};
use cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};
use half::f16;

use crate::blas::ElemType;
use crate::error::{check_len, KResult, KernelError};
use crate::gpu::Gpu;
use crate::launch::{config, launch};
use crate::nvrtc::KernelSource;
use crate::ops::GemmRun;
use crate::timing::median_micros;

/// `kernels/cuda/marlin.cu`.
pub const MARLIN_SOURCE: KernelSource = crate::kernel_source!("marlin");

/// Threads per CTA (8 warps); fixed by the kernel.
const THREADS: u32 = 256;

/// Group sizes the kernel reads (per-channel aside), as in vLLM's `MARLIN_SUPPORTED_GROUP_SIZES`.
pub const MARLIN_GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// One compiled tile configuration of the kernel (`marlin_w4a16_m{M}_n{N}_k{K}_s{S}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MarlinConfig {
    /// 16-row activation tiles per pass over the weights (1..=4): rows 16·m_blocks per pass;
    /// 0 is the swapped-operand form for m ≤ 8 (8 rows per pass, weights as the mma A operand).
    pub m_blocks: usize,
    /// 64-column chunks per tile: a tile is 64·n_chunks columns wide.
    pub n_chunks: usize,
    /// 16-deep k slices per tile: a tile (and pipeline stage) covers 16·k_tiles of k.
    pub k_tiles: usize,
    /// cp.async pipeline depth.
    pub stages: usize,
    /// CTAs per SM the kernel's registers were budgeted for (`__launch_bounds__`).
    pub min_blocks: usize,
    /// Whether weight copies ask L2 for 256-byte DRAM fetches (`cp.async…L2::256B`).
    pub prefetch: bool,
}

/// Every `(m_blocks, n_chunks, k_tiles, stages, min_blocks, prefetch)` instantiated in marlin.cu.
pub const MARLIN_CONFIGS: [(usize, usize, usize, usize, usize, bool); 19] = [
    (0, 2, 16, 3, 1, false),
    (0, 4, 16, 3, 1, true),
    (0, 1, 16, 4, 1, false),
    (0, 1, 8, 4, 1, false),
    (1, 2, 8, 4, 1, false),
    (2, 2, 8, 4, 1, false),
    (3, 2, 8, 4, 1, false),
    (4, 2, 8, 4, 1, false),
    (1, 4, 8, 4, 1, false),
    (2, 4, 8, 4, 1, false),
    (3, 4, 8, 4, 1, false),
    (4, 4, 8, 4, 1, false),
    (1, 1, 8, 4, 1, false),
    (2, 1, 8, 4, 1, false),
    (3, 1, 8, 4, 1, false),
    (4, 1, 8, 4, 1, false),
    (1, 2, 16, 3, 1, false),
    (1, 4, 16, 3, 1, true),
    (1, 2, 8, 4, 2, true),
];

impl MarlinConfig {
    pub const fn new(
        m_blocks: usize,
        n_chunks: usize,
        k_tiles: usize,
        stages: usize,
        min_blocks: usize,
        prefetch: bool,
    ) -> Self {
        MarlinConfig { m_blocks, n_chunks, k_tiles, stages, min_blocks, prefetch }
    }

    /// Every configuration compiled into marlin.cu.
    pub fn all() -> Vec<MarlinConfig> {
        MARLIN_CONFIGS
            .iter()
            .map(|&(m, n, k, s, o, p)| MarlinConfig::new(m, n, k, s, o, p))
            .collect()
    }

    /// The kernel's `extern "C"` name.
    pub fn kernel_name(&self) -> String {
        format!(
            "marlin_w4a16_m{}_n{}_k{}_s{}_o{}_p{}",
            self.m_blocks,
            self.n_chunks,
            self.k_tiles,
            self.stages,
            self.min_blocks,
            self.prefetch as u8
        )
    }

    /// Activation rows one pass over the weights covers.
    pub fn rows_per_pass(&self) -> usize {
        if self.m_blocks == 0 {
            8
        } else {
            16 * self.m_blocks
        }
    }

    pub fn tile_n(&self) -> usize {
        64 * self.n_chunks
    }

    pub fn tile_k(&self) -> usize {
        16 * self.k_tiles
    }

    /// Dynamic shared memory in bytes; mirrors the layout comment above `marlin_w4a16` in the
    /// .cu file (pipeline stages of A, B and scale tiles, then the k-warp reduction buffer).
    pub fn smem_bytes(&self) -> usize {
        let mb = self.m_blocks.max(1);
        let a = mb * 16 * self.tile_k() * 2;
        let b = self.k_tiles * self.n_chunks * 512;
        let s = (self.tile_k() / 32) * self.tile_n() * 2;
        let k_warps = 8 / self.n_chunks;
        let red = if k_warps > 1 { self.n_chunks * mb * 32 * 32 * 4 } else { 0 };
        self.stages * (a + b + s) + red
    }

    /// Whether this configuration's tile divides an `n × k` weight.
    pub fn fits(&self, n: usize, k: usize) -> bool {
        n % self.tile_n() == 0 && k % self.tile_k() == 0
    }
}

/// `m_blocks` for `m` rows: a pass covers up to 64 rows; more rows take several passes.
fn m_blocks_for(m: usize) -> usize {
    m.div_ceil(16).clamp(1, 4)
}

/// The default configuration for an `m`-row problem on an `n × k` weight, on a device with
/// `smem_optin` bytes of shared memory per block: the first preference that divides the weight
/// and fits the device. The preferences are the fastest of a sweep over every compiled
/// configuration on an H200 (kernels/examples/bench_marlin.rs `--sweep`, shapes 8192², 4096×11008,
/// 11008×4096, 8192×28672); every list ends in a tile that divides any legal Marlin shape.
pub fn default_config(m: usize, n: usize, k: usize, smem_optin: usize) -> Option<MarlinConfig> {
    // m ≤ 8: the swapped-operand kernels (m_blocks 0).
    let m_blocks = if m <= 8 { 0 } else { m_blocks_for(m) };
    let passes = m.div_ceil(16 * m_blocks.max(1));
    // (n_chunks, k_tiles, stages, min_blocks, prefetch)
    let prefs: &[(usize, usize, usize, usize, bool)] = match (m_blocks, passes) {
        (0, _) if n >= 16384 => &[(4, 16, 3, 1, true), (2, 16, 3, 1, false), (1, 8, 4, 1, false)],
        (0, _) if n <= 4096 => &[(1, 16, 4, 1, false), (2, 16, 3, 1, false), (1, 8, 4, 1, false)],
        (0, _) => &[(2, 16, 3, 1, false), (1, 8, 4, 1, false)],
        (1, _) if n >= 16384 => {
            &[(4, 16, 3, 1, true), (4, 8, 4, 1, false), (2, 8, 4, 1, false), (1, 8, 4, 1, false)]
        }
        (1, _) if n <= 4096 => &[(1, 8, 4, 1, false), (2, 16, 3, 1, false), (2, 8, 4, 1, false)],
        (1, _) => &[(2, 16, 3, 1, false), (2, 8, 4, 1, false), (1, 8, 4, 1, false)],
        (4, 1) if n >= 16384 => &[(4, 8, 4, 1, false), (2, 8, 4, 1, false), (1, 8, 4, 1, false)],
        (4, 1) if n <= 4096 => &[(1, 8, 4, 1, false)],
        (4, p) if p > 1 && n >= 8192 => {
            &[(4, 8, 4, 1, false), (2, 8, 4, 1, false), (1, 8, 4, 1, false)]
        }
        _ => &[(2, 8, 4, 1, false), (1, 8, 4, 1, false)],
    };
    prefs
        .iter()
        .map(|&(nc, kt, st, o, p)| MarlinConfig::new(m_blocks, nc, kt, st, o, p))
        .find(|c| c.fits(n, k) && c.smem_bytes() <= smem_optin)
}

/// How a Marlin problem is grouped along k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarlinGroups {
    /// One scale per output column (`[1, n]`, `scale_perm_single` layout).
    PerChannel,
    /// One scale per `g` rows of k (`[k/g, n]`, `scale_perm` layout), `g` in 32/64/128.
    Grouped(usize),
}

impl MarlinGroups {
    /// From the contract's `group_size`: `None` (or a group spanning all of k, which qtool's
    /// packer also stores with the per-channel permutation) is per-channel.
    pub fn from_group_size(group_size: Option<usize>, k: usize) -> KResult<MarlinGroups> {
        match group_size {
            None => Ok(MarlinGroups::PerChannel),
            Some(g) if g == k => Ok(MarlinGroups::PerChannel),
            Some(g) if MARLIN_GROUP_SIZES.contains(&g) && k % g == 0 => Ok(MarlinGroups::Grouped(g)),
            Some(g) => Err(KernelError::Unsupported(format!(
                "Marlin group size {g} with k = {k} (supported: 32, 64, 128 dividing k, or per-channel)"
            ))),
        }
    }

    pub fn num_groups(self, k: usize) -> usize {
        match self {
            MarlinGroups::PerChannel => 1,
            MarlinGroups::Grouped(g) => k / g,
        }
    }

    /// The kernel's `group_log2` argument: 0 selects the per-channel path.
    fn kernel_arg(self) -> i32 {
        match self {
            MarlinGroups::PerChannel => 0,
            MarlinGroups::Grouped(g) => g.trailing_zeros() as i32,
        }
    }
}

fn check_shape(n: usize, k: usize) -> KResult<()> {
    if k == 0 || k % 128 != 0 {
        return Err(KernelError::Shape(format!("Marlin needs k % 128 == 0, got k = {k}")));
    }
    if n == 0 || n % 64 != 0 {
        return Err(KernelError::Shape(format!("Marlin needs n % 64 == 0, got n = {n}")));
    }
    if i32::try_from(n.saturating_mul(k)).is_err() {
        return Err(KernelError::Shape(format!("Marlin weight {n}×{k} exceeds 32-bit indexing")));
    }
    Ok(())
}

/// A Marlin weight resident on the GPU.
#[derive(Debug)]
pub struct MarlinWeights {
    pub n: usize,
    pub k: usize,
    pub groups: MarlinGroups,
    b: CudaSlice<i32>,
    s: CudaSlice<u16>,
}

impl MarlinWeights {
    /// Uploads `b` (`[k/16, 2n]`) and the permuted `scales` (`[G, n]`) after checking them
    /// against the shape.
    pub fn upload(
        gpu: &Gpu,
        n: usize,
        k: usize,
        b: &[i32],
        scales: &[f16],
        group_size: Option<usize>,
    ) -> KResult<MarlinWeights> {
        check_shape(n, k)?;
        let groups = MarlinGroups::from_group_size(group_size, k)?;
        check_len("Marlin B", b.len(), k / 16 * 2 * n)?;
        check_len("Marlin scales", scales.len(), groups.num_groups(k) * n)?;
        let s: &[u16] = bytemuck::cast_slice(scales);
        Ok(MarlinWeights { n, k, groups, b: gpu.upload(b)?, s: gpu.upload(s)? })
    }

    /// Packed weight bytes the kernel streams per pass (for bandwidth figures).
    pub fn weight_bytes(&self) -> usize {
        self.k * self.n / 2
    }
}

/// The cross-CTA reduction state, sized for problems up to `max_m` rows: the stream kernel's
/// per-column locks (also the small kernel's per-strip arrival counters) and the small kernel's
/// per-split partial sums.
#[derive(Debug)]
pub struct MarlinWorkspace {
    locks: CudaSlice<i32>,
    partials: CudaSlice<f32>,
    max_m: usize,
    n: usize,
}

impl MarlinWorkspace {
    /// One lock per (8-row pass, 64-column chunk): enough for every configuration; partial sums
    /// for the largest split count [`max_splits`] allows at `min(max_m, 16)` rows.
    pub fn new(gpu: &Gpu, max_m: usize, n: usize) -> KResult<MarlinWorkspace> {
        let partials = max_m.min(SMALL_MAX_M) * small_partial_columns(n);
        Ok(MarlinWorkspace {
            locks: gpu.zeros(max_m.div_ceil(8) * (n / 64).max(1))?,
            partials: gpu.zeros(partials)?,
            max_m,
            n,
        })
    }
}

/// Largest m the small-batch kernel serves (two n8 batch groups).
pub const SMALL_MAX_M: usize = 16;

/// From this many output columns on, 9 ≤ m ≤ 16 runs the stream kernel by default: its
/// activation tiles cost less there than the small kernel's per-CTA activation copies
/// (H200: 8192×28672 at m = 16, 59 µs stream vs 69 µs small; the small kernel wins on the
/// narrower benchmark shapes).
pub const SMALL_WIDE_N: usize = 16384;

/// `(warps per CTA, ring depth in 128-deep k blocks)` of every compiled small-batch kernel.
pub const SMALL_VARIANTS: [(usize, usize); 3] = [(4, 1), (8, 1), (4, 2)];

/// Upper bound on the small kernel's k splits per strip.
pub const SMALL_MAX_SPLITS: usize = 16;

/// The most k splits a strip may have: at most [`SMALL_MAX_SPLITS`], at most one per 128-deep
/// k block, and at most 2048 (strip, split) pairs in all once split (which bounds the
/// partial-sum workspace).
pub fn max_splits(n: usize, k: usize) -> usize {
    let strips = (n / 64).max(1);
    SMALL_MAX_SPLITS.min((k / 128).max(1)).min((2048 / strips).max(1))
}

/// Partial-sum floats per batch row: `splits · n` for every `splits ≤ max_splits`.
fn small_partial_columns(n: usize) -> usize {
    (SMALL_MAX_SPLITS * n).min(n.max(2048 * 64))
}

/// One launch shape of the register-direct small-batch kernel
/// (`marlin_small_g{NG}_w{W}_d{D}_l{GL}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SmallConfig {
    /// Warps per CTA; `(warps, depth)` is one of [`SMALL_VARIANTS`].
    pub warps: usize,
    /// 128-deep k blocks each warp keeps in flight (register ring); registers are budgeted for
    /// 16 warps per SM at depth 1, 12 at depth 2.
    pub depth: usize,
    /// Adjacent 64-column strips per CTA (divides `warps`); they share one activation copy.
    pub spc: usize,
    /// k ranges per strip (CTAs per strip group), each a contiguous range of 128-deep k blocks.
    pub splits: usize,
}

impl SmallConfig {
    /// n8 batch groups of `m` rows: one mma per weight word for m ≤ 8, two for m ≤ 16.
    pub fn batch_groups(m: usize) -> usize {
        if m <= 8 {
            1
        } else {
            2
        }
    }

    /// CTAs per SM the variant's registers allow.
    pub fn max_ctas_per_sm(&self) -> usize {
        (if self.depth == 1 { 16 } else { 12 }) / self.warps
    }

    /// Dynamic shared memory in bytes; mirrors the comment above `marlin_small` in marlin.cu.
    pub fn smem_bytes(&self, m: usize, k: usize, groups: MarlinGroups) -> usize {
        let ng = Self::batch_groups(m);
        let m = m.clamp(1, SMALL_MAX_M);
        let ncb = (k / 128).div_ceil(self.splits.max(1));
        let x = m * (64 * ncb + 8) * 4;
        let red = self.warps * ng * 16 * 32 * 4;
        let s = match groups {
            MarlinGroups::PerChannel => 0,
            MarlinGroups::Grouped(g) => (128 * ncb / g) * 128 * self.spc,
        };
        x.max(red) + s
    }

    /// The kernel's `extern "C"` name for `m` rows and `groups`.
    pub fn kernel_name(&self, m: usize, groups: MarlinGroups) -> String {
        format!(
            "marlin_small_g{}_w{}_d{}_l{}",
            Self::batch_groups(m),
            self.warps,
            self.depth,
            groups.kernel_arg()
        )
    }

    /// CTAs of the launch for `n` columns.
    pub fn grid(&self, n: usize) -> usize {
        (n / 64).div_ceil(self.spc) * self.splits
    }

    /// Whether this shape is compiled and consistent with an `n × k` weight.
    pub fn valid(&self, n: usize, k: usize) -> bool {
        SMALL_VARIANTS.contains(&(self.warps, self.depth))
            && self.spc >= 1
            && self.warps % self.spc == 0
            && (1..=max_splits(n, k)).contains(&self.splits)
    }

    /// The launch shape for an `m × n × k` problem: 8 warps, ring depth 1, and the strips per
    /// CTA and split count with the lowest `waves · (k blocks per warp + 1) + [splits > 1]`
    /// (the +1 stands for the latency of a warp's first load, the last term for the cross-CTA
    /// reduction), where `resident(config, smem)` is the CTAs per SM that fit and `sms` the SM
    /// count; ties keep fewer strips per CTA, then fewer splits. A sweep of every variant on an
    /// H200 (bench_marlin `--sweep-small`) found 8 warps at depth 1 best or within 5 % on every
    /// benchmark shape; the 4-warp and depth-2 variants stay compiled for comparison.
    pub fn choose(
        m: usize,
        n: usize,
        k: usize,
        groups: MarlinGroups,
        sms: usize,
        smem_optin: usize,
        mut resident: impl FnMut(&SmallConfig, usize) -> usize,
    ) -> Option<SmallConfig> {
        let kb = k / 128;
        let mut best: Option<(usize, SmallConfig)> = None;
        for spc in [1, 2, 4] {
            for splits in 1..=max_splits(n, k) {
                let c = SmallConfig { warps: 8, depth: 1, spc, splits };
                if !c.valid(n, k) {
                    continue;
                }
                let smem = c.smem_bytes(m, k, groups);
                if smem > smem_optin {
                    continue;
                }
                let per_sm = resident(&c, smem).min(c.max_ctas_per_sm());
                if per_sm == 0 {
                    continue;
                }
                let waves = c.grid(n).div_ceil(sms.max(1) * per_sm);
                let per_warp = kb.div_ceil(splits).div_ceil(c.warps / spc);
                let cost = waves * (per_warp + 1) + usize::from(splits > 1);
                if best.is_none_or(|(b, _)| cost < b) {
                    best = Some((cost, c));
                }
            }
        }
        best.map(|(_, c)| c)
    }
}

/// Which kernel a [`MarlinPlan`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarlinChoice {
    /// The small-batch kernel for m ≤ 8, and for m ≤ 16 below [`SMALL_WIDE_N`] columns; the
    /// stream kernel's default configuration otherwise.
    Auto,
    /// The stream kernel, in this configuration or its default for the shape.
    Stream(Option<MarlinConfig>),
    /// The small-batch kernel (m ≤ 16), with this launch shape or the chosen one.
    Small(Option<SmallConfig>),
}

/// The kernel a plan resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarlinKernel {
    Stream(MarlinConfig),
    Small(SmallConfig),
}

/// A kernel resolved for one problem: function, grid and arguments other than buffers.
#[derive(Debug)]
pub struct MarlinPlan {
    pub kernel: MarlinKernel,
    pub grid: u32,
    /// Threads per CTA.
    block: u32,
    smem: u32,
    /// Stream kernel: tiles per CTA; small kernel: splits.
    iters: i32,
    /// Small kernel: strips per CTA.
    spc: i32,
    /// (m, n, k) the grid was computed for.
    shape: (usize, usize, usize),
    name: String,
    func: CudaFunction,
}

impl MarlinPlan {
    /// Resolves `config` (the stream kernel), or with `None` the default for the device
    /// ([`MarlinChoice::Auto`]).
    pub fn new(
        gpu: &Gpu,
        w: &MarlinWeights,
        m: usize,
        config: Option<MarlinConfig>,
    ) -> KResult<MarlinPlan> {
        match config {
            Some(c) => Self::choose(gpu, w, m, MarlinChoice::Stream(Some(c))),
            None => Self::choose(gpu, w, m, MarlinChoice::Auto),
        }
    }

    /// Resolves `choice` for `m` rows of `w`.
    pub fn choose(
        gpu: &Gpu,
        w: &MarlinWeights,
        m: usize,
        choice: MarlinChoice,
    ) -> KResult<MarlinPlan> {
        if m == 0 || i32::try_from(m.saturating_mul(w.k.max(w.n))).is_err() {
            return Err(KernelError::Shape(format!("Marlin m = {m} out of range")));
        }
        match choice {
            MarlinChoice::Auto if m <= 8 || (m <= SMALL_MAX_M && w.n < SMALL_WIDE_N) => {
                Self::small(gpu, w, m, None)
            }
            MarlinChoice::Auto => Self::stream(gpu, w, m, None),
            MarlinChoice::Stream(c) => Self::stream(gpu, w, m, c),
            MarlinChoice::Small(c) => Self::small(gpu, w, m, c),
        }
    }

    /// The kernel's name plus, for the small kernel, its launch shape (for tables and logs).
    pub fn label(&self) -> String {
        match self.kernel {
            MarlinKernel::Stream(_) => self.name.clone(),
            MarlinKernel::Small(c) => format!("{} s{}x{}", self.name, c.spc, c.splits),
        }
    }

    fn small(
        gpu: &Gpu,
        w: &MarlinWeights,
        m: usize,
        config: Option<SmallConfig>,
    ) -> KResult<MarlinPlan> {
        if m > SMALL_MAX_M {
            return Err(KernelError::Unsupported(format!(
                "the small-batch Marlin kernel serves m ≤ {SMALL_MAX_M}, got m = {m}"
            )));
        }
        let optin =
            gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        let sms = gpu.sm_count()? as usize;
        let config = match config {
            Some(c) => c,
            None => {
                // `choose` only considers 8 warps at depth 1: one function answers residency.
                let f = gpu.function(
                    &MARLIN_SOURCE,
                    &SmallConfig { warps: 8, depth: 1, spc: 1, splits: 1 }.kernel_name(m, w.groups),
                )?;
                let resident = |c: &SmallConfig, smem: usize| -> usize {
                    if smem > 48 * 1024
                        && f.set_attribute(
                            FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                            smem as i32,
                        )
                        .is_err()
                    {
                        return 0;
                    }
                    f.occupancy_max_active_blocks_per_multiprocessor(
                        c.warps as u32 * 32,
                        smem,
                        None,
                    )
                    .map_or(0, |r| r as usize)
                };
                SmallConfig::choose(m, w.n, w.k, w.groups, sms, optin, resident).ok_or_else(
                    || {
                        KernelError::Unsupported(format!(
                            "no small-batch Marlin launch fits m = {m}, k = {} in {optin} B of shared memory",
                            w.k
                        ))
                    },
                )?
            }
        };
        if !config.valid(w.n, w.k) {
            return Err(KernelError::Unsupported(format!(
                "{config:?}: (warps, depth) must be one of {SMALL_VARIANTS:?}, spc divide warps, splits in 1..={}",
                max_splits(w.n, w.k)
            )));
        }
        let smem = config.smem_bytes(m, w.k, w.groups);
        if smem > optin {
            return Err(KernelError::Unsupported(format!(
                "{config:?} needs {smem} B of shared memory at m = {m}, k = {}; the device allows {optin} B",
                w.k
            )));
        }
        let name = config.kernel_name(m, w.groups);
        let func = gpu.function(&MARLIN_SOURCE, &name)?;
        Ok(MarlinPlan {
            kernel: MarlinKernel::Small(config),
            grid: u32::try_from(config.grid(w.n))
                .map_err(|_| KernelError::Shape("Marlin grid too large".into()))?,
            block: config.warps as u32 * 32,
            smem: smem as u32,
            iters: config.splits as i32,
            spc: config.spc as i32,
            shape: (m, w.n, w.k),
            name,
            func,
        })
    }

    fn stream(
        gpu: &Gpu,
        w: &MarlinWeights,
        m: usize,
        config: Option<MarlinConfig>,
    ) -> KResult<MarlinPlan> {
        let optin =
            gpu.attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        let config = match config {
            Some(c) => c,
            None => default_config(m, w.n, w.k, optin).ok_or_else(|| {
                KernelError::Unsupported(format!(
                    "no Marlin tile fits n = {} in {optin} B of shared memory",
                    w.n
                ))
            })?,
        };
        if !MarlinConfig::all().contains(&config) {
            return Err(KernelError::Unsupported(format!(
                "{config:?} is not compiled into marlin.cu"
            )));
        }
        if config.smem_bytes() > optin {
            return Err(KernelError::Unsupported(format!(
                "{} needs {} B of shared memory, the device allows {optin} B",
                config.kernel_name(),
                config.smem_bytes()
            )));
        }
        if !config.fits(w.n, w.k) {
            return Err(KernelError::Shape(format!(
                "{}: tile {}×{} does not divide n = {}, k = {}",
                config.kernel_name(),
                config.tile_n(),
                config.tile_k(),
                w.n,
                w.k
            )));
        }
        // Every CTA of the grid must be resident at once (a CTA may wait on a higher one's
        // lock), so the grid never exceeds what the occupancy calculator says fits.
        let func = gpu.function(&MARLIN_SOURCE, &config.kernel_name())?;
        let smem = config.smem_bytes();
        func.set_attribute(FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
        let resident =
            func.occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)? as usize;
        if resident == 0 {
            return Err(KernelError::Unsupported(format!(
                "{} cannot be resident on this GPU",
                config.kernel_name()
            )));
        }
        let sms = gpu.sm_count()? as usize * resident.min(config.min_blocks);
        let passes = m.div_ceil(config.rows_per_pass());
        let total = passes * (w.n / config.tile_n()) * (w.k / config.tile_k());
        let (grid, iters) = stripes(total, sms);
        Ok(MarlinPlan {
            kernel: MarlinKernel::Stream(config),
            grid: grid as u32,
            block: THREADS,
            smem: smem as u32,
            iters: iters as i32,
            spc: 0,
            shape: (m, w.n, w.k),
            name: config.kernel_name(),
            func,
        })
    }

    /// Launches `out[m, n] = x[m, k] · Wᵀ` (f32 out, every element written).
    pub fn launch(
        &self,
        gpu: &Gpu,
        w: &MarlinWeights,
        ws: &mut MarlinWorkspace,
        x: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
        m: usize,
    ) -> KResult<()> {
        if m > ws.max_m || ws.n != w.n {
            return Err(KernelError::Shape(format!(
                "Marlin workspace for {}×{} cannot serve m = {m}, n = {}",
                ws.max_m, ws.n, w.n
            )));
        }
        if (m, w.n, w.k) != self.shape {
            return Err(KernelError::Shape(format!(
                "{} was planned for m×n×k = {:?}, launched with {:?}",
                self.name,
                self.shape,
                (m, w.n, w.k)
            )));
        }
        check_len("Marlin x", x.len(), m * w.k)?;
        check_len("Marlin out", out.len(), m * w.n)?;
        let (mi, ni, ki, gi) = (m as i32, w.n as i32, w.k as i32, w.groups.kernel_arg());
        let mut args = gpu.stream().launch_builder(&self.func);
        match self.kernel {
            MarlinKernel::Stream(_) => {
                // marlin_w4a16_*(A, B, S, C, locks, m, n, k, group_log2, iters)
                args.arg(x).arg(&w.b).arg(&w.s).arg(out).arg(&mut ws.locks);
                args.arg(&mi).arg(&ni).arg(&ki).arg(&gi).arg(&self.iters);
            }
            MarlinKernel::Small(c) => {
                if self.name != c.kernel_name(m, w.groups) {
                    return Err(KernelError::Shape(format!(
                        "{} was planned for another group size",
                        self.name
                    )));
                }
                if c.splits > 1 && ws.partials.len() < c.splits * m * w.n {
                    return Err(KernelError::Shape(format!(
                        "Marlin workspace holds {} partial sums, {} needs {}",
                        ws.partials.len(),
                        self.label(),
                        c.splits * m * w.n
                    )));
                }
                // marlin_small_*(A, B, S, C, partial, counters, m, n, k, splits, spc)
                args.arg(x).arg(&w.b).arg(&w.s).arg(out).arg(&mut ws.partials).arg(&mut ws.locks);
                args.arg(&mi).arg(&ni).arg(&ki).arg(&self.iters).arg(&self.spc);
            }
        }
        let cfg = config((self.grid, 1, 1), (self.block, 1, 1), self.smem);
        launch(gpu, &self.func, &self.name, args, cfg)
    }
}

/// Stripe partition of `total` tiles over at most `sms` CTAs: `iters` consecutive tiles each,
/// and the number of CTAs that actually get tiles.
pub fn stripes(total: usize, sms: usize) -> (usize, usize) {
    let grid0 = sms.clamp(1, total.max(1));
    let iters = total.div_ceil(grid0).max(1);
    (total.div_ceil(iters).max(1), iters)
}

/// cuBLAS BF16 exactly as `Gpu::gemm_bf16` calls it (BF16 in, FP32 accumulate, BF16 out), on
/// device-resident operands: `x [m, k]` and `w [n, k]` as bf16 bits, `out` 2·m·n bytes. The
/// Marlin benchmark queues it exactly like its own launches so both sides are timed the same way.
pub fn cublas_bf16_device(
    gpu: &Gpu,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    out: &mut CudaSlice<u8>,
    (m, n, k): (usize, usize, usize),
) -> KResult<()> {
    check_len("bf16 x", x.len(), m * k)?;
    check_len("bf16 w", w.len(), n * k)?;
    check_len("bf16 out bytes", out.len(), m * n * 2)?;
    crate::blas::gemm_16(gpu, x, w, ElemType::Bf16, out, ElemType::Bf16, (m, n, k))
}

impl Gpu {
    /// The Marlin W4A16 GEMM on the bytes `qtool repack --target marlin` writes: `x [m, k]`
    /// f16, `b [k/16, 2n]`, permuted `scales [G, n]`, `group_size` `None` for per-channel.
    /// Returns `out [m, n] = x · Wᵀ` in f32 and the median kernel time over `reps` runs.
    #[allow(clippy::too_many_arguments)]
    pub fn marlin_w4a16(
        &self,
        x: &[f16],
        m: usize,
        n: usize,
        k: usize,
        b: &[i32],
        scales: &[f16],
        group_size: Option<usize>,
        reps: usize,
    ) -> KResult<GemmRun> {
        let w = MarlinWeights::upload(self, n, k, b, scales, group_size)?;
        check_len("Marlin x", x.len(), m.saturating_mul(k))?;
        let plan = MarlinPlan::new(self, &w, m, None)?;
        let mut ws = MarlinWorkspace::new(self, m, n)?;
        let xd = self.upload::<u16>(bytemuck::cast_slice(x))?;
        let mut out = self.zeros::<f32>(m * n)?;
        let micros =
            median_micros(self, reps, || plan.launch(self, &w, &mut ws, &xd, &mut out, m))?;
        let out = self.download(&out)?;
        let backend = format!("qtool marlin w4a16 ({}, {} CTAs)", plan.label(), plan.grid);
        Ok(GemmRun { out: out[..m * n].to_vec(), micros, backend })
    }
}

#[cfg(test)]
mod tests {
    //! CPU checks of the two index contracts the kernel relies on: which (k, n) element and
    //! which scale each lane's register holds, and that the stripes' lock order can never
    //! deadlock. The GPU comparison lives in kernels/tests/marlin.rs.
    use super::*;
    use qtool_quantizers::int::marlin::{marlin_dequantize, pack_marlin};
    use qtool_quantizers::int::marlin_check::MarlinKind;
    use qtool_quantizers::int::rtn::{quantize, Bits, Convention, GroupSize, RtnConfig};

    fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n * k)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// What the kernel computes for weight element (kk, c) from the words and scales alone, by
    /// walking lanes/words/nibbles exactly as `compute_stage` and `dequant_word` do.
    fn emulate_kernel_weights(
        b: &[i32],
        s: &[f32],
        n: usize,
        k: usize,
        groups: MarlinGroups,
    ) -> Vec<f32> {
        let mut w = vec![f32::NAN; n * k];
        let row_words = 2 * n;
        for kt in 0..k / 16 {
            for chunk in 0..n / 64 {
                for lane in 0..32 {
                    let (gid, t) = (lane / 4, lane % 4);
                    let words = &b[kt * row_words + chunk * 128 + lane * 4..][..4];
                    for (wi, &word) in words.iter().enumerate() {
                        let q = word as u32;
                        // f[0] = (nibble 0, nibble 4), f[1] = (1, 5), f[2] = (2, 6), f[3] = (3, 7)
                        for (reg, (lo_sh, hi_sh)) in
                            [(0, 16), (4, 20), (8, 24), (12, 28)].into_iter().enumerate()
                        {
                            let sub = reg / 2; // n8 subtile inside tile wi
                            let krow = 2 * t + 8 * (reg % 2); // b0b1: rows 2t, 2t+1; b2b3: +8
                            let col = chunk * 64 + 16 * wi + 8 * sub + gid;
                            for (h, sh) in [lo_sh, hi_sh].into_iter().enumerate() {
                                let code = ((q >> sh) & 0xf) as f32 - 8.0;
                                let kk = kt * 16 + krow + h;
                                let scale = match groups {
                                    MarlinGroups::Grouped(g) => {
                                        // lane's 8 scales at 8·gid.., entry 2·wi + sub
                                        s[(kk / g) * n + chunk * 64 + 8 * gid + 2 * wi + sub]
                                    }
                                    MarlinGroups::PerChannel => {
                                        // output column col' = chunk·64 + 8j + 2t' + e is
                                        // found at 32h + 8t' + 2(j % 4) + e, h = j / 4
                                        let j = 2 * wi + sub;
                                        let (tt, e) = ((col % 8) / 2, col % 2);
                                        s[chunk * 64 + 32 * (j / 4) + 8 * tt + 2 * (j % 4) + e]
                                    }
                                };
                                assert!(
                                    w[col * k + kk].is_nan(),
                                    "element ({col}, {kk}) decoded twice"
                                );
                                w[col * k + kk] = code * scale;
                            }
                        }
                    }
                }
            }
        }
        w
    }

    fn check_fragments(n: usize, k: usize, group: GroupSize) {
        let cfg = RtnConfig {
            bits: Bits::B4,
            group_size: group,
            symmetric: true,
            convention: Convention::Gptq,
        };
        let q = quantize(&weights(n, k, 7), n, k, &cfg, None).unwrap();
        let t = pack_marlin(&q, MarlinKind::Gptq).unwrap();
        let reference = marlin_dequantize(&t).unwrap();
        let gs = match group {
            GroupSize::PerChannel => None,
            GroupSize::Size(g) => Some(g),
        };
        let groups = MarlinGroups::from_group_size(gs, k).unwrap();
        let got = emulate_kernel_weights(&t.b, &t.s, n, k, groups);
        for (i, (a, r)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(a.to_bits(), r.to_bits(), "element ({}, {}) {a} vs {r}", i / k, i % k);
        }
    }

    #[test]
    fn lane_fragments_decode_to_the_cpu_dequantizer_grouped() {
        for g in MARLIN_GROUP_SIZES {
            check_fragments(192, 256, GroupSize::Size(g));
        }
    }

    #[test]
    fn lane_fragments_decode_to_the_cpu_dequantizer_per_channel() {
        check_fragments(128, 256, GroupSize::PerChannel);
        // group == k: stored with the per-channel permutation
        check_fragments(64, 128, GroupSize::Size(128));
    }

    /// The kernel's slice bookkeeping, replayed for every CTA.
    #[test]
    fn stripes_cover_each_tile_once_and_locks_never_wait_on_later_work() {
        for (k_tiles, cols, sms) in [
            (64, 64, 132),
            (32, 86, 132),
            (86, 32, 132),
            (1, 3, 132),
            (64, 224, 114),
            (8, 2, 7),
            (3, 5, 4),
        ] {
            let total = k_tiles * cols;
            let (grid, iters) = stripes(total, sms);
            assert!(grid <= sms);
            let mut seen = vec![0u32; total];
            // per column: slice_idx → (block, is that block's first slice)
            let mut order: Vec<Vec<(usize, usize, bool)>> = vec![Vec::new(); cols];
            for b in 0..grid {
                let (begin, end) = (b * iters, ((b + 1) * iters).min(total));
                assert!(begin < end, "CTA {b} of {grid} got no tiles");
                let mut u = begin;
                let mut first = true;
                while u < end {
                    let col = u / k_tiles;
                    let stop = end.min((col + 1) * k_tiles);
                    for s in &mut seen[u..stop] {
                        *s += 1;
                    }
                    let b_first = (col * k_tiles) / iters;
                    let b_last = ((col + 1) * k_tiles - 1) / iters;
                    assert!((b_first..=b_last).contains(&b));
                    order[col].push((b_last - b, b, first));
                    first = false;
                    u = stop;
                }
            }
            assert!(seen.iter().all(|&s| s == 1));
            for (col, slices) in order.iter_mut().enumerate() {
                slices.sort();
                for (i, &(idx, b, _)) in slices.iter().enumerate() {
                    assert_eq!(idx, i, "column {col}");
                    // slice i waits for slice i − 1, which must be another CTA's first slice
                    // (done before that CTA can wait on anything else): no cycle is possible
                    if i > 0 {
                        let (_, prev_b, prev_first) = slices[i - 1];
                        assert!(
                            prev_first && prev_b > b,
                            "column {col}: CTA {b} waits on CTA {prev_b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn default_configs_divide_the_benchmark_shapes() {
        for (n, k) in
            [(8192, 8192), (11008, 4096), (4096, 11008), (28672, 8192), (64, 128), (192, 384)]
        {
            for m in [1, 7, 16, 33, 64, 128] {
                let c = default_config(m, n, k, 227 * 1024).unwrap();
                assert!(c.fits(n, k), "{c:?} n = {n}");
                assert_eq!(c.m_blocks, if m <= 8 { 0 } else { m_blocks_for(m) });
                assert!(MarlinConfig::all().contains(&c));
            }
        }
        // a 99 KiB device (sm_86/89) still gets a configuration
        for m in [1, 64] {
            assert!(default_config(m, 8192, 8192, 99 * 1024).is_some());
        }
    }

    /// `MARLIN_CONFIGS` lists exactly the entry points the .cu instantiates.
    #[test]
    fn configs_match_the_kernel_entries() {
        let nums = |args: &str| -> Vec<usize> {
            args.split(',').map(|a| a.trim().parse().unwrap()).collect()
        };
        let mut entries = Vec::new();
        for line in
            MARLIN_SOURCE.code.lines().filter(|l| !l.starts_with("#define") && !l.starts_with(' '))
        {
            if let Some(args) =
                line.strip_prefix("MARLIN_ENTRY_MB(").and_then(|r| r.strip_suffix(')'))
            {
                let v = nums(args);
                entries.extend(
                    (1..=4).map(|mb| {
                        MarlinConfig::new(mb, v[0], v[1], v[2], 1, v[3] == 1).kernel_name()
                    }),
                );
            } else if let Some(args) =
                line.strip_prefix("MARLIN_ENTRY(").and_then(|r| r.strip_suffix(')'))
            {
                let v = nums(args);
                entries
                    .push(MarlinConfig::new(v[0], v[1], v[2], v[3], v[4], v[5] == 1).kernel_name());
            }
        }
        let mut names: Vec<String> = MarlinConfig::all().iter().map(|c| c.kernel_name()).collect();
        entries.sort();
        names.sort();
        assert_eq!(entries, names);
        assert!(MARLIN_SOURCE
            .code
            .contains("marlin_w4a16_m##MB##_n##NCH##_k##KT##_s##ST##_o##OCC##_p##PF"));
    }

    /// H200-like residency: registers allow `max_ctas_per_sm`, 228 KiB of shared memory per SM
    /// with 1 KiB reserved per CTA.
    fn h200_resident(c: &SmallConfig, smem: usize) -> usize {
        c.max_ctas_per_sm().min(228 * 1024 / (smem + 1024))
    }

    #[test]
    fn small_launch_shapes_fill_the_gpu_and_fit_the_workspace() {
        for (k, n) in [(8192, 8192), (4096, 11008), (11008, 4096), (8192, 28672), (128, 64)] {
            for m in [1, 8, 9, 16] {
                for g in [
                    MarlinGroups::Grouped(128),
                    MarlinGroups::Grouped(32),
                    MarlinGroups::PerChannel,
                ] {
                    let c = SmallConfig::choose(m, n, k, g, 132, 227 * 1024, h200_resident)
                        .expect("a launch shape");
                    assert!(c.valid(n, k), "{c:?}");
                    assert!(c.smem_bytes(m, k, g) <= 227 * 1024);
                    assert!(c.splits * n <= small_partial_columns(n), "{c:?} n = {n}");
                    // the big shapes get at least one CTA per SM
                    if n * k >= 8192 * 4096 {
                        assert!(c.grid(n) >= 132, "{c:?} k = {k} n = {n} m = {m}");
                    }
                }
            }
        }
        // 99 KiB devices still get one
        let small_smem =
            |c: &SmallConfig, s: usize| (c.max_ctas_per_sm() * 3 / 4).min(100 * 1024 / (s + 1024));
        let g = MarlinGroups::Grouped(32);
        assert!(SmallConfig::choose(16, 4096, 11008, g, 84, 99 * 1024, small_smem).is_some());
    }

    #[test]
    fn small_shared_memory_matches_the_kernel_layout() {
        let c = SmallConfig { warps: 8, depth: 1, spc: 1, splits: 2 };
        // k = 8192: 32 blocks per CTA; 3 rows × (64·32 + 8) words; scales 32 groups × 128 B
        assert_eq!(c.smem_bytes(3, 8192, MarlinGroups::Grouped(128)), 3 * 2056 * 4 + 32 * 128);
        // m = 16; group 32 quadruples the scale rows, 2 strips per CTA double them
        let c2 = SmallConfig { spc: 2, ..c };
        assert_eq!(
            c2.smem_bytes(16, 8192, MarlinGroups::Grouped(32)),
            16 * 2056 * 4 + 2 * 128 * 128
        );
        // one block per CTA: the warp reduction buffer is larger than the activations
        let c = SmallConfig { warps: 8, depth: 1, spc: 1, splits: 4 };
        assert_eq!(c.smem_bytes(16, 512, MarlinGroups::PerChannel), 8 * 2 * 16 * 32 * 4);
        assert_eq!(c.smem_bytes(1, 512, MarlinGroups::PerChannel), 8 * 16 * 32 * 4);
        // a ragged last strip group still gets a CTA
        assert_eq!(SmallConfig { warps: 4, depth: 1, spc: 4, splits: 3 }.grid(5 * 64), 6);
    }

    /// The small kernel's names are exactly the `MARLIN_SMALL_ENTRY_GL` instantiations.
    #[test]
    fn small_configs_match_the_kernel_entries() {
        let mut entries = Vec::new();
        for line in MARLIN_SOURCE.code.lines() {
            if let Some(args) =
                line.strip_prefix("MARLIN_SMALL_ENTRY_GL(").and_then(|r| r.strip_suffix(')'))
            {
                let v: Vec<usize> = args.split(',').map(|a| a.trim().parse().unwrap()).collect();
                for gl in [0, 5, 6, 7] {
                    entries.push(format!("marlin_small_g{}_w{}_d{}_l{gl}", v[0], v[1], v[2]));
                }
            }
        }
        let mut names = Vec::new();
        for m in [1, 16] {
            for (warps, depth) in SMALL_VARIANTS {
                for g in [
                    MarlinGroups::PerChannel,
                    MarlinGroups::Grouped(32),
                    MarlinGroups::Grouped(64),
                    MarlinGroups::Grouped(128),
                ] {
                    names.push(SmallConfig { warps, depth, spc: 1, splits: 1 }.kernel_name(m, g));
                }
            }
        }
        entries.sort();
        names.sort();
        assert_eq!(entries, names);
    }

    #[test]
    fn group_sizes() {
        assert_eq!(MarlinGroups::from_group_size(None, 256).unwrap(), MarlinGroups::PerChannel);
        assert_eq!(
            MarlinGroups::from_group_size(Some(128), 128).unwrap(),
            MarlinGroups::PerChannel
        );
        assert_eq!(
            MarlinGroups::from_group_size(Some(64), 256).unwrap(),
            MarlinGroups::Grouped(64)
        );
        assert!(MarlinGroups::from_group_size(Some(16), 256).is_err());
        assert!(MarlinGroups::from_group_size(Some(96), 384).is_err());
    }
}
