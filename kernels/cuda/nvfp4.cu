// NVFP4 on GPUs without FP4 tensor cores (Hopper and older): an EMULATION. The stored E2M1
// nibbles and E4M3 block scales are decoded in the kernel (w = e2m1 * (block_scale * global))
// and multiplied on CUDA cores (GEMV) or dequantized to bf16 for cuBLAS (large batches). Both
// nibble orders and both scale layouts (row-major [n, k/16]; the cuBLAS/ComfyUI 128x4 swizzle,
// quantizers/src/float/swizzle.rs) are read as stored.
#include "qtool_common.cuh"

using namespace qtool;

struct DecNvfp4 {
    const u8* w;            // packed codes, row stride row_bytes
    size_t row_bytes;
    const u8* scales;       // E4M3 block scales
    int scale_cols;         // linear: k/16; swizzled: padded column count (multiple of 4)
    int swizzled;
    int even_high;          // element 2i in the high nibble (ComfyUI)
    int k;
    float global;

    __device__ __forceinline__ float block_scale(int row, int kb) const {
        size_t idx;
        if (swizzled) {
            idx = ((size_t)(row >> 7) * (scale_cols >> 2) + (kb >> 2)) * 512 + (row & 31) * 16 + ((row & 127) >> 5) * 4 + (kb & 3);
        } else {
            idx = (size_t)row * scale_cols + kb;
        }
        return e4m3_to_f32(scales[idx]) * global;
    }

    __device__ void decode(int row, int g, float out[32]) const {
        const u8* p = w + row * row_bytes + (size_t)g * 16;
        const int valid = min(32, k - 32 * g);
        u8 bytes[16];
        if (valid == 32 && (row_bytes & 15) == 0) {
            uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
            u32 ws[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 16; ++j) bytes[j] = (u8)(ws[j >> 2] >> (8 * (j & 3)));
        } else {
#pragma unroll
            for (int j = 0; j < 16; ++j) bytes[j] = 2 * j < valid ? p[j] : (u8)0;
        }
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            const float s = 16 * b < valid ? block_scale(row, 2 * g + b) : 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const u32 byte = bytes[8 * b + j];
                const u32 e0 = even_high ? (byte >> 4) : (byte & 15);
                const u32 e1 = even_high ? (byte & 15) : (byte >> 4);
                const int i = 16 * b + 2 * j;
                out[i] = i < valid ? e2m1_to_f32(e0) * s : 0.0f;
                out[i + 1] = i + 1 < valid ? e2m1_to_f32(e1) * s : 0.0f;
            }
        }
    }
};

extern "C" __global__ void gemv_nvfp4(const u8* w, unsigned long long row_bytes, const u8* scales, int scale_cols,
                                      int swizzled, int even_high, float global, const u16* x, int xvec, int m,
                                      int n, int k, float* out) {
    DecNvfp4 dec{w, (size_t)row_bytes, scales, scale_cols, swizzled, even_high, k, global};
    gemv_rows(dec, x, X_BF16, xvec != 0, m, n, k, out);
}

extern "C" __global__ void dequant_nvfp4(const u8* w, unsigned long long row_bytes, const u8* scales, int scale_cols,
                                         int swizzled, int even_high, float global, int n, int k, u16* out) {
    DecNvfp4 dec{w, (size_t)row_bytes, scales, scale_cols, swizzled, even_high, k, global};
    dequant_rows(dec, n, k, true, out);
}
