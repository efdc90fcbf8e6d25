// The element-wise and per-row pieces of a llama-family block (kernels/src/llama.rs drives them;
// cuBLAS SGEMM does the linears and the attention products).
//
// Every kernel reproduces the CPU engine's arithmetic (calib/src/engine/ops.rs) operation by
// operation: reductions in f64 like the CPU, and products/sums written with the explicit
// round-to-nearest intrinsics wherever NVRTC's --fmad=true could otherwise contract a multiply
// and an add into one FMA that the CPU code does not do. Matrices are row-major f32.
#include "qtool_common.cuh"

namespace {

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp normalizes row `row` of `x` into `out` (which may be `x`):
// out = (x · scale) · w, scale = 1 / sqrt(Σx²/cols + eps) rounded from f64 to f32.
__device__ __forceinline__ void rms_row(const float* x, float* out, const float* w, int cols,
                                        float eps, int lane) {
    double ss = 0.0;
    for (int c = lane; c < cols; c += 32) {
        const double v = (double)x[c];
        ss += v * v;  // exact product: a 24-bit mantissa squared fits f64
    }
    ss = warp_sum_f64(ss);
    const float scale = (float)(1.0 / sqrt(ss / (double)cols + (double)eps));
    for (int c = lane; c < cols; c += 32) out[c] = __fmul_rn(__fmul_rn(x[c], scale), w[c]);
}

}  // namespace

// out[r] = rms_norm(x[r]) for `rows` rows of `cols`; one warp per row.
extern "C" __global__ void llama_rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                          float* __restrict__ out, long long rows, int cols,
                                          float eps) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (row >= rows) return;
    rms_row(x + row * cols, out + row * cols, w, cols, eps, threadIdx.x & 31);
}

// rms_norm in place (Qwen3's per-head q/k norms: rows = tokens · heads, cols = head_dim).
extern "C" __global__ void llama_rms_norm_inplace(float* x, const float* __restrict__ w,
                                                  long long rows, int cols, float eps) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (row >= rows) return;
    rms_row(x + row * cols, x + row * cols, w, cols, eps, threadIdx.x & 31);
}

// Rotary embedding in place, Hugging Face rotate_half convention: pair i of a head is elements
// (i, i + hd/2). x is [rows, heads · hd]; row r has position r % t, and cos/sin are [t, hd/2].
extern "C" __global__ void llama_rope(float* __restrict__ x, const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, long long rows, int heads,
                                      int hd, int t) {
    const int half = hd >> 1;
    const long long total = rows * heads * half;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int pair = (int)(i % half);
        const long long rh = i / half;
        const int h = (int)(rh % heads);
        const long long r = rh / heads;
        const int pos = (int)(r % t);
        const float c = cos_t[(long long)pos * half + pair], s = sin_t[(long long)pos * half + pair];
        float* p = x + r * ((long long)heads * hd) + (long long)h * hd;
        const float a = p[pair], b = p[pair + half];
        p[pair] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        p[pair + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

// Causal softmax of attention scores in place. s holds `mats` row-major t×t matrices (one per
// window and head); row i of each keeps columns 0..=i: softmax(scale · s) with the max in f32
// and the sum of exponentials in f64, columns beyond i set to 0. One warp per row.
extern "C" __global__ void llama_causal_softmax(float* __restrict__ s, long long mats, int t,
                                                float scale) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= mats * t) return;
    const int i = (int)(row % t);
    float* p = s + row * t;
    float m = __int_as_float(0xff800000);
    for (int j = lane; j <= i; j += 32) {
        const float v = __fmul_rn(p[j], scale);
        p[j] = v;
        m = fmaxf(m, v);
    }
    m = qtool::warp_max(m);
    double sum = 0.0;
    for (int j = lane; j <= i; j += 32) {
        const float e = expf(__fsub_rn(p[j], m));
        p[j] = e;
        sum += (double)e;
    }
    sum = warp_sum_f64(sum);
    const float inv = (float)(1.0 / sum);
    for (int j = lane; j < t; j += 32) p[j] = j <= i ? __fmul_rn(p[j], inv) : 0.0f;
}

// g = silu(g) · u = g / (1 + exp(−g)) · u, element-wise over n values.
extern "C" __global__ void llama_swiglu(float* __restrict__ g, const float* __restrict__ u,
                                        long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = g[i];
        g[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u[i]);
    }
}

// acc += x over n values (the residual connection).
extern "C" __global__ void llama_add(float* __restrict__ acc, const float* __restrict__ x,
                                     long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        acc[i] = __fadd_rn(acc[i], x[i]);
    }
}

// y[r, c] += b[c] for a [rows, n] matrix.
extern "C" __global__ void llama_bias_add(float* __restrict__ y, const float* __restrict__ b,
                                          long long rows, int n) {
    const long long total = rows * n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = __fadd_rn(y[i], b[i % n]);
    }
}

// Per-row negative log-likelihood of logits [rows, vocab]: logsumexp − logit[target] in f64
// (max in f32 as the CPU's nll_of); a negative target gives 0. One block of 256 per row.
extern "C" __global__ void llama_nll_rows(const float* __restrict__ logits,
                                          const int* __restrict__ targets, double* __restrict__ out,
                                          int rows, int vocab) {
    __shared__ float smax[8];
    __shared__ double ssum[8];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* p = logits + (long long)row * vocab;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, p[j]);
    m = qtool::warp_max(m);
    if (lane == 0) smax[warp] = m;
    __syncthreads();
    m = smax[0];
    for (int w = 1; w < nw; ++w) m = fmaxf(m, smax[w]);
    const double md = (double)m;
    double z = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) z += exp((double)p[j] - md);
    z = warp_sum_f64(z);
    if (lane == 0) ssum[warp] = z;
    __syncthreads();
    if (threadIdx.x == 0) {
        double tot = 0.0;
        for (int w = 0; w < nw; ++w) tot += ssum[w];
        const int tg = targets[row];
        out[row] = (tg < 0 || tg >= vocab) ? 0.0 : md + log(tot) - (double)p[tg];
    }
}
