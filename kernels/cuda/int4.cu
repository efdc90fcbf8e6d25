// int4 checkpoint formats, read as stored: GPTQ v1/v2 (with act-order g_idx), AutoAWQ GEMM and
// compressed-tensors pack-quantized (layouts: quantizers/src/int/{gptq,awq,compressed}.rs).
// w[n][k] = (q - zero) * scale, exactly the CPU reference's arithmetic (f32).
//
// GPTQ and AWQ pack along k with n fastest in memory ([k/8, n] / [k, n/8] words), so their
// GEMVs give each thread one packed column (coalesced across a warp) and split k over
// threadIdx.y and gridDim.y; partial sums go to [ksplit, m, n] and are reduced in a fixed order
// (deterministic, no atomics). compressed-tensors rows are contiguous, so it uses the shared
// warp-per-row GEMV.
#include "qtool_common.cuh"

using namespace qtool;

#define KSLICES 8

__device__ __forceinline__ float x_at(const u16* x, int r, int k, int kk) {
    return f16_bits_to_f32(x[(size_t)r * k + kk]);
}

// GPTQ: qweight [k/8, n], qzeros [G, n/8], scales [G, n] (f32), g_idx [k] or null.
// zero = field + zero_add (1 for v1, which stores zero - 1; 0 for v2).
extern "C" __global__ void __launch_bounds__(256) gemv_gptq(
    const int* qweight, const int* qzeros, const float* scales, const int* g_idx, int group, int zero_add,
    const u16* x, int m, int n, int k, float* partial) {
    __shared__ float red[KSLICES][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * 32 + tx;
    float acc[QTOOL_GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) acc[r] = 0.0f;
    if (col < n) {
        const int kw = k / 8, zcols = n / 8;
        for (int j = blockIdx.y * KSLICES + ty; j < kw; j += gridDim.y * KSLICES) {
            const u32 word = (u32)qweight[(size_t)j * n + col];
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int kk = 8 * j + t;
                const int g = g_idx ? g_idx[kk] : kk / group;
                const u32 zw = (u32)qzeros[(size_t)g * zcols + col / 8];
                const float z = (float)(((zw >> (4 * (col & 7))) & 15) + zero_add);
                const float w = ((float)((word >> (4 * t)) & 15) - z) * scales[(size_t)g * n + col];
#pragma unroll
                for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r)
                    if (r < m) acc[r] = fmaf(w, x_at(x, r, k, kk), acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
        if (r >= m) break;
        red[ty][tx] = acc[r];
        __syncthreads();
        if (ty == 0 && col < n) {
            float s = 0.0f;
            for (int y = 0; y < KSLICES; ++y) s += red[y][tx];
            partial[((size_t)blockIdx.y * m + r) * n + col] = s;
        }
        __syncthreads();
    }
}

__constant__ int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// AWQ: qweight [k, n/8], qzeros [G, n/8] (both with the AWQ field interleave), scales [G, n].
// Thread = one packed word column (8 output columns).
extern "C" __global__ void __launch_bounds__(256) gemv_awq(
    const int* qweight, const int* qzeros, const float* scales, int group, const u16* x, int m, int n, int k,
    float* partial) {
    __shared__ float red[KSLICES][32][9];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int wc = blockIdx.x * 32 + tx, wcols = n / 8;
    float acc[QTOOL_GEMV_MAX_M][8];
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] = 0.0f;
    if (wc < wcols) {
        for (int kk = blockIdx.y * KSLICES + ty; kk < k; kk += gridDim.y * KSLICES) {
            const u32 word = (u32)qweight[(size_t)kk * wcols + wc];
            const int g = kk / group;
            const u32 zw = (u32)qzeros[(size_t)g * wcols + wc];
            float xr[QTOOL_GEMV_MAX_M];
#pragma unroll
            for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) xr[r] = r < m ? x_at(x, r, k, kk) : 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int c = 8 * wc + AWQ_ORDER[i];
                const float w = ((float)((word >> (4 * i)) & 15) - (float)((zw >> (4 * i)) & 15)) * scales[(size_t)g * n + c];
#pragma unroll
                for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) acc[r][i] = fmaf(w, xr[r], acc[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
        if (r >= m) break;
#pragma unroll
        for (int i = 0; i < 8; ++i) red[ty][tx][i] = acc[r][i];
        __syncthreads();
        if (ty == 0 && wc < wcols) {
            for (int i = 0; i < 8; ++i) {
                float s = 0.0f;
                for (int y = 0; y < KSLICES; ++y) s += red[y][tx][i];
                partial[((size_t)blockIdx.y * m + r) * n + 8 * wc + AWQ_ORDER[i]] = s;
            }
        }
        __syncthreads();
    }
}

// out[r, c] = sum over y in order of partial[y, r, c].
extern "C" __global__ void reduce_partials(const float* partial, int splits, int m, int n, float* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)m * n) return;
    float s = 0.0f;
    for (int y = 0; y < splits; ++y) s += partial[(size_t)y * m * n + i];
    out[i] = s;
}

// Dequantize GPTQ to f16 [n, k]: one thread per packed word.
extern "C" __global__ void dequant_gptq(const int* qweight, const int* qzeros, const float* scales, const int* g_idx,
                                        int group, int zero_add, int n, int k, u16* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int kw = k / 8;
    if (i >= (long long)kw * n) return;
    const int j = (int)(i / n), col = (int)(i % n);
    const u32 word = (u32)qweight[i];
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int kk = 8 * j + t;
        const int g = g_idx ? g_idx[kk] : kk / group;
        const u32 zw = (u32)qzeros[(size_t)g * (n / 8) + col / 8];
        const float z = (float)(((zw >> (4 * (col & 7))) & 15) + zero_add);
        const float w = ((float)((word >> (4 * t)) & 15) - z) * scales[(size_t)g * n + col];
        out[(size_t)col * k + kk] = __half_as_ushort(__float2half_rn(w));
    }
}

// Dequantize AWQ to f16 [n, k]: one thread per packed word.
extern "C" __global__ void dequant_awq(const int* qweight, const int* qzeros, const float* scales, int group, int n,
                                       int k, u16* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int wcols = n / 8;
    if (i >= (long long)k * wcols) return;
    const int kk = (int)(i / wcols), wc = (int)(i % wcols);
    const u32 word = (u32)qweight[i];
    const int g = kk / group;
    const u32 zw = (u32)qzeros[(size_t)g * wcols + wc];
#pragma unroll
    for (int f = 0; f < 8; ++f) {
        const int c = 8 * wc + AWQ_ORDER[f];
        const float w = ((float)((word >> (4 * f)) & 15) - (float)((zw >> (4 * f)) & 15)) * scales[(size_t)g * n + c];
        out[(size_t)c * k + kk] = __half_as_ushort(__float2half_rn(w));
    }
}

// compressed-tensors pack-quantized: packed [n, ceil(k/8)] (stored q + 8), scales [n, G],
// zero points [ceil(n/8), G] packed along n (stored zp + 8) or null (symmetric: zero 8 stored),
// g_idx [k] or null.
struct DecCt {
    const int* packed; const float* scales; const int* zp; const int* g_idx; int group; int groups; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const int words = (k + 7) / 8;
        const int* p = packed + (size_t)row * words;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int k0 = 32 * g + 8 * w;
            const u32 word = k0 < k ? (u32)p[k0 / 8] : 0u;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int kk = k0 + t;
                float v = 0.0f;
                if (kk < k) {
                    const int gi = g_idx ? g_idx[kk] : kk / group;
                    const float z = zp ? (float)(((u32)zp[(size_t)(row / 8) * groups + gi] >> (4 * (row & 7))) & 15) : 8.0f;
                    v = ((float)((word >> (4 * t)) & 15) - z) * scales[(size_t)row * groups + gi];
                }
                out[8 * w + t] = v;
            }
        }
    }
};

extern "C" __global__ void gemv_ct(const int* packed, const float* scales, const int* zp, const int* g_idx, int group,
                                   int groups, const u16* x, int xvec, int m, int n, int k, float* out) {
    DecCt dec{packed, scales, zp, g_idx, group, groups, k};
    gemv_rows(dec, x, X_F16, xvec != 0, m, n, k, out);
}

extern "C" __global__ void dequant_ct(const int* packed, const float* scales, const int* zp, const int* g_idx, int group,
                                      int groups, int n, int k, u16* out) {
    DecCt dec{packed, scales, zp, g_idx, group, groups, k};
    dequant_rows(dec, n, k, false, out);
}
