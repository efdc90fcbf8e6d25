// HBM read probe: how fast the device can stream a buffer it only reads, the ceiling for
// weight-streaming kernels (Marlin at small m, GEMV). Each thread keeps UNROLL independent
// 16-byte non-caching loads in flight per step; the XOR of everything read is written only if
// it equals an impossible value, so the loads cannot be elided and nothing else is written.
#include "qtool_common.cuh"

#define UNROLL 8

extern "C" __global__ void hbm_read(const int4* __restrict__ src, u64 n16, u32 never,
                                    u32* __restrict__ sink) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (; i + (UNROLL - 1) * stride < n16; i += UNROLL * stride) {
        int4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int4* p = src + i + u * stride;
            asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0,%1,%2,%3}, [%4];"
                         : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                         : "l"(p));
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) acc ^= (u32)(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
    }
    for (; i < n16; i += stride) {
        int4 v = src[i];
        acc ^= (u32)(v.x ^ v.y ^ v.z ^ v.w);
    }
    if (acc == never) sink[0] = acc;
}
