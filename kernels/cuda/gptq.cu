// GPTQ and AWQ on the GPU (kernels/src/gptq.rs and awq.rs drive these; cuBLAS does the
// GEMM-shaped work).
//
// Matrix conventions: the Hessian accumulator and the Cholesky work matrix are column-major
// (cuBLAS's view); since every matrix factored here is symmetric, the row-major host Hessian
// is the same bytes. The weight is row-major [N, K] in visiting (act-order) column order.
#include "qtool_common.cuh"

// acc (K×K, f64) += tmp (K×K, f32) on the column-major lower triangle (r >= c) that SSYRK
// wrote; the f32 partial sum of one batch goes into the long f64 sum.
extern "C" __global__ void hess_accum(const float* __restrict__ tmp, double* __restrict__ acc,
                                      int k) {
    u64 total = (u64)k * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int r = (int)(i % k), c = (int)(i / k);
        if (r >= c) acc[i] += (double)tmp[i];
    }
}

// out (K×K, full symmetric) = scale · acc mirrored from its column-major lower triangle.
extern "C" __global__ void hess_finish(const double* __restrict__ acc, double scale,
                                       double* __restrict__ out, int k) {
    u64 total = (u64)k * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int r = (int)(i / k), c = (int)(i % k);
        out[i] = (r >= c ? acc[(u64)c * k + r] : acc[(u64)r * k + c]) * scale;
    }
}

// m = P·Hp·P + damp·I, where Hp is h permuted to visiting order (perm) with dead diagonals set
// to 1, and P reverses the index: the upper factor of Hp⁻¹ is then P·chol(m)⁻¹·P.
extern "C" __global__ void build_reversed(const double* __restrict__ h,
                                          const int* __restrict__ perm,
                                          const u8* __restrict__ dead, double damp_add,
                                          double* __restrict__ m, int k) {
    u64 total = (u64)k * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int r = (int)(i / k), c = (int)(i % k);
        int a = perm[k - 1 - r], b = perm[k - 1 - c];
        double v = (a == b && dead[a]) ? 1.0 : h[(u64)a * k + b];
        if (r == c) v += damp_add;
        m[i] = v;
    }
}

// d[i] = h[i][i].
extern "C" __global__ void diag_of(const double* __restrict__ h, double* __restrict__ d, int k) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < k; i += gridDim.x * blockDim.x) {
        d[i] = h[(u64)i * k + i];
    }
}

// B = I (K×K, f64).
extern "C" __global__ void set_identity(double* __restrict__ b, int k) {
    u64 total = (u64)k * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        b[i] = (i % k == i / k) ? 1.0 : 0.0;
    }
}

#define CHOL_NB 64

// Unblocked Cholesky of the diagonal block a[j0.., j0..] (jb ≤ CHOL_NB, column-major lower,
// lda = k) in shared memory, one CTA. The first non-positive pivot (global index + 1) goes to
// *info; once *info is set every later call returns at once (the factor is abandoned).
extern "C" __global__ void chol_diag(double* __restrict__ a, int k, int j0, int jb,
                                     int* __restrict__ info) {
    __shared__ double s[CHOL_NB][CHOL_NB + 1];
    __shared__ int failed;
    if (*info != 0) return;
    if (threadIdx.x == 0) failed = 0;
    for (int idx = threadIdx.x; idx < jb * jb; idx += blockDim.x) {
        int r = idx % jb, c = idx / jb;
        s[r][c] = a[(u64)(j0 + c) * k + j0 + r];
    }
    __syncthreads();
    for (int p = 0; p < jb; ++p) {
        if (threadIdx.x == 0) {
            double d = s[p][p];
            if (!(d > 0.0) || !isfinite(d)) {
                failed = 1;
                *info = j0 + p + 1;
            } else {
                s[p][p] = sqrt(d);
            }
        }
        __syncthreads();
        if (failed) return;
        double piv = s[p][p];
        for (int r = p + 1 + threadIdx.x; r < jb; r += blockDim.x) s[r][p] /= piv;
        __syncthreads();
        int w = jb - p - 1;
        for (int idx = threadIdx.x; idx < w * w; idx += blockDim.x) {
            int r = p + 1 + idx % w, c = p + 1 + idx / w;
            if (r >= c) s[r][c] -= s[r][p] * s[c][p];
        }
        __syncthreads();
    }
    for (int idx = threadIdx.x; idx < jb * jb; idx += blockDim.x) {
        int r = idx % jb, c = idx / jb;
        if (r >= c) a[(u64)(j0 + c) * k + j0 + r] = s[r][c];
    }
}

// u (row-major K×K, f32) = P·X·P with X = L⁻¹ column-major: u[a][b] = X(K-1-a, K-1-b), upper.
extern "C" __global__ void upper_from_inverse(const double* __restrict__ x, float* __restrict__ u,
                                              int k) {
    u64 total = (u64)k * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int a = (int)(i / k), b = (int)(i % k);
        u[i] = b >= a ? (float)x[(u64)(k - 1 - b) * k + (k - 1 - a)] : 0.0f;
    }
}

// d = a − b (b may be null: d = a), widened to f64 for the output-error quadratic form.
extern "C" __global__ void diff_f64(const float* __restrict__ a, const float* __restrict__ b,
                                    double* __restrict__ d, u64 len) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (u64)gridDim.x * blockDim.x) {
        d[i] = b ? (double)a[i] - (double)b[i] : (double)a[i];
    }
}

// *bad = 1 when any of the len values of x is NaN or infinite.
extern "C" __global__ void flag_nonfinite(const double* __restrict__ x, u64 len,
                                          int* __restrict__ bad) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (u64)gridDim.x * blockDim.x) {
        if (!isfinite(x[i])) atomicExch(bad, 1);
    }
}

// wp[r][j] = w[r][perm[j]], or 0 where that input column is dead: the weight in visiting order.
extern "C" __global__ void permute_cols(const float* __restrict__ w, const int* __restrict__ perm,
                                        const u8* __restrict__ dead, float* __restrict__ wp, int n,
                                        int k) {
    u64 total = (u64)n * k;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / k;
        int c = perm[i % k];
        wp[i] = dead[c] ? 0.0f : w[r * k + c];
    }
}

// (scale, zero) of one group from its [lo, hi], as quantizers/src/int/rtn.rs `group_params`
// (conv 0: GPTQ, 1: AWQ, 2: compressed-tensors; GPTQ on the GPU takes compressed-tensors'
// parameters from the host), the scale then rounded to the stored dtype
// (sdt 0: f32, 1: f16, 2: bf16) with the zero kept, as `quantize_for_storage` does.
__device__ __forceinline__ void group_params(float lo, float hi, int conv, int sym, float maxq,
                                             float mid, int sdt, float* s_out, u8* z_out) {
    float scale, zero;
    if (conv == 0) {
        float xmin = fminf(lo, 0.0f), xmax = fmaxf(hi, 0.0f);
        if (sym) {
            xmax = fmaxf(fabsf(xmin), xmax);
            if (xmin < 0.0f) xmin = -xmax;
        }
        if (xmin == 0.0f && xmax == 0.0f) {
            xmin = -1.0f;
            xmax = 1.0f;
        }
        scale = __fdiv_rn(__fsub_rn(xmax, xmin), maxq);
        zero = sym ? mid : rintf(__fdiv_rn(-xmin, scale));
        zero = fminf(fmaxf(zero, 0.0f), maxq);
    } else if (conv == 1) {
        scale = __fdiv_rn(fmaxf(__fsub_rn(hi, lo), 1e-5f), maxq);
        zero = fminf(fmaxf(-rintf(__fdiv_rn(lo, scale)), 0.0f), maxq);
    } else {
        // Signed zero point in [-mid, maxq - mid], stored + mid; a zero scale becomes FLT_EPSILON.
        float xmin = fminf(lo, 0.0f), xmax = fmaxf(hi, 0.0f);
        if (sym) {
            scale = __fdiv_rn(fmaxf(fabsf(xmin), fabsf(xmax)), __fmul_rn(maxq, 0.5f));
            if (scale == 0.0f) scale = 1.1920929e-7f;
            zero = mid;
        } else {
            scale = __fdiv_rn(__fsub_rn(xmax, xmin), maxq);
            if (scale == 0.0f) {
                scale = 1.1920929e-7f;
                zero = mid;
            } else {
                float zp = __fsub_rn(-mid, __fdiv_rn(xmin, scale));
                zp = rintf(fminf(fmaxf(zp, -mid), __fsub_rn(maxq, mid)));
                zero = __fadd_rn(zp, mid);
            }
        }
    }
    if (sdt == 1) scale = __half2float(__float2half_rn(scale));
    else if (sdt == 2) scale = __bfloat162float(__float2bfloat16_rn(scale));
    *s_out = scale;
    *z_out = (u8)zero;
}

// Every lane gets the warp's [lo, hi] and whether any lane saw a non-finite value (min and max
// are exact, so the butterfly's order does not matter).
__device__ __forceinline__ void warp_range(float* lo, float* hi, int* nonfinite) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        *lo = fminf(*lo, __shfl_xor_sync(0xffffffffu, *lo, off));
        *hi = fmaxf(*hi, __shfl_xor_sync(0xffffffffu, *hi, off));
        *nonfinite |= __shfl_xor_sync(0xffffffffu, *nonfinite, off);
    }
}

// Group parameters of every (row, group): one warp each, grid (groups, ceil(n / 8)), 256
// threads. Groups are `cols` consecutive original columns; with zero_dead, dead columns count
// as 0. *bad is set when an input is not finite or a stored scale is 0 or not finite (the
// host then takes the CPU path, which reports the precise error).
extern "C" __global__ void group_params_rows(const float* __restrict__ w,
                                             const u8* __restrict__ dead, int zero_dead, int n,
                                             int k, int cols, int conv, int sym, float maxq,
                                             float mid, int sdt, float* __restrict__ scales,
                                             u8* __restrict__ zeros, int* __restrict__ bad) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.y * 8 + (threadIdx.x >> 5);
    int g = blockIdx.x;
    if (row >= n) return;
    int c0 = g * cols, c1 = min(c0 + cols, k);
    float lo = __int_as_float(0x7f800000), hi = __int_as_float(0xff800000);  // +inf, -inf
    int nonfinite = 0;
    for (int c = c0 + lane; c < c1; c += 32) {
        float v = w[(u64)row * k + c];
        nonfinite |= !isfinite(v);
        if (zero_dead && dead[c]) v = 0.0f;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    warp_range(&lo, &hi, &nonfinite);
    if (lane == 0) {
        float s;
        u8 z;
        group_params(lo, hi, conv, sym, maxq, mid, sdt, &s, &z);
        scales[(u64)g * n + row] = s;
        zeros[(u64)g * n + row] = z;
        if (nonfinite || s == 0.0f || !isfinite(s)) atomicExch(bad, 1);
    }
}

#define GPTQ_BS 128
#define GPTQ_WARPS 8

// The code of x as quantizers/src/int/rtn.rs `encode` computes it (conv 0: GPTQ/AWQ, 1: CT).
__device__ __forceinline__ u8 encode(float x, float s, u8 z, int conv, float maxq, float mid) {
    float q = __fdiv_rn(x, s);
    if (conv == 0) {
        return (u8)fminf(fmaxf(__fadd_rn(rintf(q), (float)z), 0.0f), maxq);
    }
    float t = __fadd_rn(q, __fsub_rn((float)z, mid));
    t = fminf(fmaxf(t, -mid), __fsub_rn(maxq, mid));
    return (u8)__fadd_rn(rintf(t), mid);
}

// One lazy block [i1, i1 + cnt) of GPTQ's column loop; one warp per weight row, 8 rows per CTA.
// Lane l holds the row's block columns l, l+32, l+64, l+96 in registers; U[i1.., i1..] sits in
// shared memory. Per column: quantize with the row's group parameters, write the code at the
// column's original position, the scaled error e = (w − q)/U_ii to err[row, i], and subtract
// e·U[i, j] from the row's later columns of the block. Products and differences are rounded
// separately (no FMA contraction), as the CPU reference computes them.
extern "C" __global__ void __launch_bounds__(GPTQ_WARPS * 32)
gptq_block(const float* __restrict__ w, int n, int k, int i1, int cnt,
           const float* __restrict__ u, const int* __restrict__ perm,
           const int* __restrict__ gcol, const float* __restrict__ scales,
           const u8* __restrict__ zeros, int conv, float maxq, float mid,
           u8* __restrict__ codes, float* __restrict__ err, double* __restrict__ loss) {
    extern __shared__ float us[];  // [cnt][GPTQ_BS]
    for (int idx = threadIdx.x; idx < cnt * GPTQ_BS; idx += blockDim.x) {
        int i = idx / GPTQ_BS, j = idx % GPTQ_BS;
        us[idx] = j < cnt ? u[(u64)(i1 + i) * k + i1 + j] : 0.0f;
    }
    __syncthreads();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GPTQ_WARPS + (threadIdx.x >> 5);
    if (row >= n) return;
    const float* wr = w + (u64)row * k + i1;
    float reg[4];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        int j = s * 32 + lane;
        reg[s] = j < cnt ? wr[j] : 0.0f;
    }
    double lsum = 0.0;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        for (int t = 0; t < 32; ++t) {
            int i = s * 32 + t;
            if (i >= cnt) break;
            float x = __shfl_sync(0xffffffffu, reg[s], t);
            int g = gcol[i1 + i];
            float sc = scales[(u64)g * n + row];
            u8 z = zeros[(u64)g * n + row];
            u8 code = encode(x, sc, z, conv, maxq, mid);
            float deq = __fmul_rn(sc, __fsub_rn((float)code, (float)z));
            float e = __fdiv_rn(__fsub_rn(x, deq), us[i * GPTQ_BS + i]);
            if (lane == t) {
                codes[(u64)row * k + perm[i1 + i]] = code;
                err[(u64)row * cnt + i] = e;
                lsum += (double)e * (double)e / 2.0;
            }
#pragma unroll
            for (int s2 = 0; s2 < 4; ++s2) {
                int j = s2 * 32 + lane;
                if (s2 >= s && j > i && j < cnt) {
                    reg[s2] = __fsub_rn(reg[s2], __fmul_rn(e, us[i * GPTQ_BS + j]));
                }
            }
        }
    }
    // Per-row loss; lanes add their columns' terms in a fixed order.
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) lsum += __shfl_down_sync(0xffffffffu, lsum, off);
    if (lane == 0) loss[row] += lsum;
}

// acc[c] += Σ_r |x[r][c]| over the t rows of x ([t, K] row-major), one thread per channel
// summing in row order in f64: the order of the CPU's Hessian::add, so equal activations give
// equal sums (AWQ's activation salience; warps read consecutive channels, so loads coalesce).
extern "C" __global__ void abs_accum(const float* __restrict__ x, double* __restrict__ acc, int k,
                                     u64 t) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < k; c += gridDim.x * blockDim.x) {
        double s = acc[c];
        for (u64 r = 0; r < t; ++r) s += (double)fabsf(x[r * (u64)k + c]);
        acc[c] = s;
    }
}

// ---- AWQ (kernels/src/awq.rs) ----------------------------------------------------------------
// Every value below is computed with the operations and rounding order of the host code in
// quantizers/src/ptq/awq.rs (products and sums rounded separately, no FMA contraction), so the
// device search and clip are bit-equal to the host's given the same quadratic-form sums.

// d[r][c] = w − Q(w·s)/s for one (row, group) per warp, grid (groups, ceil(n / 8)), 256 threads:
// `group_error`'s residual of the weight quantized with input scales s, widened to f64 for the
// quadratic form. conv as group_params (0 GPTQ, 1 AWQ, 2 compressed-tensors). *bad is set where
// the host would fail (a non-finite scaled weight, a stored scale of 0 or not finite).
extern "C" __global__ void awq_scaled_residual(const float* __restrict__ w,
                                               const float* __restrict__ s, int n, int k,
                                               int cols, int conv, int sym, float maxq,
                                               float mid, int sdt, double* __restrict__ d,
                                               int* __restrict__ bad) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.y * 8 + (threadIdx.x >> 5);
    int g = blockIdx.x;
    if (row >= n) return;
    int c0 = g * cols, c1 = min(c0 + cols, k);
    const float* wr = w + (u64)row * k;
    float lo = __int_as_float(0x7f800000), hi = __int_as_float(0xff800000);
    int nonfinite = 0;
    for (int c = c0 + lane; c < c1; c += 32) {
        float v = __fmul_rn(wr[c], s[c]);
        nonfinite |= !isfinite(v);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    warp_range(&lo, &hi, &nonfinite);
    float sc;
    u8 z;
    group_params(lo, hi, conv, sym, maxq, mid, sdt, &sc, &z);
    if (nonfinite || sc == 0.0f || !isfinite(sc)) {
        if (lane == 0) atomicExch(bad, 1);
        return;
    }
    int ec = conv == 2;
    for (int c = c0 + lane; c < c1; c += 32) {
        float v = __fmul_rn(wr[c], s[c]);
        u8 code = encode(v, sc, z, ec, maxq, mid);
        float deq = __fmul_rn(__fsub_rn((float)code, (float)z), sc);
        d[(u64)row * k + c] = (double)__fsub_rn(wr[c], __fdiv_rn(deq, s[c]));
    }
}

// The diagonal gs×gs blocks of the clip search's gram diag(1/s)·G·diag(1/s) (`scale_gram`;
// s null: G itself), stored per group transposed, bd[g][l][j] = G'[o+j][o+l] with o = g·gs, so
// that the lanes of a warp read consecutive j. *bad is set on a non-finite entry.
extern "C" __global__ void awq_clip_gram(const double* __restrict__ gram,
                                         const float* __restrict__ s, int k, int gs, int groups,
                                         double* __restrict__ bd, int* __restrict__ bad) {
    u64 per = (u64)gs * gs, total = per * groups;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int g = (int)(i / per), l = (int)(i / gs % gs), j = (int)(i % gs);
        int a = g * gs + j, b = g * gs + l;
        double v = gram[(u64)a * k + b];
        if (s) v = __ddiv_rn(v, __dmul_rn((double)s[a], (double)s[b]));
        if (!isfinite(v)) atomicExch(bad, 1);
        bd[i] = v;
    }
}

// The clip search of one (row, group) per warp (`clip_search`): for each shrink step i the
// group clamped to ±max|w|·(1 − i/clip_grid) is fake-quantized, δ = q − w in f64, and the error
// δᵀ·G'_gg·δ is summed in the host's order (t_j = Σ_l G'[j][l]·δ_l by lane, then Σ_j δ_j·t_j by
// lane 0). The first strictly smallest error wins. Writes the clamped group, its max, and the
// winning and unclipped errors. Grid (groups, ceil(n / warps)), 32·warps threads, dynamic
// shared memory 2·gs f64 per warp.
extern "C" __global__ void awq_clip(const float* __restrict__ w, const double* __restrict__ bd,
                                    int n, int k, int gs, int steps, int clip_grid, int conv,
                                    int sym, float maxq, float mid, int sdt,
                                    float* __restrict__ w_out, float* __restrict__ max_val,
                                    double* __restrict__ err_best,
                                    double* __restrict__ err_first, int* __restrict__ bad) {
    extern __shared__ double smem[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    int row = blockIdx.y * warps + warp;
    int g = blockIdx.x, groups = k / gs;
    if (row >= n) return;
    double* delta = smem + (u64)warp * 2 * gs;
    double* t = delta + gs;
    const float* orig = w + (u64)row * k + (u64)g * gs;
    const double* blk = bd + (u64)g * gs * gs;
    float org_max = 0.0f;
    for (int c = lane; c < gs; c += 32) org_max = fmaxf(org_max, fabsf(orig[c]));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        org_max = fmaxf(org_max, __shfl_xor_sync(0xffffffffu, org_max, off));
    int ec = conv == 2;
    double best = __longlong_as_double(0x7ff0000000000000LL), first = 0.0;
    float best_mv = org_max;
    for (int i = 0; i < steps; ++i) {
        float mv = __fmul_rn(org_max, __fsub_rn(1.0f, __fdiv_rn((float)i, (float)clip_grid)));
        float lo = __int_as_float(0x7f800000), hi = __int_as_float(0xff800000);
        for (int c = lane; c < gs; c += 32) {
            float v = fminf(fmaxf(orig[c], -mv), mv);
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        int finite_only = 0;  // the clamped group of finite weights
        warp_range(&lo, &hi, &finite_only);
        float sc;
        u8 z;
        group_params(lo, hi, conv, sym, maxq, mid, sdt, &sc, &z);
        if (sc == 0.0f || !isfinite(sc)) {
            if (lane == 0) atomicExch(bad, 1);
            return;
        }
        for (int c = lane; c < gs; c += 32) {
            float x = orig[c];
            float v = fminf(fmaxf(x, -mv), mv);
            u8 code = encode(v, sc, z, ec, maxq, mid);
            float q = __fmul_rn(sc, __fsub_rn((float)code, (float)z));
            delta[c] = __dsub_rn((double)q, (double)x);
        }
        __syncwarp();
        for (int j = lane; j < gs; j += 32) {
            double acc = 0.0;
            for (int l = 0; l < gs; ++l) acc = __dadd_rn(acc, __dmul_rn(blk[(u64)l * gs + j], delta[l]));
            t[j] = acc;
        }
        __syncwarp();
        double e = 0.0;
        if (lane == 0) {
            for (int j = 0; j < gs; ++j) e = __dadd_rn(e, __dmul_rn(delta[j], t[j]));
        }
        e = __shfl_sync(0xffffffffu, e, 0);
        if (i == 0) first = e;
        if (e < best) {
            best = e;
            best_mv = mv;
        }
        __syncwarp();
    }
    float* out = w_out + (u64)row * k + (u64)g * gs;
    for (int c = lane; c < gs; c += 32) out[c] = fminf(fmaxf(orig[c], -best_mv), best_mv);
    if (lane == 0) {
        u64 at = (u64)row * groups + g;
        max_val[at] = best_mv;
        err_best[at] = best;
        err_first[at] = first;
    }
}
