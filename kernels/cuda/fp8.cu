// FP8 GEMM support kernels: activation quantization to E4M3 (per tensor, static or dynamic
// absmax/448; per 1x128 group for block scaling), the per-channel post-scale used when cuBLASLt
// has no vector-scale algorithm, and qtool's own block-scaled (128x128 weight blocks, 1x128
// activation groups) FP8 GEMM.
#include "qtool_common.cuh"

using namespace qtool;

// Smallest dynamic scale: keeps an all-zero activation from producing 0/0.
#define MIN_DYN_SCALE (1.0f / (448.0f * 512.0f))

__device__ __forceinline__ u8 to_e4m3(float v) {
    return (u8)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

// max |x| over bf16 x, as float bits in *amax_bits (pre-zeroed). Non-negative floats order like
// their bit patterns, so an integer atomicMax is exact and order-independent.
extern "C" __global__ void absmax_bf16(const u16* x, unsigned long long len, u32* amax_bits) {
    float m = 0.0f;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long len8 = len / 8;
    const uint4* x8 = reinterpret_cast<const uint4*>(x);
    for (unsigned long long v = i; v < len8; v += stride) {
        uint4 u = __ldg(x8 + v);
        u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            m = fmaxf(m, fabsf(bf16_bits_to_f32((u16)(w[j] & 0xFFFF))));
            m = fmaxf(m, fabsf(bf16_bits_to_f32((u16)(w[j] >> 16))));
        }
    }
    for (unsigned long long t = len8 * 8 + i; t < len; t += stride) m = fmaxf(m, fabsf(bf16_bits_to_f32(x[t])));
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) atomicMax(amax_bits, __float_as_uint(m));
}

// xq = sat_e4m3(x / scale), scale = amax/448 (dynamic, amax_bits != 0) or static_scale;
// the scale used is written to scale_out[0 .. n_scale) for cuBLASLt's B scale pointer (one
// scalar, or the same value per row of x when cuBLASLt's outer-vector mode wants a vector of
// m). x must be 16-byte aligned (a fresh allocation).
extern "C" __global__ void quant_e4m3_tensor(const u16* x, unsigned long long len, const u32* amax_bits,
                                             float static_scale, float* scale_out, int n_scale, u8* xq) {
    const float scale = amax_bits ? fmaxf(__uint_as_float(*amax_bits) / 448.0f, MIN_DYN_SCALE) : static_scale;
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long threads = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long j = i; j < (unsigned long long)n_scale; j += threads) scale_out[j] = scale;
    const unsigned long long len8 = len / 8;
    if (i < len8) {
        uint4 u = __ldg(reinterpret_cast<const uint4*>(x) + i);
        u32 w[4] = {u.x, u.y, u.z, u.w};
        u32 lo = 0, hi = 0;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            lo |= (u32)to_e4m3(bf16_bits_to_f32((u16)(w[j] & 0xFFFF)) / scale) << (16 * j);
            lo |= (u32)to_e4m3(bf16_bits_to_f32((u16)(w[j] >> 16)) / scale) << (16 * j + 8);
            hi |= (u32)to_e4m3(bf16_bits_to_f32((u16)(w[j + 2] & 0xFFFF)) / scale) << (16 * j);
            hi |= (u32)to_e4m3(bf16_bits_to_f32((u16)(w[j + 2] >> 16)) / scale) << (16 * j + 8);
        }
        reinterpret_cast<uint2*>(xq)[i] = make_uint2(lo, hi);
    }
    // Tail (len % 8 elements) by the first threads.
    const unsigned long long t = len8 * 8 + i;
    if (t < len) xq[t] = to_e4m3(bf16_bits_to_f32(x[t]) / scale);
}

// Per 1x128 group: xs[r, kb] = max(amax, 1e-10) / 448, xq = sat_e4m3(x / xs). One warp per
// group, 4 elements per lane.
extern "C" __global__ void quant_e4m3_group128(const u16* x, int m, int k, u8* xq, float* xs) {
    const int kb_count = (k + 127) / 128;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= (long long)m * kb_count) return;
    const int r = (int)(warp / kb_count), kb = (int)(warp % kb_count);
    float v[4];
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int c = kb * 128 + j * 32 + lane;
        v[j] = c < k ? bf16_bits_to_f32(x[(size_t)r * k + c]) : 0.0f;
        a = fmaxf(a, fabsf(v[j]));
    }
    a = warp_max(a);
    const float s = fmaxf(a, 1e-10f) / 448.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int c = kb * 128 + j * 32 + lane;
        if (c < k) xq[(size_t)r * k + c] = to_e4m3(v[j] / s);
    }
    if (lane == 0) xs[(size_t)r * kb_count + kb] = s;
}

// out[r, c] *= s[c] (per-output-channel weight scales applied after an unscaled FP8 GEMM).
extern "C" __global__ void scale_cols(float* out, int m, int n, const float* s) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)m * n) out[i] *= s[i % n];
}

// out16[r, c] = bf16(acc[r, c] * s[c]): the per-channel post-scale fused into the one rounding
// to the BF16 output (when cuBLASLt has no vector-scale algorithm), 4 elements per thread.
extern "C" __global__ void scale_cols_bf16(const float* acc, int m, int n, const float* s, u16* out16) {
    const long long total = (long long)m * n;
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i + 3 < total && (n & 3) == 0) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(acc + i));
        const int c = (int)(i % n);
        const u32 lo = (u32)f32_to_bf16_bits(v.x * s[c]) | ((u32)f32_to_bf16_bits(v.y * s[c + 1]) << 16);
        const u32 hi = (u32)f32_to_bf16_bits(v.z * s[c + 2]) | ((u32)f32_to_bf16_bits(v.w * s[c + 3]) << 16);
        reinterpret_cast<uint2*>(out16)[i / 4] = make_uint2(lo, hi);
        return;
    }
    for (long long t = i; t < i + 4 && t < total; ++t) out16[t] = f32_to_bf16_bits(acc[t] * s[t % n]);
}

// Block-scaled FP8 GEMM: out[m, n] = sum_kb (sum_{k in kb} xq[m,k] wq[n,k]) * xs[m,kb] * ws[n/128, kb].
// Scales are addressed through strides so the same kernel also serves per-tensor / per-channel
// FP8 when cuBLASLt has no algorithm: xs[r * xs_rs + kb * xs_ks], ws[(c / ws_ndiv) * ws_rs + kb * ws_ks].
// 64x64 output tile per block of 256 threads (4x4 per thread), k-steps of one 128-wide scale
// block. FP8 values are exact in f16, so tiles are staged as f16 in shared memory and
// multiplied in f32 on CUDA cores. w_e5m2 selects the weight format (activations are E4M3).
#define BB_M 64
#define BB_N 64
#define BB_K 128
extern "C" __global__ void __launch_bounds__(256) fp8_block_gemm(
    const u8* xq, const float* xs, int xs_rs, int xs_ks, const u8* wq, int w_e5m2, const float* ws, int ws_ndiv,
    int ws_rs, int ws_ks, int m, int n, int k, float* out) {
    __shared__ __half sa[BB_M][BB_K + 8];
    __shared__ __half sb[BB_N][BB_K + 8];
    const int kb_count = (k + BB_K - 1) / BB_K;
    const int row0 = blockIdx.y * BB_M, col0 = blockIdx.x * BB_N;
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    float acc[4][4] = {};
    for (int kb = 0; kb < kb_count; ++kb) {
        // Stage 64x128 of x and w (each thread 32 elements of each).
        for (int e = tid; e < BB_M * BB_K; e += 256) {
            const int r = e / BB_K, c = e % BB_K, kk = kb * BB_K + c;
            const int gr = row0 + r, gc = col0 + r;
            const float xa = (gr < m && kk < k) ? e4m3_to_f32(xq[(size_t)gr * k + kk]) : 0.0f;
            float wb = 0.0f;
            if (gc < n && kk < k) {
                const u8 b = wq[(size_t)gc * k + kk];
                wb = w_e5m2 ? e5m2_to_f32(b) : e4m3_to_f32(b);
            }
            sa[r][c] = __float2half_rn(xa);
            sb[r][c] = __float2half_rn(wb);
        }
        __syncthreads();
        float part[4][4] = {};
#pragma unroll 4
        for (int c = 0; c < BB_K; ++c) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = __half2float(sa[ty * 4 + i][c]);
                b[i] = __half2float(sb[tx + 16 * i][c]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) part[i][j] = fmaf(a[i], b[j], part[i][j]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int gr = row0 + ty * 4 + i;
            const float sx = gr < m ? xs[(size_t)gr * xs_rs + (size_t)kb * xs_ks] : 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int gc = col0 + tx + 16 * j;
                const float sw = gc < n ? ws[(size_t)(gc / ws_ndiv) * ws_rs + (size_t)kb * ws_ks] : 0.0f;
                acc[i][j] += part[i][j] * (sx * sw);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gr = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gc = col0 + tx + 16 * j;
            if (gr < m && gc < n) out[(size_t)gr * n + gc] = acc[i][j];
        }
    }
}

// Small-batch block-scaled path: activations dequantized back from their 1x128-group E4M3
// codes (x~ = e4m3(xq) * xs), then the shared row GEMV over the FP8 weight with its 128x128
// block scale folded into each decoded value. Same products as the tiled kernel, read once.
extern "C" __global__ void dequant_act_group128(const u8* xq, const float* xs, int m, int k, float* out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    const int r = (int)(i / k), c = (int)(i % k);
    out[i] = e4m3_to_f32(xq[i]) * xs[(size_t)r * ((k + 127) / 128) + c / 128];
}

struct DecFp8Block {
    const u8* w; const float* ws; int kbc; int e5m2; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* p = w + (size_t)row * k + 32 * g;
        const int valid = min(32, k - 32 * g);
        const float s = ws[(size_t)(row / 128) * kbc + (32 * g) / 128];
        u8 b[32];
        if (valid == 32 && (k & 15) == 0) {
            const uint4 u0 = __ldg(reinterpret_cast<const uint4*>(p)), u1 = __ldg(reinterpret_cast<const uint4*>(p) + 1);
            const u32 ws8[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
            for (int j = 0; j < 32; ++j) b[j] = (u8)(ws8[j >> 2] >> (8 * (j & 3)));
        } else {
#pragma unroll
            for (int j = 0; j < 32; ++j) b[j] = j < valid ? p[j] : (u8)0;
        }
#pragma unroll
        for (int j = 0; j < 32; ++j) out[j] = j < valid ? (e5m2 ? e5m2_to_f32(b[j]) : e4m3_to_f32(b[j])) * s : 0.0f;
    }
};

extern "C" __global__ void __launch_bounds__(256) gemv_fp8_block(const u8* w, const float* ws, int kbc, int e5m2,
                                                                 const float* x, int m, int n, int k, float* out) {
    DecFp8Block dec{w, ws, kbc, e5m2, k};
    gemv_rows(dec, x, X_F32, true, m, n, k, out);
}
