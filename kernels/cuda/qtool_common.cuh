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
__device__ __forceinline__ float e2m1_to_f32(u32 code) {
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[code & 7];
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

// ---------------------------------------------------------------------------------------------
// Activation loads: 32 consecutive elements of one activation row as floats. `vec` says the
// pointer is 16-byte aligned (checked on the host from k and the base alignment).

__device__ __forceinline__ void load_x32(const u16* p, bool is_bf16, bool vec, int valid, float out[32]) {
    if (vec && valid >= 32) {
        const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            uint4 u = __ldg(q + v);
            u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                u16 lo = (u16)(w[j] & 0xFFFF), hi = (u16)(w[j] >> 16);
                out[v * 8 + 2 * j] = is_bf16 ? bf16_bits_to_f32(lo) : f16_bits_to_f32(lo);
                out[v * 8 + 2 * j + 1] = is_bf16 ? bf16_bits_to_f32(hi) : f16_bits_to_f32(hi);
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            u16 b = j < valid ? p[j] : (u16)0;
            out[j] = is_bf16 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b);
        }
    }
}

__device__ __forceinline__ void load_x32(const float* p, bool vec, int valid, float out[32]) {
    if (vec && valid >= 32) {
        const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
        for (int v = 0; v < 8; ++v) {
            float4 f = __ldg(q + v);
            out[4 * v] = f.x; out[4 * v + 1] = f.y; out[4 * v + 2] = f.z; out[4 * v + 3] = f.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < 32; ++j) out[j] = j < valid ? p[j] : 0.0f;
    }
}

// Activation element type of a GEMV.
enum XType { X_BF16 = 0, X_F16 = 1, X_F32 = 2 };

// Largest batch the fused GEMV kernels handle; larger batches dequantize once and use cuBLAS.
#define QTOOL_GEMV_MAX_M 8

// ---------------------------------------------------------------------------------------------
// Warp-per-output-row GEMV over any weight format whose rows are contiguous in memory.
// `Dec::decode(row, g, w)` writes the 32 weights of row `row`, columns 32g..32g+31, as floats
// (zeros past k). Lane l handles groups l, l+32, ...; each decoded group is used for all m
// activation rows while it sits in registers, so the weight bytes are read exactly once.
// out[r * n + row] = sum_k x[r * k + kk] * W[row][kk].
template <class Dec>
__device__ __forceinline__ void gemv_rows(const Dec& dec, const void* xv, int xtype, bool xvec,
                                          int m, int n, int k, float* out) {
    const int warps_per_block = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    float acc[QTOOL_GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) acc[r] = 0.0f;
    const int groups = (k + 31) >> 5;
    for (int g = lane; g < groups; g += 32) {
        float w[32];
        dec.decode(row, g, w);
        const int k0 = g << 5;
        const int valid = min(32, k - k0);
#pragma unroll
        for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
            if (r < m) {
                float xs[32];
                if (xtype == X_F32) {
                    load_x32(static_cast<const float*>(xv) + (size_t)r * k + k0, xvec, valid, xs);
                } else {
                    load_x32(static_cast<const u16*>(xv) + (size_t)r * k + k0, xtype == X_BF16, xvec, valid, xs);
                }
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 32; ++j) s = fmaf(xs[j], w[j], s);
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QTOOL_GEMV_MAX_M; ++r) {
        if (r < m) {
            float s = warp_sum(acc[r]);
            if (lane == 0) out[(size_t)r * n + row] = s;
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
#pragma unroll
    for (int j = 0; j < 32; ++j) {
        if (k0 + j < k) o[j] = to_bf16 ? f32_to_bf16_bits(w[j]) : __half_as_ushort(__float2half_rn(w[j]));
    }
}

}  // namespace qtool
