//! cuBLAS and cuBLASLt calls: the BF16 baseline GEMM and the FP8 scaled GEMM.
//!
//! Every GEMM here computes qtool's layer product `out[m, n] = x[m, k] · W[n, k]ᵀ` with all
//! matrices row-major. In cuBLAS's column-major terms that is `outᵀ[n, m] = W · xᵀ`: A is W seen
//! as a column-major `k × n` matrix (lda = k) used transposed, B is x seen as column-major
//! `k × m` (ldb = k), D is column-major `n × m` (ldd = n), i.e. the row-major `[m, n]` result.
//! This is also the "TN" form cuBLASLt requires for FP8 operands.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as cb;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::error::{KResult, KernelError};
use crate::gpu::Gpu;

/// cuBLASLt's recommended workspace on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// How many heuristic candidates cuBLASLt is asked for; [`LtPlan::autotune`] times them all
/// once per problem (the top-1 guess is often not the fastest at large shapes).
const HEURISTIC_CANDIDATES: usize = 32;

/// The cuBLAS and cuBLASLt handles of one [`Gpu`], plus the cuBLASLt workspace.
pub(crate) struct Blas {
    blas: cudarc::cublas::CudaBlas,
    lt: lt::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// Autotuned cuBLASLt algorithm per problem (types, scale mode, accumulation, shape): timed
    /// once per process, as runtimes tune once at startup.
    algo_cache: Mutex<HashMap<String, lt::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handles are only used from calls that take `&Gpu`, on its single stream; cuBLAS
// handles may be shared across threads as long as calls are not concurrent on one stream, which
// `Gpu`'s users serialize (one operation at a time per GPU).
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by cublasLtCreate and is destroyed once.
        let _ = unsafe { cudarc::cublaslt::result::destroy_handle(self.lt) };
    }
}

impl Blas {
    /// Creates both handles after checking their libraries load (cudarc panics otherwise).
    pub(crate) fn new(gpu: &Gpu) -> Result<Blas, String> {
        crate::libs::cublas_libraries()?;
        let blas = cudarc::cublas::CudaBlas::new(gpu.stream.clone())
            .map_err(|e| format!("cublasCreate: {e:?}"))?;
        let lt = cudarc::cublaslt::result::create_handle()
            .map_err(|e| format!("cublasLtCreate: {e:?}"))?;
        let workspace = gpu
            .stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| format!("cuBLASLt workspace: {e}"))?;
        Ok(Blas { blas, lt, workspace, algo_cache: Mutex::new(HashMap::new()) })
    }
}

/// Element type of a GEMM operand or result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ElemType {
    Bf16,
    F16,
    F32,
    E4M3,
    E5M2,
}

impl ElemType {
    fn cuda(self) -> cb::cudaDataType {
        match self {
            ElemType::Bf16 => cb::cudaDataType::CUDA_R_16BF,
            ElemType::F16 => cb::cudaDataType::CUDA_R_16F,
            ElemType::F32 => cb::cudaDataType::CUDA_R_32F,
            ElemType::E4M3 => cb::cudaDataType::CUDA_R_8F_E4M3,
            ElemType::E5M2 => cb::cudaDataType::CUDA_R_8F_E5M2,
        }
    }
    fn lt(self) -> lt::cudaDataType {
        match self {
            ElemType::Bf16 => lt::cudaDataType::CUDA_R_16BF,
            ElemType::F16 => lt::cudaDataType::CUDA_R_16F,
            ElemType::F32 => lt::cudaDataType::CUDA_R_32F,
            ElemType::E4M3 => lt::cudaDataType::CUDA_R_8F_E4M3,
            ElemType::E5M2 => lt::cudaDataType::CUDA_R_8F_E5M2,
        }
    }
}

fn dim(v: usize, what: &str) -> KResult<i32> {
    i32::try_from(v)
        .map_err(|_| KernelError::Shape(format!("{what} = {v} exceeds cuBLAS's 32-bit dimensions")))
}

/// cuBLAS `GemmEx`: `out[m, n] = x[m, k] · w[n, k]ᵀ` with 16-bit inputs of type `in_ty` (BF16
/// or F16), FP32 accumulation and `out_ty` (BF16, F16 or F32) output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_16<O>(
    gpu: &Gpu,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    in_ty: ElemType,
    out: &mut CudaSlice<O>,
    out_ty: ElemType,
    (m, n, k): (usize, usize, usize),
) -> KResult<()> {
    let blas = gpu.blas()?;
    let (mi, ni, ki) = (dim(m, "m")?, dim(n, "n")?, dim(k, "k")?);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = gpu.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let (op, _go) = out.device_ptr_mut(stream);
    // SAFETY: the buffers hold m·k, n·k and m·n elements of the stated types (checked by the
    // callers), the handle is bound to this stream, and alpha/beta are host f32 as the default
    // pointer mode and compute type 32F expect.
    let status = unsafe {
        cb::cublasGemmEx(
            *blas.blas.handle(),
            cb::cublasOperation_t::CUBLAS_OP_T,
            cb::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            wp as *const c_void,
            in_ty.cuda(),
            ki,
            xp as *const c_void,
            in_ty.cuda(),
            ki,
            &beta as *const f32 as *const c_void,
            op as *mut c_void,
            out_ty.cuda(),
            ni,
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    if status != cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(KernelError::Blas(format!(
            "cublasGemmEx ({in_ty:?}, m={m} n={n} k={k}): {status:?}"
        )));
    }
    Ok(())
}

/// How cuBLASLt applies the weight (A) scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LtScale {
    /// One f32 for the whole matrix.
    Scalar,
    /// One f32 per output channel (`OUTER_VEC_32F`, cuBLAS 12.9+). cuBLASLt requires both A and
    /// B in this mode, so `b_scale` is then a vector of m (one activation scale per row of x).
    OuterVec,
    /// One f32 per output channel as a device alpha vector over D's rows
    /// (`CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST`); `a_scale` is then that vector and
    /// the A scale itself is left at its default of 1.
    AlphaVec,
}

/// A prepared cuBLASLt FP8 matmul: descriptors plus the chosen algorithm. Reused across the
/// timed repetitions so only `cublasLtMatmul` itself is timed.
pub(crate) struct LtPlan {
    blas: Arc<Blas>,
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    d: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
    /// cuBLASLt's top heuristic candidates (best first); [`LtPlan::autotune`] picks among them.
    candidates: Vec<lt::cublasLtMatmulAlgo_t>,
    /// Device pointer of the alpha vector ([`LtScale::AlphaVec`]), else host alpha = 1.
    alpha_vec: Option<u64>,
    /// Key of this problem in [`Blas::algo_cache`].
    key: String,
    /// A (weights), B (activations) and D element types.
    types: (ElemType, ElemType, ElemType),
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan and is destroyed once.
        unsafe {
            let _ = cudarc::cublaslt::result::destroy_matrix_layout(self.a);
            let _ = cudarc::cublaslt::result::destroy_matrix_layout(self.b);
            let _ = cudarc::cublaslt::result::destroy_matrix_layout(self.d);
            let _ = cudarc::cublaslt::result::destroy_matmul_desc(self.desc);
        }
    }
}

fn lt_err(what: &str) -> impl Fn(cudarc::cublaslt::result::CublasError) -> KernelError + '_ {
    move |e| KernelError::Blas(format!("{what}: {e:?}"))
}

/// # Safety
/// `value` must be the attribute's documented type.
unsafe fn set_desc<T>(
    desc: lt::cublasLtMatmulDesc_t,
    attr: lt::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> KResult<()> {
    // SAFETY: per the function contract; `value` is live for the call.
    unsafe {
        cudarc::cublaslt::result::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(lt_err("cublasLtMatmulDescSetAttribute"))
}

impl LtPlan {
    /// Plans `out[m, n] (out_ty) = (a_scale ⊙ W[n, k]) · (b_scale · x[m, k])ᵀ` with FP8 operands.
    /// `a_scale`/`b_scale` are device pointers to f32 (a vector of n for [`LtScale::OuterVec`]).
    /// Fails with [`KernelError::Blas`] when cuBLASLt has no algorithm for the combination.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fp8(
        gpu: &Gpu,
        w_ty: ElemType,
        x_ty: ElemType,
        out_ty: ElemType,
        a_mode: LtScale,
        a_scale: u64,
        b_scale: u64,
        fast_accum: bool,
        (m, n, k): (usize, usize, usize),
    ) -> KResult<LtPlan> {
        LtPlan::new(
            gpu,
            w_ty,
            x_ty,
            out_ty,
            Some((a_mode, a_scale, b_scale)),
            fast_accum,
            (m, n, k),
        )
    }

    /// Plans the BF16 baseline through cuBLASLt: `out[m, n] (out_ty) = W[n, k] · x[m, k]ᵀ`,
    /// FP32 accumulation, so it gets the same heuristic search and autotuning as FP8.
    pub(crate) fn bf16(
        gpu: &Gpu,
        out_ty: ElemType,
        (m, n, k): (usize, usize, usize),
    ) -> KResult<LtPlan> {
        LtPlan::new(gpu, ElemType::Bf16, ElemType::Bf16, out_ty, None, false, (m, n, k))
    }

    /// `scales`: FP8 scale mode plus the A and B scale device pointers (None for 16-bit inputs).
    #[allow(clippy::too_many_arguments)]
    fn new(
        gpu: &Gpu,
        w_ty: ElemType,
        x_ty: ElemType,
        out_ty: ElemType,
        scales: Option<(LtScale, u64, u64)>,
        fast_accum: bool,
        (m, n, k): (usize, usize, usize),
    ) -> KResult<LtPlan> {
        let blas = gpu.blas()?;
        let a_mode = scales.map(|s| s.0);
        let desc = cudarc::cublaslt::result::create_matmul_desc(
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_err("cublasLtMatmulDescCreate"))?;
        let layout = |ty: ElemType, rows: usize, cols: usize, ld: usize| {
            cudarc::cublaslt::result::create_matrix_layout(
                ty.lt(),
                rows as u64,
                cols as u64,
                ld as i64,
            )
            .map_err(lt_err("cublasLtMatrixLayoutCreate"))
        };
        // Build the plan first so Drop cleans up whatever was created if a later step fails.
        let a = layout(w_ty, k, n, k);
        let b = layout(x_ty, k, m, k);
        let d = layout(out_ty, n, m, n);
        let (a, b, d) = match (a, b, d) {
            (Ok(a), Ok(b), Ok(d)) => (a, b, d),
            (a, b, d) => {
                // SAFETY: destroy only what was created; each once.
                unsafe {
                    for l in
                        [a.as_ref().ok(), b.as_ref().ok(), d.as_ref().ok()].into_iter().flatten()
                    {
                        let _ = cudarc::cublaslt::result::destroy_matrix_layout(*l);
                    }
                    let _ = cudarc::cublaslt::result::destroy_matmul_desc(desc);
                }
                return Err(a.err().or(b.err()).or(d.err()).expect("one failed"));
            }
        };
        let mut plan = LtPlan {
            blas: blas.clone(),
            desc,
            a,
            b,
            d,
            // SAFETY: an all-zero algo is a valid placeholder; it is overwritten below before use.
            algo: unsafe { std::mem::zeroed() },
            candidates: Vec::new(),
            alpha_vec: scales.and_then(|(mode, a, _)| (mode == LtScale::AlphaVec).then_some(a)),
            key: format!("{w_ty:?}/{x_ty:?}/{out_ty:?}/{a_mode:?}/fa{fast_accum}/{m}x{n}x{k}"),
            types: (w_ty, x_ty, out_ty),
        };
        use lt::cublasLtMatmulDescAttributes_t as A;
        // SAFETY: each value has the type the attribute documents (cublasOperation_t, pointers
        // as `const void*`, scale modes as int32, fast-accum as int8).
        unsafe {
            set_desc(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSA,
                &(cb::cublasOperation_t::CUBLAS_OP_T as i32),
            )?;
            set_desc(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSB,
                &(cb::cublasOperation_t::CUBLAS_OP_N as i32),
            )?;
            if let Some((a_mode, a_scale, b_scale)) = scales {
                let (ap, bp) = (a_scale as *const c_void, b_scale as *const c_void);
                if a_mode == LtScale::AlphaVec {
                    let mode = lt::cublasLtPointerMode_t::CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST
                        as i32;
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_POINTER_MODE, &mode)?;
                } else {
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ap)?;
                }
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bp)?;
                if a_mode == LtScale::OuterVec {
                    // The cuBLAS docs require A and B both in outer-vector mode (a vector of M
                    // for A = our n output channels, of N for B = our m rows).
                    let mode =
                        lt::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
                            as i32;
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode)?;
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode)?;
                }
                // Fast accumulation is what FP8 runtimes use on Hopper (CUTLASS `FP8FastAccum`
                // schedules); without it cuBLASLt periodically promotes partial sums to FP32.
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &(fast_accum as i8))?;
            }
        }
        plan.candidates = plan.heuristic()?;
        plan.algo = plan.candidates[0];
        Ok(plan)
    }

    /// Up to [`HEURISTIC_CANDIDATES`] algorithms cuBLASLt proposes, best guess first.
    fn heuristic(&self) -> KResult<Vec<lt::cublasLtMatmulAlgo_t>> {
        const WANT: usize = HEURISTIC_CANDIDATES;
        let pref = cudarc::cublaslt::result::create_matmul_pref()
            .map_err(lt_err("cublasLtMatmulPreferenceCreate"))?;
        let ws = WORKSPACE_BYTES;
        // SAFETY: the preference attribute is a size_t; `results` has room for WANT entries and
        // cuBLASLt writes `count <= WANT` of them; `pref` is destroyed below, once.
        let res = unsafe {
            cudarc::cublaslt::result::set_matmul_pref_attribute(
                pref,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )
            .map_err(lt_err("cublasLtMatmulPreferenceSetAttribute"))
            .and_then(|_| {
                let mut results: Vec<lt::cublasLtMatmulHeuristicResult_t> =
                    vec![std::mem::zeroed(); WANT];
                let mut count: i32 = 0;
                let status = lt::cublasLtMatmulAlgoGetHeuristic(
                    self.blas.lt,
                    self.desc,
                    self.a,
                    self.b,
                    self.d,
                    self.d,
                    pref,
                    WANT as i32,
                    results.as_mut_ptr(),
                    &mut count,
                );
                if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return Err(KernelError::Blas(format!(
                        "no cuBLASLt algorithm for this matmul: {status:?}"
                    )));
                }
                let algos: Vec<_> = results[..(count.max(0) as usize).min(WANT)]
                    .iter()
                    .filter(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                    .map(|r| r.algo)
                    .collect();
                if algos.is_empty() {
                    return Err(KernelError::Blas("no cuBLASLt algorithm for this matmul".into()));
                }
                Ok(algos)
            })
        };
        // SAFETY: created above.
        let _ = unsafe { cudarc::cublaslt::result::destroy_matmul_pref(pref) };
        res
    }

    /// Times each heuristic candidate on the real operands (a few runs each, CUDA events) and
    /// keeps the fastest, as runtimes' autotuners do; the choice is cached per problem for the
    /// life of the [`Gpu`]. Returns how many candidates were timed (0: cache hit).
    pub(crate) fn autotune<W, X, O>(
        &mut self,
        gpu: &Gpu,
        w: &CudaSlice<W>,
        x: &CudaSlice<X>,
        out: &mut CudaSlice<O>,
    ) -> KResult<usize> {
        let cached = self.blas.algo_cache.lock().ok().and_then(|c| c.get(&self.key).copied());
        if let Some(algo) = cached {
            self.algo = algo;
            return Ok(0);
        }
        let mut candidates = self.candidates.clone();
        // The exhaustive search is on unless `QTOOL_LT_EXHAUSTIVE=0`: it keeps the BF16 baseline
        // at its best (on an H200 it beat GemmEx by 2% at 8192³; for FP8 cuBLAS 13 offered no
        // configuration beyond the heuristic's).
        if std::env::var_os("QTOOL_LT_EXHAUSTIVE").is_none_or(|v| v != "0") {
            candidates.extend(self.enumerate());
        }
        let mut best = (f64::INFINITY, self.algo);
        for algo in &candidates {
            self.algo = *algo;
            // A candidate that fails to run (e.g. workspace needs) is skipped; one far slower
            // than the best so far after a single timed run is not timed further.
            let Ok(first) = time_once(gpu, || self.run(gpu, w, x, out)) else {
                continue;
            };
            if first > 1.25 * best.0 {
                continue;
            }
            let Ok(t) = crate::timing::median_micros(gpu, 5, || self.run(gpu, w, x, out)) else {
                continue;
            };
            if t < best.0 {
                best = (t, *algo);
            }
        }
        self.algo = best.1;
        if best.0.is_finite() {
            if let Ok(mut c) = self.blas.algo_cache.lock() {
                c.insert(self.key.clone(), best.1);
            }
        }
        Ok(candidates.len())
    }

    /// Every algorithm configuration cuBLASLt accepts for this problem beyond its heuristic
    /// (unless `QTOOL_LT_EXHAUSTIVE=0`): each algorithm id × each tile it offers, with the first stage
    /// count `cublasLtMatmulAlgoCheck` accepts (cuBLASLt's "custom find" search), at most
    /// [`MAX_ENUMERATED`] configurations.
    fn enumerate(&self) -> Vec<lt::cublasLtMatmulAlgo_t> {
        const MAX_ENUMERATED: usize = 256;
        let (a_ty, b_ty, d_ty) = self.types;
        let compute = lt::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let scale = lt::cudaDataType::CUDA_R_32F;
        let mut ids = vec![0i32; 128];
        let mut count = 0i32;
        // SAFETY: `ids` has room for the requested 128 entries.
        let st = unsafe {
            lt::cublasLtMatmulAlgoGetIds(
                self.blas.lt,
                compute,
                scale,
                a_ty.lt(),
                b_ty.lt(),
                d_ty.lt(),
                d_ty.lt(),
                ids.len() as i32,
                ids.as_mut_ptr(),
                &mut count,
            )
        };
        if st != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Vec::new();
        }
        ids.truncate(count.clamp(0, 128) as usize);
        // A capability list of u32 ids (tiles, stages); empty when the algo has none.
        let cap_list = |algo: &lt::cublasLtMatmulAlgo_t, attr| -> Vec<u32> {
            let mut size = 0usize;
            // SAFETY: a size query with a null buffer, then a read into a buffer of that size.
            unsafe {
                if lt::cublasLtMatmulAlgoCapGetAttribute(
                    algo,
                    attr,
                    std::ptr::null_mut(),
                    0,
                    &mut size,
                ) != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    || size == 0
                {
                    return Vec::new();
                }
                let mut v = vec![0u32; size.div_ceil(4).min(1024)];
                let mut written = 0usize;
                if lt::cublasLtMatmulAlgoCapGetAttribute(
                    algo,
                    attr,
                    v.as_mut_ptr() as *mut c_void,
                    v.len() * 4,
                    &mut written,
                ) != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                {
                    return Vec::new();
                }
                v.truncate(written / 4);
                v
            }
        };
        use lt::cublasLtMatmulAlgoCapAttributes_t as Cap;
        use lt::cublasLtMatmulAlgoConfigAttributes_t as Cfg;
        let mut out = Vec::new();
        for id in ids {
            // SAFETY: an all-zero algo is initialized by cublasLtMatmulAlgoInit before use.
            let mut algo: lt::cublasLtMatmulAlgo_t = unsafe { std::mem::zeroed() };
            // SAFETY: the types are this plan's; `algo` is writable.
            let st = unsafe {
                lt::cublasLtMatmulAlgoInit(
                    self.blas.lt,
                    compute,
                    scale,
                    a_ty.lt(),
                    b_ty.lt(),
                    d_ty.lt(),
                    d_ty.lt(),
                    id,
                    &mut algo,
                )
            };
            if st != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                continue;
            }
            let mut tiles = cap_list(&algo, Cap::CUBLASLT_ALGO_CAP_TILE_IDS);
            if tiles.is_empty() {
                tiles.push(0);
            }
            let mut stages = vec![0u32];
            stages.extend(cap_list(&algo, Cap::CUBLASLT_ALGO_CAP_STAGES_IDS));
            for &tile in &tiles {
                for &stage in &stages {
                    let mut a = algo;
                    let set = |a: &mut lt::cublasLtMatmulAlgo_t, attr, v: u32| {
                        // SAFETY: these config attributes are 32-bit values.
                        unsafe {
                            lt::cublasLtMatmulAlgoConfigSetAttribute(
                                a,
                                attr,
                                &v as *const u32 as *const c_void,
                                4,
                            )
                        }
                    };
                    set(&mut a, Cfg::CUBLASLT_ALGO_CONFIG_TILE_ID, tile);
                    set(&mut a, Cfg::CUBLASLT_ALGO_CONFIG_STAGES_ID, stage);
                    // SAFETY: zeroed result is plain data; the descriptors are this plan's.
                    let ok = unsafe {
                        let mut res: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                        lt::cublasLtMatmulAlgoCheck(
                            self.blas.lt,
                            self.desc,
                            self.a,
                            self.b,
                            self.d,
                            self.d,
                            &a,
                            &mut res,
                        ) == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                            && res.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                            && res.workspaceSize <= WORKSPACE_BYTES
                    };
                    if ok {
                        out.push(a);
                        break;
                    }
                }
                if out.len() >= MAX_ENUMERATED {
                    return out;
                }
            }
        }
        out
    }

    /// Runs the planned matmul on `gpu`'s stream.
    pub(crate) fn run<W, X, O>(
        &self,
        gpu: &Gpu,
        w: &CudaSlice<W>,
        x: &CudaSlice<X>,
        out: &mut CudaSlice<O>,
    ) -> KResult<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let alpha_ptr = match self.alpha_vec {
            Some(p) => p as *const c_void,
            None => &alpha as *const f32 as *const c_void,
        };
        let stream = gpu.stream();
        let (wp, _gw) = w.device_ptr(stream);
        let (xp, _gx) = x.device_ptr(stream);
        let (op, _go) = out.device_ptr_mut(stream);
        let (ws, _gws) = self.blas.workspace.device_ptr(stream);
        // SAFETY: the layouts were built for exactly these buffers' shapes and types by
        // `LtPlan::fp8`'s callers; alpha is a host f32 or (alpha-vector mode) a live device
        // vector of D's row count, beta a host f32; C aliases D with beta = 0, as cuBLASLt allows.
        unsafe {
            cudarc::cublaslt::result::matmul(
                self.blas.lt,
                self.desc,
                alpha_ptr,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                self.a,
                xp as *const c_void,
                self.b,
                op as *const c_void,
                self.d,
                op as *mut c_void,
                self.d,
                &self.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as lt::cudaStream_t,
            )
        }
        .map_err(lt_err("cublasLtMatmul"))
    }
}

/// One warm run of `f`, then one run between CUDA events: a quick screen of a candidate.
fn time_once(gpu: &Gpu, mut f: impl FnMut() -> KResult<()>) -> KResult<f64> {
    use cudarc::driver::sys::CUevent_flags;
    f()?;
    let e0 = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let e1 = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    e0.record(gpu.stream())?;
    f()?;
    e1.record(gpu.stream())?;
    gpu.synchronize()?;
    Ok(e0.elapsed_ms(&e1)? as f64 * 1000.0)
}
