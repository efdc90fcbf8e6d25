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
        // Without act-order and with groups of a multiple of 8, one word shares one group:
        // load its zero and scale once (the common case), else per element.
        const bool word_groups = g_idx == nullptr && (group & 7) == 0;
#pragma unroll 2
        for (int j = blockIdx.y * KSLICES + ty; j < kw; j += gridDim.y * KSLICES) {
            const u32 word = (u32)__ldg(qweight + (size_t)j * n + col);
            float w[8];
            if (word_groups) {
                const int g = 8 * j / group;
                const u32 zw = (u32)__ldg(qzeros + (size_t)g * zcols + col / 8);
                const float z = (float)(((zw >> (4 * (col & 7))) & 15) + zero_add);
                const float s = __ldg(scales + (size_t)g * n + col);
#pragma unroll
                for (int t = 0; t < 8; ++t) w[t] = ((float)((word >> (4 * t)) & 15) - z) * s;
            } else {
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    const int kk = 8 * j + t;
                    const int g = g_idx ? g_idx[kk] : kk / group;
                    const u32 zw = (u32)qzeros[(size_t)g * zcols + col / 8];
                    const float z = (float)(((zw >> (4 * (col & 7))) & 15) + zero_add);
                    w[t] = ((float)((word >> (4 * t)) & 15) - z) * scales[(size_t)g * n + col];
                }
            }
            // The 8 activations of this word for each row: one 16-byte load (k % 8 == 0).
#pragma unroll
            for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
                if (r < m) {
                    const uint4 u = __ldg(reinterpret_cast<const uint4*>(x + (size_t)r * k + 8 * j));
                    const u32 xw[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                    for (int t = 0; t < 8; ++t) {
                        const float xv = f16_bits_to_f32((u16)(xw[t >> 1] >> (16 * (t & 1))));
                        acc[r] = fmaf(w[t], xv, acc[r]);
                    }
                }
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
// Compile-time twin of AWQ_ORDER for register-indexed use in unrolled loops.
#define AWQ_COL(i) ((((i) & 3) << 1) | ((i) >> 2))

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
            const u32 word = (u32)__ldg(qweight + (size_t)kk * wcols + wc);
            const int g = kk / group;
            const u32 zw = (u32)__ldg(qzeros + (size_t)g * wcols + wc);
            // The 8 scales of this word's columns are contiguous: two 16-byte loads.
            const float4* sp = reinterpret_cast<const float4*>(scales + (size_t)g * n + 8 * wc);
            const float4 s0 = __ldg(sp), s1 = __ldg(sp + 1);
            const float sc[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
            float xr[QTOOL_GEMV_MAX_M];
#pragma unroll
            for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) xr[r] = r < m ? x_at(x, r, k, kk) : 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float w = ((float)((word >> (4 * i)) & 15) - (float)((zw >> (4 * i)) & 15)) * sc[AWQ_COL(i)];
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

__device__ __forceinline__ u32 pack_f16x2(float a, float b) {
    return (u32)__half_as_ushort(__float2half_rn(a)) | ((u32)__half_as_ushort(__float2half_rn(b)) << 16);
}

// Dequantize GPTQ to f16 [n, k]: one thread per packed word, whose 8 values are consecutive
// along k in the output: one 16-byte store (k % 8 == 0 for GPTQ).
extern "C" __global__ void dequant_gptq(const int* qweight, const int* qzeros, const float* scales, const int* g_idx,
                                        int group, int zero_add, int n, int k, u16* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int kw = k / 8;
    if (i >= (long long)kw * n) return;
    const int j = (int)(i / n), col = (int)(i % n);
    const u32 word = (u32)qweight[i];
    float w[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int kk = 8 * j + t;
        const int g = g_idx ? g_idx[kk] : kk / group;
        const u32 zw = (u32)qzeros[(size_t)g * (n / 8) + col / 8];
        const float z = (float)(((zw >> (4 * (col & 7))) & 15) + zero_add);
        w[t] = ((float)((word >> (4 * t)) & 15) - z) * scales[(size_t)g * n + col];
    }
    reinterpret_cast<uint4*>(out + (size_t)col * k + 8 * j)[0] =
        make_uint4(pack_f16x2(w[0], w[1]), pack_f16x2(w[2], w[3]), pack_f16x2(w[4], w[5]), pack_f16x2(w[6], w[7]));
}

// Dequantize AWQ to f16 [n, k]: one thread per (packed column, 8 consecutive k); each of its 8
// output columns gets one 16-byte store when k % 8 == 0 (else element stores).
extern "C" __global__ void dequant_awq(const int* qweight, const int* qzeros, const float* scales, int group, int n,
                                       int k, u16* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int wcols = n / 8, octs = (k + 7) / 8;
    if (i >= (long long)octs * wcols) return;
    const int oct = (int)(i / wcols), wc = (int)(i % wcols);
    float w[8][8];  // [field][t]
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int kk = 8 * oct + t;
        if (kk < k) {
            const u32 word = (u32)qweight[(size_t)kk * wcols + wc];
            const int g = kk / group;
            const u32 zw = (u32)qzeros[(size_t)g * wcols + wc];
#pragma unroll
            for (int f = 0; f < 8; ++f)
                w[f][t] = ((float)((word >> (4 * f)) & 15) - (float)((zw >> (4 * f)) & 15)) * scales[(size_t)g * n + 8 * wc + AWQ_COL(f)];
        } else {
#pragma unroll
            for (int f = 0; f < 8; ++f) w[f][t] = 0.0f;
        }
    }
#pragma unroll
    for (int f = 0; f < 8; ++f) {
        u16* o = out + (size_t)(8 * wc + AWQ_COL(f)) * k + 8 * oct;
        if ((k & 7) == 0) {
            reinterpret_cast<uint4*>(o)[0] = make_uint4(pack_f16x2(w[f][0], w[f][1]), pack_f16x2(w[f][2], w[f][3]),
                                                        pack_f16x2(w[f][4], w[f][5]), pack_f16x2(w[f][6], w[f][7]));
        } else {
            for (int t = 0; t < 8 && 8 * oct + t < k; ++t) o[t] = __half_as_ushort(__float2half_rn(w[f][t]));
        }
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
        const int k0 = 32 * g;
        // Without act-order and with groups of a multiple of 32, the 32 elements share one
        // group: one scale and one zero point (the common case); else per element.
        if (g_idx == nullptr && (group & 31) == 0 && k0 + 32 <= k) {
            const int gi = k0 / group;
            const float z = zp ? (float)(((u32)zp[(size_t)(row / 8) * groups + gi] >> (4 * (row & 7))) & 15) : 8.0f;
            const float s = scales[(size_t)row * groups + gi];
            const uint4 u = (k & 7) == 0 && ((k / 8) & 3) == 0 ? __ldg(reinterpret_cast<const uint4*>(p + k0 / 8))
                                                               : make_uint4(p[k0 / 8], p[k0 / 8 + 1], p[k0 / 8 + 2], p[k0 / 8 + 3]);
            const u32 ws[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int t = 0; t < 8; ++t) out[8 * w + t] = ((float)((ws[w] >> (4 * t)) & 15) - z) * s;
            return;
        }
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int kw0 = k0 + 8 * w;
            const u32 word = kw0 < k ? (u32)p[kw0 / 8] : 0u;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int kk = kw0 + t;
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
