// GGUF block formats: fused dequant + GEMV (warp per output row) and dequant-to-bf16 for the
// large-batch path (then cuBLAS). Block layouts: formats/src/gguf/ggml_type.rs and
// quantizers/src/gguf/{legacy,q4_k,q5_k,q6_k}.rs; the arithmetic order matches the CPU reference.
#include "qtool_common.cuh"

using namespace qtool;

__device__ __forceinline__ float ld_f16(const u8* p) {
    return __half2float(__ushort_as_half((u16)(p[0] | (p[1] << 8))));
}

// The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes Q4_K and Q5_K share.
__device__ __forceinline__ void k_scale_min(const u8* sc, int j, int& s, int& mn) {
    if (j < 4) {
        s = sc[j] & 63;
        mn = sc[j + 4] & 63;
    } else {
        s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        mn = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

// Q8_0: 34-byte blocks of 32: f16 d, 32 x int8. w = q * d.
struct DecQ8_0 {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)g * 34;
        const float d = ld_f16(b);
#pragma unroll
        for (int j = 0; j < 32; ++j) out[j] = (float)(signed char)b[2 + j] * d;
    }
};

// Q4_0: 18-byte blocks of 32: f16 d, 16 bytes; element j < 16 is the low nibble of byte j,
// j >= 16 the high nibble of byte j - 16. w = (q - 8) * d.
struct DecQ4_0 {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)g * 18;
        const float d = ld_f16(b);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const u8 q = b[2 + j];
            out[j] = (float)((int)(q & 0xF) - 8) * d;
            out[j + 16] = (float)((int)(q >> 4) - 8) * d;
        }
    }
};

// Q4_1: 20-byte blocks of 32: f16 d, f16 m, 16 bytes as Q4_0. w = q * d + m.
struct DecQ4_1 {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)g * 20;
        const float d = ld_f16(b), m = ld_f16(b + 2);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const u8 q = b[4 + j];
            out[j] = (float)(q & 0xF) * d + m;
            out[j + 16] = (float)(q >> 4) * d + m;
        }
    }
};

// Q5_0: 22-byte blocks of 32: f16 d, 4 bytes qh (bit j = 5th bit of element j), 16 bytes of
// nibbles as Q4_0. w = (q - 16) * d. (llama.cpp's recipes fall back to Q5_0 when a row is not a
// multiple of 256, e.g. SmolLM2's 576-wide tensors under Q4_K_M.)
struct DecQ5_0 {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)g * 22;
        const float d = ld_f16(b);
        const u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const u8 q = b[6 + j];
            const int lo = (int)(q & 0xF) | (int)(((qh >> j) & 1) << 4);
            const int hi = (int)(q >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            out[j] = (float)(lo - 16) * d;
            out[j + 16] = (float)(hi - 16) * d;
        }
    }
};

// Q5_1: 24-byte blocks of 32: f16 d, f16 m, 4 bytes qh, 16 bytes of nibbles. w = q * d + m.
struct DecQ5_1 {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)g * 24;
        const float d = ld_f16(b), m = ld_f16(b + 2);
        const u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const u8 q = b[8 + j];
            const u32 lo = (q & 0xF) | (((qh >> j) & 1) << 4);
            const u32 hi = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            out[j] = (float)lo * d + m;
            out[j + 16] = (float)hi * d + m;
        }
    }
};

// Q5_K: 176-byte super-blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins (as
// Q4_K), qh[32], qs[128]. Sub-block j: nibbles as Q4_K, 5th bit = bit j of qh[l].
struct DecQ5K {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)(g >> 3) * 176;
        const int j = g & 7;
        int s, mn;
        k_scale_min(b + 4, j, s, mn);
        const float d1 = ld_f16(b) * (float)s, m1 = ld_f16(b + 2) * (float)mn;
        const u8* qh = b + 16;
        const u8* qs = b + 48 + 32 * (j >> 1);
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            const int q = ((qs[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
            out[l] = d1 * (float)q - m1;
        }
    }
};

// Q4_K: 144-byte super-blocks of 256: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins,
// 128 bytes of nibbles. Sub-block j (32 elements) uses byte chunk j/2, low nibbles for even j,
// high for odd; w = (d * sc_j) * q - (dmin * m_j).
struct DecQ4K {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)(g >> 3) * 144;
        const int j = g & 7;
        int s, mn;
        k_scale_min(b + 4, j, s, mn);
        const float d1 = ld_f16(b) * (float)s, m1 = ld_f16(b + 2) * (float)mn;
        const uint4* q4 = reinterpret_cast<const uint4*>(b + 16 + 32 * (j >> 1));
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int v = 0; v < 2; ++v) {
            uint4 u = q4[v];
            u32 words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int t = 0; t < 16; ++t) {
                const u32 q = (words[t >> 2] >> (8 * (t & 3) + shift)) & 0xF;
                out[16 * v + t] = d1 * (float)q - m1;
            }
        }
    }
};

// Q6_K: 210-byte super-blocks of 256: ql[128], qh[64], int8 scales[16], f16 d. Sub-block g%8
// = (half h, quarter q): element l of it is 128h + 32q + l; low 4 bits from ql (byte l or l+32
// of the half, low or high nibble), high 2 bits from qh[32h + l] >> 2q; scale index
// 8h + l/16 + 2q. w = (d * sc) * (q6 - 32).
struct DecQ6K {
    const u8* w; size_t row_bytes; int k;
    __device__ void decode(int row, int g, float out[32]) const {
        const u8* b = w + row * row_bytes + (size_t)(g >> 3) * 210;
        const int j = g & 7, h = j >> 2, q = j & 3;
        const u8* ql = b + 64 * h + (q & 1) * 32;
        const u8* qh = b + 128 + 32 * h;
        const signed char* sc = reinterpret_cast<const signed char*>(b + 192 + 8 * h + 2 * q);
        const float d = ld_f16(b + 208);
        const float d0 = d * (float)sc[0], d1 = d * (float)sc[1];
        const int lshift = (q >> 1) * 4, hshift = 2 * q;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            const int v = ((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4);
            out[l] = (l < 16 ? d0 : d1) * (float)(v - 32);
        }
    }
};

#define GGUF_KERNELS(NAME, DEC)                                                                   \
    extern "C" __global__ void gemv_##NAME(const u8* w, unsigned long long row_bytes,            \
                                           const float* x, int xvec, int m, int n, int k,        \
                                           float* out) {                                         \
        DEC dec{w, (size_t)row_bytes, k};                                                         \
        gemv_rows(dec, x, X_F32, xvec != 0, m, n, k, out);                                        \
    }                                                                                             \
    extern "C" __global__ void dequant_##NAME(const u8* w, unsigned long long row_bytes, int n,  \
                                              int k, u16* out) {                                  \
        DEC dec{w, (size_t)row_bytes, k};                                                         \
        dequant_rows(dec, n, k, true, out);                                                       \
    }

GGUF_KERNELS(q8_0, DecQ8_0)
GGUF_KERNELS(q4_0, DecQ4_0)
GGUF_KERNELS(q4_1, DecQ4_1)
GGUF_KERNELS(q5_0, DecQ5_0)
GGUF_KERNELS(q5_1, DecQ5_1)
GGUF_KERNELS(q4_k, DecQ4K)
GGUF_KERNELS(q5_k, DecQ5K)
GGUF_KERNELS(q6_k, DecQ6K)

// f32 activations -> bf16 (for the cuBLAS path), round to nearest even.
extern "C" __global__ void f32_to_bf16(const float* x, unsigned long long len, u16* out) {
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) out[i] = f32_to_bf16_bits(x[i]);
}
