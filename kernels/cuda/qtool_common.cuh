// Shared device helpers for qtool's kernels. NVRTC gets this file as an in-memory header
// (kernels/src/nvrtc.rs), so every .cu may `#include "qtool_common.cuh"`.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

namespace qtool {

// E4M3 (fn, no infinities) byte -> float, exact. Done by hand rather than through
// __nv_fp8_e4m3 so the same code runs on every architecture NVRTC targets.
__device__ __forceinline__ float e4m3_to_f32(u8 b) {
    u32 sign = (b >> 7) & 1, exp = (b >> 3) & 0xF, man = b & 7;
    float v;
    if (exp == 0) {
        v = (float)man * 0.001953125f;  // man * 2^-9
    } else if (exp == 15 && man == 7) {
        v = __int_as_float(0x7fc00000);  // NaN
    } else {
        v = __int_as_float(((exp + 120) << 23) | (man << 20));
    }
    return sign ? -v : v;
}

// E5M2 byte -> float, exact (the top byte of an IEEE half).
__device__ __forceinline__ float e5m2_to_f32(u8 b) {
    return __half2float(__ushort_as_half((u16)((u16)b << 8)));
}

// UE8M0 (MX block scale) -> float: 2^(b-127); 0xFF is NaN.
__device__ __forceinline__ float e8m0_to_f32(u8 b) {
    if (b == 0xFF) return __int_as_float(0x7fc00000);
    if (b == 0) return __int_as_float(0x00400000);  // 2^-127
    return __int_as_float((u32)b << 23);
}

// E2M1 code (low 4 bits) -> float.
// Branch-free (a table indexed at run time would live in local memory): code = s|e(2)|m(1);
// e = 0 is the subnormal m * 0.5, else (1 + m/2) * 2^(e-1).
__device__ __forceinline__ float e2m1_to_f32(u32 code) {
    const u32 e = (code >> 1) & 3, m = code & 1;
    const float v = e == 0 ? 0.5f * (float)m : __uint_as_float(((e + 126u) << 23) | (m << 22));
    return (code & 8) ? -v : v;
}

__device__ __forceinline__ float bf16_bits_to_f32(u16 b) { return __uint_as_float((u32)b << 16); }
__device__ __forceinline__ float f16_bits_to_f32(u16 b) { return __half2float(__ushort_as_half(b)); }

// Round-to-nearest-even float -> bf16 bits (NaN kept quiet).
__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

}  // namespace qtool

namespace qtool {

// Activation element type of a GEMV.
enum XType { X_BF16 = 0, X_F16 = 1, X_F32 = 2 };

// Largest batch the fused GEMV kernels handle; larger batches dequantize once and use cuBLAS.
#define QTOOL_GEMV_MAX_M 8

// ---------------------------------------------------------------------------------------------
// GEMV over any weight format whose rows are contiguous in memory.
// `Dec::decode(row, g, w)` writes the 32 weights of row `row`, columns 32g..32g+31, as floats
// (zeros past k). A block of QTOOL_GEMV_WARPS warps owns QTOOL_GEMV_WARPS * QTOOL_GEMV_RPW rows
// and walks k in chunks of 1024: the chunk of every activation row is staged once in shared
// memory (as f32, transposed with a 33-float pitch so both the staging writes and the lane reads
// are bank-conflict free), then lane l decodes group l of the chunk for each of its warp's rows
// and dots it with all m activation rows while the weights sit in registers, so every weight
// byte is read exactly once and activations come from shared memory.
// out[r * n + row] = sum_k x[r * k + kk] * W[row][kk].
#define QTOOL_GEMV_WARPS 8
#define QTOOL_GEMV_RPW 4
#define QTOOL_GEMV_KC 1024

template <class Dec>
__device__ __forceinline__ void gemv_rows(const Dec& dec, const void* xv, int xtype, bool xvec,
                                          int m, int n, int k, float* out) {
    (void)xvec;
    __shared__ float xs[QTOOL_GEMV_MAX_M][32 * 33];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * QTOOL_GEMV_WARPS + warp) * QTOOL_GEMV_RPW;
    float acc[QTOOL_GEMV_RPW][QTOOL_GEMV_MAX_M];
#pragma unroll
    for (int i = 0; i < QTOOL_GEMV_RPW; ++i)
#pragma unroll
        for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) acc[i][r] = 0.0f;
    const int groups = (k + 31) >> 5;
    for (int c0 = 0; c0 < k; c0 += QTOOL_GEMV_KC) {
        __syncthreads();  // the previous chunk has been consumed
        for (int e = threadIdx.x; e < m * QTOOL_GEMV_KC; e += blockDim.x) {
            const int r = e / QTOOL_GEMV_KC, c = e % QTOOL_GEMV_KC, kk = c0 + c;
            float v = 0.0f;
            if (kk < k) {
                const size_t at = (size_t)r * k + kk;
                if (xtype == X_F32) v = static_cast<const float*>(xv)[at];
                else if (xtype == X_BF16) v = bf16_bits_to_f32(static_cast<const u16*>(xv)[at]);
                else v = f16_bits_to_f32(static_cast<const u16*>(xv)[at]);
            }
            xs[r][(c & 31) * 33 + (c >> 5)] = v;
        }
        __syncthreads();
        const int g = (c0 >> 5) + lane;
        if (g < groups) {
#pragma unroll
            for (int i = 0; i < QTOOL_GEMV_RPW; ++i) {
                const int row = row0 + i;
                if (row < n) {
                    float w[32];
                    dec.decode(row, g, w);
#pragma unroll
                    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
                        if (r < m) {
                            float s = 0.0f;
#pragma unroll
                            for (int j = 0; j < 32; ++j) s = fmaf(xs[r][j * 33 + lane], w[j], s);
                            acc[i][r] += s;
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < QTOOL_GEMV_RPW; ++i) {
        const int row = row0 + i;
#pragma unroll
        for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
            if (r < m) {
                const float s = warp_sum(acc[i][r]);
                if (lane == 0 && row < n) out[(size_t)r * n + row] = s;
            }
        }
    }
}

// Dequantizes every 32-element group of an n x k weight into row-major 16-bit floats
// (bf16 when `to_bf16`, else f16), one thread per group.
template <class Dec>
__device__ __forceinline__ void dequant_rows(const Dec& dec, int n, int k, bool to_bf16, u16* out) {
    const int groups = (k + 31) >> 5;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * groups) return;
    const int row = (int)(idx / groups), g = (int)(idx % groups);
    float w[32];
    dec.decode(row, g, w);
    const int k0 = g << 5;
    u16* o = out + (size_t)row * k + k0;
    if ((k & 7) == 0 && k0 + 32 <= k) {
        // Row starts are 16-byte aligned when k % 8 == 0: four 16-byte stores.
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            u32 p[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float a = w[8 * v + 2 * j], b = w[8 * v + 2 * j + 1];
                const u32 lo = to_bf16 ? f32_to_bf16_bits(a) : __half_as_ushort(__float2half_rn(a));
                const u32 hi = to_bf16 ? f32_to_bf16_bits(b) : __half_as_ushort(__float2half_rn(b));
                p[j] = lo | (hi << 16);
            }
            reinterpret_cast<uint4*>(o)[v] = make_uint4(p[0], p[1], p[2], p[3]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            if (k0 + j < k) o[j] = to_bf16 ? f32_to_bf16_bits(w[j]) : __half_as_ushort(__float2half_rn(w[j]));
        }
    }
}

}  // namespace qtool
