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
// Measured status of this stream kernel (H200, kernels/examples/bench_marlin.rs, back-to-back
// launches, group 128): m = 1: 19.9 µs on 8192² (1.8× cuBLAS BF16), 17.5 µs 4096×11008 (1.5×),
// 21.0 µs 11008×4096 (1.3×), 39.4 µs 8192×28672 (2.7×); m = 16: 0.9–1.8×; m ≥ 64 slower than
// cuBLAS (0.4–0.9×). Nsight Compute on the 8192² m = 1 launch: DRAM 25–30 % busy, ~0.42
// instructions issued per scheduler per cycle, stalled on fixed-latency dependencies, the
// per-stage __syncthreads and the math pipes — bound by instruction latency/count, not memory.
// For m ≤ 16 the register-direct kernel at the end of this file is the default (no shared-
// memory pipeline, no barrier in its loop): 1.8–2.9× cuBLAS at m = 1, see its header and
// docs/PERFORMANCE.md. This kernel stays the default for m > 16 (and for 9 ≤ m ≤ 16 on very
// wide n) and selectable everywhere.

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

// ---------------------------------------------------------------------------------------------
// Register-direct small-batch kernel (m ≤ 16), `marlin_small_g{NG}_w{W}_d{D}_l{GL}`.
//
// Why a second kernel: at m ≤ 16 the stream kernel above is bound by instruction latency and the
// per-stage __syncthreads of its shared-memory pipeline, not by HBM. Each Marlin 16×64 (k × n)
// tile already stores, per lane, one 16-byte word holding exactly that lane's mma fragments, so
// a warp can load its weights straight into registers: no shared staging, no cp.async, and no
// barrier in the main loop. Memory-level parallelism comes from a register ring of D 128-deep
// k blocks: while the 8 tiles of one block are dequantized and multiplied, the loads of the
// next D blocks are in flight (4·D KiB per warp).
//
// Work split: a CTA owns `spc` adjacent 64-column strips and one of `splits` contiguous ranges
// of 128-deep k blocks (as equal as integers allow); warp w works on strip w % spc and on part
// w / spc of the CTA's k range. Several strips per CTA share one copy of the activations, whose
// shared-memory traffic at m = 16 would otherwise equal the weight traffic. Operands are swapped
// as in the m ≤ 8 stream variant: dequantized weights are the mma A operand (16 output columns
// × k16), activations the B operand (8 batch rows; NG = 2 runs two mmas per word for m ≤ 16).
// The CTA's activation rows and group scales are staged in shared memory once, before the loop
// (while the first weight blocks are already loading). Group scales multiply f32 per-group
// partial sums; per-channel scales multiply the final sum.
// Reductions are deterministic: the k parts of a strip are summed through shared memory in
// order; with splits > 1 every CTA stores its partial [m, 64·spc] block to `partial[split]`,
// and the last CTA to arrive (atomic counter per strip group, which it resets to 0) sums the
// splits in index order.
// Shared memory (bytes), mirrored by `SmallConfig::smem_bytes` on the host, with
// ncb = ceil((k/128) / splits):
//   max(m·(64·ncb + 8)·4, W·NG·16·32·4)  [activations, later the warp reduction]
//   + (group ? (128·ncb >> log2 group)·128·spc : 0)  [scales]
//
// Measured (H200, group 128, default launch shapes, docs/PERFORMANCE.md): m = 1: 16.5 µs on
// 8192² (2.1× cuBLAS BF16, 42 % of HBM), 12.8 µs 4096×11008 (2.0×), 14.0 µs 11008×4096 (2.0×),
// 36.5 µs 8192×28672 (2.9×, 67 %); m = 16: 1.2–1.3×. Nsight Compute, 4096×11008 m = 1: DRAM
// 36 % busy over the launch, long-scoreboard (memory latency) the main stall, 33 % issue
// active. Tried without gain: a two-block ring (12 warps per SM), 4-warp CTAs, L2 prefetches
// 1–6 blocks beyond the ring (5–20 % slower). Time ≈ 7.2 µs + bytes / 4.0 TB/s over the
// shapes (cuBLAS BF16: 6.8 µs + bytes / 4.7 TB/s); a one-CTA launch alone takes 4.8 µs.

namespace {

__device__ __forceinline__ int4 ldg_stream(const int4* p) {
    int4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.s32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

template <int NG, int W, int D, int GL>
__device__ __forceinline__ void marlin_small(const u16* __restrict__ A, const int4* __restrict__ B,
                                             const u16* __restrict__ S, float* __restrict__ C,
                                             float* __restrict__ partial, int* __restrict__ counters,
                                             int m, int n, int k, int splits, int spc) {
    constexpr int NT = W * 32;
    constexpr int TPG = GL > 0 ? 1 << (GL - 4) : 8;  // k16 tiles per scale group
    extern __shared__ int4 smem_i4[];
    char* smem = reinterpret_cast<char*>(smem_i4);
    __shared__ int last_cta;

    const int strips = n / 64;
    const int sgroups = (strips + spc - 1) / spc;
    const int sg = blockIdx.x % sgroups;
    const int split = blockIdx.x / sgroups;
    const int kparts = W / spc;
    const int kb_total = k >> 7;
    const int ncb_max = (kb_total + splits - 1) / splits;
    const int cb0 = (int)((long long)split * kb_total / splits);
    const int cb1 = (int)((long long)(split + 1) * kb_total / splits);
    const int ncb = cb1 - cb0;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int sl = warp % spc, kp = warp / spc;
    const int strip = sg * spc + sl;
    const int wb0 = cb0 + ncb * kp / kparts;
    const int wb1 = strip < strips ? cb0 + ncb * (kp + 1) / kparts : wb0;

    // The first D weight blocks in flight before anything else.
    const size_t row_i4 = (size_t)n / 2;  // int4 per k16 row of B
    const int4* bp = B + (size_t)wb0 * 8 * row_i4 + strip * 32 + lane;
    int4 buf[D][8];
#pragma unroll
    for (int d = 0; d < D; d++)
        if (wb0 + d < wb1) {
#pragma unroll
            for (int j = 0; j < 8; j++) buf[d][j] = ldg_stream(bp + (d * 8 + j) * row_i4);
        }

    // Activations: the m rows of the CTA's k range, as 32-bit words with a row stride of
    // 64·ncb + 8 words; inside each k16 tile word t (k 2t, 2t+1) is stored at 2t and word t + 4
    // at 2t + 1, so a lane's two B registers are one 8-byte load (conflict-free: the stride is
    // 8 mod 32 banks, and 8-byte loads are served per half warp). Lanes of batch columns ≥ m
    // read row m − 1 instead: column j of the mma's B only reaches column j of its result,
    // which is never stored.
    const int xs_stride = 64 * ncb_max + 8;
    u32* xs = reinterpret_cast<u32*>(smem);
    const int x_bytes = m * xs_stride * 4;
    const int red_bytes = W * NG * 16 * 32 * 4;
    u16* ss = reinterpret_cast<u16*>(smem + (x_bytes > red_bytes ? x_bytes : red_bytes));
    {
        const int q_per_row = ncb * 16;  // 16-byte pieces (4 words = half a k16 tile) per row
        const int k0 = cb0 * 128;
        for (int i = tid; i < m * q_per_row; i += NT) {
            const int r = i / q_per_row, q = i % q_per_row;
            const int4 v = *reinterpret_cast<const int4*>(A + (size_t)r * k + k0 + q * 8);
            u32* d = xs + r * xs_stride + (q >> 1) * 8 + (q & 1);
            d[0] = v.x;
            d[2] = v.y;
            d[4] = v.z;
            d[6] = v.w;
        }
        if (GL > 0) {
            // [group][strip of the CTA][64 columns]
            const int groups = (ncb * 128) >> GL;
            const int g0 = (k0 >> GL);
            for (int i = tid; i < groups * spc * 8; i += NT) {
                const int gr = i / (spc * 8), s_l = (i / 8) % spc, c = i % 8;
                const int st = sg * spc + s_l;
                if (st < strips)
                    reinterpret_cast<int4*>(ss)[i] =
                        *reinterpret_cast<const int4*>(S + (size_t)(g0 + gr) * n + st * 64 + c * 8);
            }
        }
    }
    __syncthreads();

    const int g = lane / 4, t = lane % 4;
    float acc[NG][4][4];
    float tq[NG][4][4];
#pragma unroll
    for (int gi = 0; gi < NG; gi++)
#pragma unroll
        for (int w = 0; w < 4; w++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[gi][w][e] = 0.0f;
    const u32* xrow[NG];
#pragma unroll
    for (int gi = 0; gi < NG; gi++) xrow[gi] = xs + min(8 * gi + g, m - 1) * xs_stride + 2 * t;

#pragma unroll 1
    for (int b0 = wb0; b0 < wb1; b0 += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int b = b0 + d;
            if (D > 1 && b >= wb1) break;
            const bool more = b + D < wb1;
            const int4* pn = bp + (size_t)(b - wb0 + D) * 8 * row_i4;
            const int lb = b - cb0;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                // NG = 1 dequantizes first and then reuses the word's registers for the next
                // block's load (issuing it earlier makes the compiler copy the ring every block,
                // ~10 % of the loop); NG = 2 loads first, which needs fewer registers there.
                const u32 words[4] = {(u32)buf[d][j].x, (u32)buf[d][j].y, (u32)buf[d][j].z,
                                      (u32)buf[d][j].w};
                if (NG > 1 && more) buf[d][j] = ldg_stream(pn);
                u32 fw[4][4];
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    u32 f[4];
                    dequant_word(words[w], f);
                    fw[w][0] = f[0];
                    fw[w][1] = f[2];
                    fw[w][2] = f[1];
                    fw[w][3] = f[3];
                }
                if (NG == 1 && more) buf[d][j] = ldg_stream(pn);
                pn += row_i4;
                u32 xb[NG][2];
#pragma unroll
                for (int gi = 0; gi < NG; gi++) {
                    const uint2 v = *reinterpret_cast<const uint2*>(xrow[gi] + lb * 64 + j * 8);
                    xb[gi][0] = v.x;
                    xb[gi][1] = v.y;
                }
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    const u32(&fa)[4] = fw[w];
#pragma unroll
                    for (int gi = 0; gi < NG; gi++) {
                        if (GL == 0)
                            mma_16816(acc[gi][w], fa, xb[gi][0], xb[gi][1]);
                        else if (j % TPG == 0)
                            mma_16816_z(tq[gi][w], fa, xb[gi][0], xb[gi][1]);
                        else
                            mma_16816(tq[gi][w], fa, xb[gi][0], xb[gi][1]);
                    }
                }
                if (GL > 0 && j % TPG == TPG - 1) {
                    const int gl = (lb * 128 + j * 16) >> (GL > 0 ? GL : 0);
                    const int4 v = *reinterpret_cast<const int4*>(ss + (gl * spc + sl) * 64 + g * 8);
                    const u32 svw[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
#pragma unroll
                    for (int w = 0; w < 4; w++) {
                        const float s0 = half_to_float((u16)(svw[w] & 0xffff));
                        const float s1 = half_to_float((u16)(svw[w] >> 16));
#pragma unroll
                        for (int gi = 0; gi < NG; gi++) {
                            acc[gi][w][0] += tq[gi][w][0] * s0;
                            acc[gi][w][1] += tq[gi][w][1] * s0;
                            acc[gi][w][2] += tq[gi][w][2] * s1;
                            acc[gi][w][3] += tq[gi][w][3] * s1;
                        }
                    }
                }
            }
        }
    }

    // Reduction of each strip's k parts in order. Accumulator (gi, w, e) of lane (g, t) is
    // output column 16w + 8(e/2) + g of the strip, batch row 8·gi + 2t + e%2.
    __syncthreads();  // the reduction buffer overlays the activations
    constexpr int EL = NG * 16 * 32;
    float* red = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int gi = 0; gi < NG; gi++)
#pragma unroll
        for (int w = 0; w < 4; w++)
#pragma unroll
            for (int e = 0; e < 4; e++) red[warp * EL + ((gi * 4 + w) * 4 + e) * 32 + lane] = acc[gi][w][e];
    __syncthreads();

    // Per-channel scale of column c64 of strip st (permuted: column 8j + 2tt + e' at
    // 32(j/4) + 8tt + 2(j%4) + e').
    auto pc_scale = [&](int st, int c64) {
        const int j = c64 / 8, tt = (c64 % 8) / 2;
        return half_to_float(S[st * 64 + 32 * (j / 4) + 8 * tt + 2 * (j % 4) + (c64 & 1)]);
    };
    for (int idx = tid; idx < spc * EL; idx += NT) {
        const int s_l = idx / EL, ei = idx % EL;
        float v = red[s_l * EL + ei];
        for (int p = 1; p < kparts; p++) v += red[(p * spc + s_l) * EL + ei];
        const int i = ei / 32, ln = ei % 32;
        const int gi = i / 16, w = (i / 4) % 4, e = i % 4;
        const int c64 = 16 * w + 8 * (e >> 1) + ln / 4;
        const int row = gi * 8 + 2 * (ln % 4) + (e & 1);
        const int st = sg * spc + s_l;
        if (row < m && st < strips) {
            const size_t o = (size_t)row * n + st * 64 + c64;
            if (splits == 1)
                C[o] = GL == 0 ? v * pc_scale(st, c64) : v;
            else
                st_cg_f1(partial + (size_t)split * m * n + o, v);
        }
    }
    if (splits == 1) return;
    __threadfence();
    __syncthreads();
    if (tid == 0) last_cta = atomicAdd(&counters[sg], 1) == splits - 1;
    __syncthreads();
    if (!last_cta) return;
    __threadfence();
    for (int idx = tid; idx < spc * 64 * m; idx += NT) {
        const int row = idx / (spc * 64), cc = idx % (spc * 64);
        const int st = sg * spc + cc / 64, c64 = cc % 64;
        if (st >= strips) continue;
        const size_t o = (size_t)row * n + st * 64 + c64;
        float v = ld_cg_f1(partial + o);
        for (int s = 1; s < splits; s++) v += ld_cg_f1(partial + (size_t)s * m * n + o);
        C[o] = GL == 0 ? v * pc_scale(st, c64) : v;
    }
    if (tid == 0) counters[sg] = 0;
}

}  // namespace

// `marlin_small_g{NG}_w{W}_d{D}_l{GL}(A, B, S, C, partial, counters, m, n, k, splits, spc)`:
// NG n8 batch groups (1: m ≤ 8, 2: m ≤ 16), W warps per CTA, a ring of D k blocks per warp,
// GL = log2 of the group size (0: per-channel). Registers are budgeted for 16 warps per SM
// (D = 1) or 12 (D = 2). Grid: ceil((n/64) / spc)·splits CTAs; spc divides W.
#define MARLIN_SMALL_ENTRY(NG, W, D, GL)                                                         \
    extern "C" __global__ void __launch_bounds__(W * 32, (D == 1 ? 16 : 12) / W)                \
        marlin_small_g##NG##_w##W##_d##D##_l##GL(                                                \
            const u16* __restrict__ A, const int4* __restrict__ B, const u16* __restrict__ S,    \
            float* __restrict__ C, float* __restrict__ partial, int* __restrict__ counters,      \
            int m, int n, int k, int splits, int spc) {                                          \
        marlin_small<NG, W, D, GL>(A, B, S, C, partial, counters, m, n, k, splits, spc);         \
    }
#define MARLIN_SMALL_ENTRY_GL(NG, W, D) \
    MARLIN_SMALL_ENTRY(NG, W, D, 0)     \
    MARLIN_SMALL_ENTRY(NG, W, D, 5)     \
    MARLIN_SMALL_ENTRY(NG, W, D, 6)     \
    MARLIN_SMALL_ENTRY(NG, W, D, 7)

MARLIN_SMALL_ENTRY_GL(1, 4, 1)
MARLIN_SMALL_ENTRY_GL(1, 8, 1)
MARLIN_SMALL_ENTRY_GL(2, 4, 1)
MARLIN_SMALL_ENTRY_GL(2, 8, 1)
MARLIN_SMALL_ENTRY_GL(1, 4, 2)
MARLIN_SMALL_ENTRY_GL(2, 4, 2)
