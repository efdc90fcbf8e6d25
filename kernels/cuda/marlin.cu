// Marlin-layout W4A16 GEMM: C[m, n] (f32) = A[m, k] (f16, row-major) · Wᵀ, where W[n, k] is
// symmetric 4-bit with f16 group scales, stored exactly as `qtool repack --target marlin` writes
// it (formats.md §4.2–§4.3, quantizers/src/int/marlin.rs):
//   B[k/16][2n] int32: per 16-row k-tile, 1024-entry chunks (16 k × 64 n), each chunk = 32 int4,
//   one per lane; word w of lane l holds the mma.m16n8k16 B fragments of n16-tile w, with the
//   nibble order [0,2,4,6,1,3,5,7] that lets two `lop3`s extract two fp16 pairs at once.
//   S[G][n] f16: grouped → each 64-chunk is 8×8 transposed, so lane l's 8 scales (columns
//   l/4 + 8j) are 16 contiguous bytes; per-channel → 32-chunks so that lane l's output columns
//   2(l%4) + {0,1} + 8j are 16 contiguous bytes per 32-chunk.
//
// Why the design looks like this (Marlin paper, Frantar et al. 2024):
// - small m is bound by streaming the int4 weights, so the weights go global → shared with
//   `cp.async` through a STAGES-deep pipeline, and from shared to registers as one 16-byte load
//   per lane per 16×64 block, already in fragment order (no shuffles, no ldmatrix for B);
// - the k × n tile space is cut into equal contiguous "stripes" (k fastest), one per CTA, so even
//   m = 1 fills every SM; a column of tiles shared by several CTAs is reduced in a fixed order
//   (highest CTA first, guarded by a per-column lock that the last writer resets to 0), which
//   keeps the result deterministic and needs no extra launch;
// - inside a CTA the 8 warps split a tile along k (and along n in 64-column chunks) and reduce
//   through shared memory at the end of each stripe segment;
// - m ≤ 8 (MB = 0) swaps the mma operands: the dequantized weights are the A operand (16 columns
//   per mma instead of 8, so half the mmas) and the group scales multiply f32 partial sums once
//   per group instead of every f16 weight pair; the B-fragment words are already A fragments.
// No headers: everything below is plain C++ and inline PTX, so NVRTC needs no include path.
//
// Measured status (H200, kernels/examples/bench_marlin.rs, back-to-back launches, group 128):
// m = 1: 19.9 µs on 8192² (1.8× cuBLAS BF16, 35 % of HBM), 17.5 µs 4096×11008 (1.6×, 27 %),
// 21.2 µs 11008×4096 (1.3×, 22 %), 39.8 µs 8192×28672 (2.8×, 61 %); m = 16: 0.9–1.9×; m ≥ 64
// slower than cuBLAS (0.4–0.9×). Below the issue's 3× / 80 % goal. Nsight Compute on the
// 8192² m = 1 launch: DRAM 25–30 % busy, long-scoreboard (memory) stalls small; the SM issues
// only ~0.42 instructions per scheduler per cycle with 2 warps per scheduler, stalled on
// fixed-latency dependencies ("wait"), the per-stage __syncthreads ("barrier") and the math
// pipes. It is bound by instruction latency/count in the dequant + mma loop, not by memory:
// bulk (TMA) copies with 4–6 stages were slower, and 16 warps per SM (two CTAs at ≤ 128
// registers) did not help. The swapped form cut executed instructions by 23 % (7.7 M → 6.0 M)
// and time by 17–27 %. Next steps: more independent work per warp between barriers (larger
// k per warp, no k-warp split), a cheaper dequant (fewer ALU ops per word), and the same
// f32-scale trick for m = 9..64.

typedef unsigned int u32;
typedef unsigned short u16;

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 16-byte async copy; `valid == false` zero-fills the destination without reading `src`.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

// Weight stream copy: always valid; with PF the L2 fetches 256-byte blocks from DRAM per miss
// (each lane group reads whole 512-byte Marlin chunks, so nothing fetched is wasted).
template <bool PF>
__device__ __forceinline__ void cp_async16_stream(u32 dst, const void* src) {
    if (PF)
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Same with a zero accumulator (the first k16 tile of a scale group).
__device__ __forceinline__ void mma_16816_z(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%10,%10,%10};\n"
        : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

// (a & b) | c in one instruction.
__device__ __forceinline__ u32 and_or(u32 a, u32 b, u32 c) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(h));
    return f;
}

// One Marlin word → the four f16x2 B-fragment registers it holds, as signed values q − 8:
// f[0], f[1] = regs {b0b1, b2b3} of the first n8 subtile, f[2], f[3] of the second.
// OR-ing a nibble into the mantissa of 1024.0 (0x6400) gives 1024 + q exactly; a nibble at bits
// 4..7 gives 1024 + 16q, undone by one fma with 1/16 and −(64 + 8).
__device__ __forceinline__ void dequant_word(u32 q, u32 (&f)[4]) {
    const u32 LO = 0x000f000fu, HI = 0x00f000f0u, EXP = 0x64006400u;
    const u32 SUB = 0x64086408u;  // 1032.0 twice
    const u32 MUL = 0x2c002c00u;  // 1/16 twice
    const u32 ADD = 0xd480d480u;  // -72.0 twice
    u32 lo0 = and_or(q, LO, EXP);
    u32 hi0 = and_or(q, HI, EXP);
    u32 q8 = q >> 8;
    u32 lo1 = and_or(q8, LO, EXP);
    u32 hi1 = and_or(q8, HI, EXP);
    f[0] = hsub2(lo0, SUB);
    f[1] = hfma2(hi0, MUL, ADD);
    f[2] = hsub2(lo1, SUB);
    f[3] = hfma2(hi1, MUL, ADD);
}

__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release(int* p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ float2 ld_cg_f2(const float* p) {
    float2 v;
    asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float ld_cg_f1(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];\n" : "=f"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_cg_f1(float* p, float v) {
    asm volatile("st.global.cg.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
}

__device__ __forceinline__ void st_cg_f2(float* p, float2 v) {
    asm volatile("st.global.cg.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(v.x), "f"(v.y) : "memory");
}

// MB: m16 tiles per CTA (rows 16·MB per pass over the weights); MB = 0 is the swapped form for
// m ≤ 8 (8 rows per pass, see `compute_stage_sw`); NCH: 64-column chunks per tile;
// KT: k16 tiles per tile (= per pipeline stage); STAGES: pipeline depth.
// `group_log2`: log2 of the group size (5, 6, 7), 0 for per-channel scales.
// Shared memory (bytes) must match `MarlinConfig::smem_bytes` on the host:
//   STAGES · (16·MB·16·KT·2 + KT·NCH·512 + (KT/2)·64·NCH·2) + (8/NCH > 1 ? NCH·MB·32·32·4 : 0)
// Every address a thread issues per stage is precomputed (per thread, per tile column) so the
// main loop is dequantization and mma, not index arithmetic: at m = 1 the loop body is what
// bounds the streaming rate.
template <int MBT, int NCH, int KT, int STAGES, bool PF>
__device__ __forceinline__ void marlin_w4a16(const u16* __restrict__ A, const int4* __restrict__ B,
                                             const u16* __restrict__ S, float* __restrict__ C,
                                             int* __restrict__ locks, int m, int n, int k,
                                             int group_log2, int iters) {
    constexpr bool SW = MBT == 0;
    constexpr int MB = SW ? 1 : MBT;
    constexpr int RP = SW ? 8 : 16 * MB;  // activation rows per pass over the weights
    constexpr int TN = 64 * NCH;
    constexpr int TK = 16 * KT;
    constexpr int KW = WARPS / NCH;  // warps splitting one tile along k
    constexpr int KPW = KT / KW;     // k16 tiles per warp per stage
    static_assert(WARPS % NCH == 0 && KT % KW == 0, "warp split");
    static_assert(TK >= 64, "A swizzle needs at least 8 16-byte chunks per row");
    constexpr int CPR = TK / 8;  // 16-byte chunks per A row
    constexpr int A_BYTES = MB * 16 * TK * 2;
    constexpr int B_BYTES = KT * NCH * 512;
    constexpr int S_ROWS = TK / 32;  // scale rows one stage can touch (group ≥ 32)
    constexpr int S_BYTES = S_ROWS * TN * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES + S_BYTES;
    constexpr int ACC = MB * 8 * 4;  // accumulator floats per thread
    constexpr int A_CHUNKS = MB * 16 * CPR;
    constexpr int A_ITERS = (A_CHUNKS + THREADS - 1) / THREADS;
    constexpr int B_CHUNKS = KT * NCH * 32;
    constexpr int B_ITERS = B_CHUNKS / THREADS;
    static_assert(B_CHUNKS % THREADS == 0 && THREADS % (NCH * 32) == 0, "B copy split");

    extern __shared__ int4 smem_i4[];
    char* smem = reinterpret_cast<char*>(smem_i4);
    float* red = reinterpret_cast<float*>(smem + STAGES * STAGE_BYTES);
    const u32 smem_u32 = smem_addr(smem);

    const int k_tiles = k / TK;
    const int n_tiles = n / TN;
    const int m_copies = (m + RP - 1) / RP;
    const int total = m_copies * n_tiles * k_tiles;
    const int u_begin = blockIdx.x * iters;
    const int u_end = min(u_begin + iters, total);
    if (u_begin >= u_end) return;

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int ch = warp % NCH, kw = warp / NCH;
    const bool grouped = group_log2 > 0;
    const int group = grouped ? 1 << group_log2 : 0;
    // Scale row of local k16 tile kk: kk >> srow_shift (0 when a group spans the whole stage).
    const int srow_shift = (!grouped || group > TK) ? 31 : group_log2 - 4;
    const int s_rows = grouped ? (group < TK ? TK >> group_log2 : 1) : 0;
    const size_t b_row_int4 = (size_t)n / 2;  // 2n words per k16 row

    // ---- per-thread copy offsets (independent of the tile) ----
    // A: chunk i = tid + j·THREADS → row i / CPR, 16-byte column i % CPR, XOR-swizzled by row.
    u32 a_dst[A_ITERS];
    int a_row[A_ITERS], a_col[A_ITERS];
#pragma unroll
    for (int j = 0; j < A_ITERS; j++) {
        const int i = tid + j * THREADS;
        const int r = i / CPR, c = i % CPR;
        a_row[j] = r;
        a_col[j] = c * 8;
        a_dst[j] = r * TK * 2 + ((c ^ (r & 7)) * 16);
    }
    // B: chunk i = tid + j·THREADS → k16 row i / (NCH·32), lane slot i % (NCH·32).
    const size_t b_off0 = (size_t)(tid / (NCH * 32)) * b_row_int4 + tid % (NCH * 32);
    const size_t b_step = (size_t)(THREADS / (NCH * 32)) * b_row_int4;
    const u32 b_dst0 = A_BYTES + tid * 16;
    // Scales: one 16-byte chunk per thread for the first s_rows·TN/8 threads.
    const bool s_active = tid < s_rows * (TN / 8);
    const int s_r = tid / (TN / 8), s_c = tid % (TN / 8);
    const u32 s_dst = A_BYTES + B_BYTES + tid * 16;

    // ---- the load cursor: tile column (pass p, column nt) and k tile ----
    const u16* a_src[A_ITERS];
    bool a_ok[A_ITERS];
    const int4* b_col = B;
    const u16* s_col = S;
    auto set_load_column = [&](int col) {
        const int p = col / n_tiles, nt = col % n_tiles;
#pragma unroll
        for (int j = 0; j < A_ITERS; j++) {
            const int row = p * RP + a_row[j];
            a_ok[j] = row < m && a_row[j] < RP &&
                      (A_CHUNKS % THREADS == 0 || tid + j * THREADS < A_CHUNKS);
            a_src[j] = A + (size_t)(a_ok[j] ? row : 0) * k + a_col[j];
        }
        b_col = B + nt * NCH * 32 + b_off0;
        s_col = S + nt * TN + s_c * 8;
    };
    auto load_stage = [&](int st, int kt) {
        const u32 base = smem_u32 + st * STAGE_BYTES;
        const int k0 = kt * TK;
#pragma unroll
        for (int j = 0; j < A_ITERS; j++) {
            if (A_CHUNKS % THREADS == 0 || tid + j * THREADS < A_CHUNKS)
                cp_async16(base + a_dst[j], a_src[j] + k0, a_ok[j]);
        }
        const int4* bb = b_col + (size_t)kt * KT * b_row_int4;
#pragma unroll
        for (int j = 0; j < B_ITERS; j++) cp_async16_stream<PF>(base + b_dst0 + j * THREADS * 16, bb + j * b_step);
        if (s_active) cp_async16(base + s_dst, s_col + (size_t)((k0 >> group_log2) + s_r) * n, true);
    };

    float acc[MB][8][4];
#pragma unroll
    for (int a = 0; a < MB; a++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][j][e] = 0.0f;

    // ldmatrix row/column of this lane inside an m16×k16 A tile.
    const int ld_row = (lane % 8) + 8 * ((lane / 8) & 1);
    const int ld_half = lane / 16;

    // Shared loads are issued HB k16 tiles ahead of their mma so their latency overlaps; HB
    // shrinks with MB to keep the A fragments in registers (no spills).
    constexpr int HB = (MB * KPW <= 4) ? KPW : (MB <= 2 && KPW >= 2 ? 2 : 1);
    auto compute_stage = [&](int st) {
        const char* sa = smem + st * STAGE_BYTES;
        const char* sb = sa + A_BYTES;
        const char* ss = sb + B_BYTES;
#pragma unroll
        for (int j0 = 0; j0 < KPW; j0 += HB) {
            int4 bq[HB], sv[HB];
            u32 a[HB][MB][4];
#pragma unroll
            for (int h = 0; h < HB; h++) {
                const int kk = kw * KPW + j0 + h;
                bq[h] = *reinterpret_cast<const int4*>(sb + ((kk * NCH + ch) * 32 + lane) * 16);
                sv[h] = make_int4(0, 0, 0, 0);
                if (grouped)
                    sv[h] = *reinterpret_cast<const int4*>(
                        ss + (((kk >> srow_shift) * TN) + ch * 64 + 8 * (lane / 4)) * 2);
#pragma unroll
                for (int mb = 0; mb < MB; mb++) {
                    const int row = mb * 16 + ld_row;
                    const int chunk = kk * 2 + ld_half;
                    ldmatrix_x4(a[h][mb],
                                smem_u32 + st * STAGE_BYTES + row * TK * 2 + ((chunk ^ (row & 7)) * 16));
                }
            }
#pragma unroll
            for (int h = 0; h < HB; h++) {
                const u32 words[4] = {(u32)bq[h].x, (u32)bq[h].y, (u32)bq[h].z, (u32)bq[h].w};
                const u32 svw[4] = {(u32)sv[h].x, (u32)sv[h].y, (u32)sv[h].z, (u32)sv[h].w};
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    u32 f[4];
                    dequant_word(words[w], f);
                    if (grouped) {
                        const u32 s0 = __byte_perm(svw[w], 0, 0x1010);  // scale of subtile 2w, twice
                        const u32 s1 = __byte_perm(svw[w], 0, 0x3232);  // scale of subtile 2w+1
                        f[0] = hmul2(f[0], s0);
                        f[1] = hmul2(f[1], s0);
                        f[2] = hmul2(f[2], s1);
                        f[3] = hmul2(f[3], s1);
                    }
#pragma unroll
                    for (int mb = 0; mb < MB; mb++) {
                        mma_16816(acc[mb][2 * w], a[h][mb], f[0], f[1]);
                        mma_16816(acc[mb][2 * w + 1], a[h][mb], f[2], f[3]);
                    }
                }
            }
        }
    };

    // m ≤ 8: the weights are the mma's A operand (16 output columns × k16 per mma, half the mmas
    // of the B-operand form, whose 16 activation rows would be mostly padding) and the 8
    // activation rows its B operand. A Marlin word's four registers are exactly an A fragment:
    // {f0, f2, f1, f3} = rows (g, g+8) × k (2t.., 2t+8..) of the 16-column block. The codes
    // enter the mma unscaled (q − 8 is exact in f16); each scale group's partial sums are
    // multiplied by the f32 scale once, so the inner loop is dequantization and one mma per word.
    // Accumulator acc[0][w][e]: column 16w + 8(e/2) + lane/4 of the chunk, row 2(lane%4) + e%2.
    // `whole`: the warp's KPW tiles share one scale group (callers pass a literal).
    auto compute_stage_sw = [&](int st, const bool whole) {
        const u32 sa = smem_u32 + st * STAGE_BYTES;
        const char* sb = smem + st * STAGE_BYTES + A_BYTES;
        const char* ss = sb + B_BYTES;
        int4 bq[KPW];
        u32 af[KPW][4];
#pragma unroll
        for (int h = 0; h < KPW; h++) {
            const int kk = kw * KPW + h;
            bq[h] = *reinterpret_cast<const int4*>(sb + ((kk * NCH + ch) * 32 + lane) * 16);
            const int chunk = kk * 2 + ld_half;
            ldmatrix_x4(af[h], sa + ld_row * TK * 2 + ((chunk ^ (ld_row & 7)) * 16));
        }
        float t[4][4];
#pragma unroll
        for (int h = 0; h < KPW; h++) {
            const u32 words[4] = {(u32)bq[h].x, (u32)bq[h].y, (u32)bq[h].z, (u32)bq[h].w};
#pragma unroll
            for (int w = 0; w < 4; w++) {
                u32 f[4];
                dequant_word(words[w], f);
                const u32 fa[4] = {f[0], f[2], f[1], f[3]};
                if (!whole || h == 0)
                    mma_16816_z(t[w], fa, af[h][0], af[h][2]);
                else
                    mma_16816(t[w], fa, af[h][0], af[h][2]);
            }
            if (!whole || h == KPW - 1) {
                const int kk = kw * KPW + h;
                u32 svw[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};  // 1.0
                if (grouped) {
                    const int4 v = *reinterpret_cast<const int4*>(
                        ss + (((kk >> srow_shift) * TN) + ch * 64 + 8 * (lane / 4)) * 2);
                    svw[0] = v.x;
                    svw[1] = v.y;
                    svw[2] = v.z;
                    svw[3] = v.w;
                }
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    const float s0 = half_to_float((u16)(svw[w] & 0xffff));
                    const float s1 = half_to_float((u16)(svw[w] >> 16));
                    acc[0][w][0] += t[w][0] * s0;
                    acc[0][w][1] += t[w][1] * s0;
                    acc[0][w][2] += t[w][2] * s1;
                    acc[0][w][3] += t[w][3] * s1;
                }
            }
        }
    };
    // Whether a scale group spans each warp's KPW tiles of a stage (always for per-channel).
    const bool sw_whole = !grouped || group >= 16 * KPW;

    // End of a stripe segment over tile column `colp`: reduce the k-warps, then add into C in
    // the column's fixed CTA order.
    auto finish_slice = [&](int colp) {
        const int p = colp / n_tiles, nt = colp % n_tiles;
        if (KW > 1) {
            float* buf = red + ch * (ACC * 32);
#pragma unroll 1
            for (int r = KW - 1; r > 0; r--) {
                if (kw == r) {
#pragma unroll
                    for (int a = 0; a < MB; a++)
#pragma unroll
                        for (int j = 0; j < 8; j++)
#pragma unroll
                            for (int e = 0; e < 4; e++) {
                                const int idx = ((a * 8 + j) * 4 + e) * 32 + lane;
                                float v = acc[a][j][e];
                                if (r != KW - 1) v += buf[idx];
                                buf[idx] = v;
                            }
                }
                __syncthreads();
            }
            if (kw == 0) {
#pragma unroll
                for (int a = 0; a < MB; a++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            acc[a][j][e] += buf[((a * 8 + j) * 4 + e) * 32 + lane];
            }
        }
        const int b_first = (colp * k_tiles) / iters;
        const int b_last = ((colp + 1) * k_tiles - 1) / iters;
        const int slice_count = b_last - b_first + 1;
        const int slice_idx = b_last - (int)blockIdx.x;
        if (slice_count > 1) {
            if (tid == 0) {
                while (ld_acquire(&locks[colp]) != slice_idx) {
                }
            }
            __syncthreads();
        }
        if (SW && kw == 0) {
#pragma unroll
            for (int w = 0; w < 4; w++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = p * RP + 2 * (lane % 4) + (e & 1);
                    const int c64 = 16 * w + 8 * (e >> 1) + lane / 4;  // column in the chunk
                    if (row < m) {
                        const int col = nt * TN + ch * 64 + c64;
                        float* dst = C + (size_t)row * n + col;
                        float v = acc[0][w][e];
                        if (!grouped) {
                            // per-channel permutation: column 8j + 2tt + e' at 32(j/4) + 8tt + 2(j%4) + e'
                            const int j = c64 / 8, tt = (c64 % 8) / 2;
                            v *= half_to_float(
                                S[nt * TN + ch * 64 + 32 * (j / 4) + 8 * tt + 2 * (j % 4) + (c64 & 1)]);
                        }
                        if (slice_idx > 0) v += ld_cg_f1(dst);
                        st_cg_f1(dst, v);
                    }
                }
        }
        if (!SW && kw == 0) {
            float scl[8][2];
            if (!grouped) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int4 v = *reinterpret_cast<const int4*>(
                        S + nt * TN + ch * 64 + 32 * h + 8 * (lane % 4));
                    const u32 vw[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
#pragma unroll
                    for (int jj = 0; jj < 4; jj++) {
                        scl[4 * h + jj][0] = half_to_float((u16)(vw[jj] & 0xffff));
                        scl[4 * h + jj][1] = half_to_float((u16)(vw[jj] >> 16));
                    }
                }
            }
#pragma unroll
            for (int a = 0; a < MB; a++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int row = p * MB * 16 + a * 16 + lane / 4 + 8 * hh;
                    if (row < m) {
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            const int col = nt * TN + ch * 64 + 8 * j + 2 * (lane % 4);
                            float* dst = C + (size_t)row * n + col;
                            float2 v = make_float2(acc[a][j][2 * hh], acc[a][j][2 * hh + 1]);
                            if (!grouped) {
                                v.x *= scl[j][0];
                                v.y *= scl[j][1];
                            }
                            if (slice_idx > 0) {
                                const float2 o = ld_cg_f2(dst);
                                v.x += o.x;
                                v.y += o.y;
                            }
                            st_cg_f2(dst, v);
                        }
                    }
                }
        }
        if (slice_count > 1) {
            __threadfence();
            __syncthreads();
            if (tid == 0) st_release(&locks[colp], slice_idx == slice_count - 1 ? 0 : slice_idx + 1);
        }
#pragma unroll
        for (int a = 0; a < MB; a++)
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[a][j][e] = 0.0f;
    };

    // ---- pipeline: prologue, then one tile per iteration ----
    int ld_col = u_begin / k_tiles, ld_kt = u_begin % k_tiles;
    set_load_column(ld_col);
    auto advance_load = [&]() {
        if (++ld_kt == k_tiles) {
            ld_kt = 0;
            set_load_column(++ld_col);
        }
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (u_begin + s < u_end) {
            load_stage(s, ld_kt);
            advance_load();
        }
        cp_async_commit();
    }
    int st = 0, ld_st = STAGES - 1;
    int cp_col = u_begin / k_tiles, cp_kt = u_begin % k_tiles;
#pragma unroll 1
    for (int u = u_begin; u < u_end; u++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (u + STAGES - 1 < u_end) {
            load_stage(ld_st, ld_kt);
            advance_load();
        }
        cp_async_commit();
        ld_st = (ld_st + 1 == STAGES) ? 0 : ld_st + 1;
        if constexpr (SW) {
            if (sw_whole)
                compute_stage_sw(st, true);
            else
                compute_stage_sw(st, false);
        } else {
            compute_stage(st);
        }
        st = (st + 1 == STAGES) ? 0 : st + 1;
        const bool col_end = ++cp_kt == k_tiles;
        if (col_end || u + 1 == u_end) finish_slice(cp_col);
        if (col_end) {
            cp_kt = 0;
            cp_col++;
        }
    }
}

}  // namespace

// One entry point per configuration; the host picks by name (kernels/src/marlin.rs, whose
// `MARLIN_CONFIGS` lists exactly these). OCC is the CTAs per SM the register budget is cut for;
// PF selects the 256-byte L2 prefetch on the weight stream.
#define MARLIN_ENTRY(MB, NCH, KT, ST, OCC, PF)                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS, OCC)                                   \
        marlin_w4a16_m##MB##_n##NCH##_k##KT##_s##ST##_o##OCC##_p##PF(                            \
            const u16* __restrict__ A, const int4* __restrict__ B, const u16* __restrict__ S,    \
            float* __restrict__ C, int* __restrict__ locks, int m, int n, int k, int group_log2, \
            int iters) {                                                                         \
        marlin_w4a16<MB, NCH, KT, ST, PF>(A, B, S, C, locks, m, n, k, group_log2, iters);       \
    }

#define MARLIN_ENTRY_MB(NCH, KT, ST, PF) \
    MARLIN_ENTRY(1, NCH, KT, ST, 1, PF)  \
    MARLIN_ENTRY(2, NCH, KT, ST, 1, PF)  \
    MARLIN_ENTRY(3, NCH, KT, ST, 1, PF)  \
    MARLIN_ENTRY(4, NCH, KT, ST, 1, PF)

// m ≤ 8, swapped operands: 256-deep k stages (128, 256 or 64 columns), and the 64×128 tile
// that divides every legal shape. Two-CTA-per-SM and 128-deep variants were slower on an H200.
MARLIN_ENTRY(0, 2, 16, 3, 1, 0)
MARLIN_ENTRY(0, 4, 16, 3, 1, 1)
MARLIN_ENTRY(0, 1, 16, 4, 1, 0)
MARLIN_ENTRY(0, 1, 8, 4, 1, 0)
// Every m: 128×128 tiles (4 k-warps × 2 n-chunks), 256×128 (2 × 4), 64×128 (8 k-warps; also
// the fallback for n % 128 != 0).
MARLIN_ENTRY_MB(2, 8, 4, 0)
MARLIN_ENTRY_MB(4, 8, 4, 0)
MARLIN_ENTRY_MB(1, 8, 4, 0)
// m ≤ 16 (weight streaming): 256-deep k stages, and two CTAs per SM for very wide n.
MARLIN_ENTRY(1, 2, 16, 3, 1, 0)
MARLIN_ENTRY(1, 4, 16, 3, 1, 1)
MARLIN_ENTRY(1, 2, 8, 4, 2, 1)
