// Attention forward on Hopper tensor cores (wgmma), sm_90a only.
//
// Same contract, arguments, tile table and results as attention_fwd_mma_d*
// in kernels/attention.cu (read its header first): q [T, Hq, D], k, v
// [T, Hkv, D] bf16, o bf16, lse [Hq, T] f32, varlen sequences through the
// host's tile table (q0, seq_start, seq_end) of 64-row query tiles, causal
// or not, GQA, dropout by the shared hash (attention_common.cuh). The host
// (crates/tensor/src/cuda/attention.rs) loads this module only on compute
// capability 9.x and keeps attention.cu's kernels as the portable fallback.
//
// Two versions (docs/kernels.md has each one's prediction and outcome):
// v4 (attention_fwd_wgmma_d*): one warpgroup (4 warps, 128 threads) per CTA
// owns the tile's 64 query rows (warp w: rows 16w..16w+15, as v1). Per key
// tile of BC = 64 keys, one step after the other:
//   S = Q K^T   wgmma.m64n64k16, A = Q from registers (loaded once, v1's
//               fragments), B = K from shared memory (K-major);
//   online softmax in registers exactly as v3's FAST path (the wgmma
//               accumulator of warp w is the m16n8 C layout, n-tile j in
//               registers 4j..4j+3), dropout on P;
//   O += P V    wgmma.m64nDk16, A = P from registers (two adjacent n-tiles of
//               S make one k-step, as v1), B = V from shared memory read
//               N-major (imm-trans-b = 1: V is stored [key][d], d contiguous).
// K and V tiles are staged by cp.async into a two-stage ring (the next tile
// loads while this one computes), 128-byte swizzled so the tensor cores read
// them without bank conflicts.
// v5 (attention_fwd_wgmma_pipe_d*, the launcher's Hopper default): v4 with
// the next tile's S issued before this tile's P V, so the softmax of tile
// j + 1 runs on the CUDA cores while the tensor cores do P_j V_j
// (FlashAttention-3's intra-warpgroup overlap); three stages, P held twice.
//
// SHARED MEMORY LAYOUT (bf16; 1024-byte aligned: the swizzle repeats every
// 8 rows of 128 bytes, and descriptors assume atoms start on that boundary)
//   A [BC x D] tile is D/64 column blocks of [BC rows][64 values]; row r of a
//   block is 128 bytes at r*128, and its 16-byte chunk c lives at chunk
//   c ^ (r & 7) (the 128B swizzle: address bits 4-6 ^= bits 7-9).
//   K, as B of S (N = keys, K-dim = d; K-major): descriptor start = block
//   (kk/4) + 32*(kk%4) bytes for k-step kk, SBO = 1024 (next 8 keys),
//   LBO unused (1), swizzle 128B.
//   V, as B of O (K-dim = keys, N = d; N-major): start = 2048*kk bytes (16
//   keys = two 8-row groups), SBO = 1024 (next 8 keys), LBO = BC*128 (the
//   next 64 values of d: the next column block), swizzle 128B.
//   Stage s: K at s*2*TILE_BYTES, V at (s*2+1)*TILE_BYTES, TILE_BYTES = BC*D*2
//   (two stages in v4, three in v5).
//
// SYNCHRONISATION
//   cp.async writes (and the zero rows past seq_end, plain stores) are
//   generic-proxy writes that wgmma reads through the async proxy: each thread
//   waits for its copies, issues fence.proxy.async.shared::cta, then the CTA
//   barrier. wgmma.fence precedes each batch (accumulators and A registers
//   were written by ordinary instructions), commit + wait_group 0 follows
//   it, and an empty asm on every accumulator register after the wait keeps
//   the compiler from reading them before the wait. A stage is refilled only
//   after the barrier that ends the iteration that read it.

#include <cuda_bf16.h>
#include <stdint.h>
typedef __nv_bfloat16 bf16;

#include "attention_common.cuh"

namespace v4 {

constexpr int BR = 64;  // query rows per CTA (one warpgroup)
constexpr int BC = 64;  // keys per tile

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Ties `x` to this point of the instruction stream (see the header).
__device__ __forceinline__ void pin(float& x) { asm volatile("" : "+f"(x)::"memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle (byte offsets; 16-byte units in the bits).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// d[32] (+)= A[64x16] B[16x64]; A from registers (a[4]), B by descriptor, K-major.
__device__ __forceinline__ void wgmma_n64(float* d, const uint32_t* a, uint64_t desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
          "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
          "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}

// d[32] += A[64x16] B[16x64] with B read N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_n64_tb(float* d, const uint32_t* a, uint64_t desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
          "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
          "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

// d[64] += A[64x16] B[16x128] with B read N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_n128_tb(float* d, const uint32_t* a, uint64_t desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
          "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
          "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
          "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
          "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
          "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

// O (ND8 = D/8 n-tiles, 4 f32 each) += P_kstep V_kstep.
template <int D>
__device__ __forceinline__ void pv(float (&acc)[D / 8][4], const uint32_t* a, uint64_t desc) {
    if constexpr (D == 128) {
        wgmma_n128_tb(&acc[0][0], a, desc);
    } else {
        wgmma_n64_tb(&acc[0][0], a, desc);
    }
}

// Stages keys row0 .. row0+BC-1 of kv head `head` of a [T, H, D] tensor into
// a swizzled [BC x D] tile (async); rows at or past `end` become zeros.
template <int D>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* src, int row0, int end,
                                          int heads, int head) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < BC * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, chunk = c % CHUNKS;
        const int block = chunk >> 3, cc = chunk & 7;
        const uint32_t d = dst + block * (BC * 128) + r * 128 + ((cc ^ (r & 7)) << 4);
        const int tok = row0 + r;
        if (tok < end) {
            cp_async16(d, src + ((size_t)tok * heads + head) * D + chunk * 8);
        } else {
            asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(d), "r"(0) : "memory");
        }
    }
}

// S[64 x BC] = Q K^T for the K tile at `ks` (issued, not waited for).
template <int D>
__device__ __forceinline__ void issue_s(float (&sc)[BC / 8][4], const uint32_t (&qf)[D / 16][4],
                                        uint32_t ks) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t a = ks + (kk >> 2) * (BC * 128) + (kk & 3) * 32;
        wgmma_n64(&sc[0][0], qf[kk], desc_sw128(a, 16, 1024), kk > 0);
    }
}

// O += P V for the V tile at `vs` (issued, not waited for).
template <int D>
__device__ __forceinline__ void issue_pv(float (&acc)[D / 8][4], const uint32_t (&pf)[BC / 16][4],
                                         uint32_t vs) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
        pv<D>(acc, pf[kk], desc_sw128(vs + kk * 2048, BC * 128, 1024));
}

// The online-softmax state of a thread's two rows (row_a = gid, row_b = gid + 8).
struct RowState {
    float m_a, m_b, l_a, l_b;
};

// One key tile's softmax, as v3's FAST path: masks S (unscaled scores) for
// keys at or past s1 and, causal, above the diagonal; updates the running
// max and sum; returns the factors (corr_a, corr_b) that rescale O and
// leaves P (dropout applied) in pf as A fragments of P V.
__device__ __forceinline__ void softmax_tile(float (&sc)[BC / 8][4], uint32_t (&pf)[BC / 16][4],
                                             RowState& st, float& corr_a, float& corr_b, int k0,
                                             int q0, int s1, int causal, int row_a, int row_b,
                                             int tig, float scale_log2, int h, const Drop& drop) {
    constexpr int NS = BC / 8;
    const bool need_mask = (k0 + BC > s1) || (causal && k0 + BC - 1 > q0);
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float x = sc[n][r];
            if (need_mask) {
                const int key = k0 + n * 8 + tig * 2 + (r & 1);
                const int row = r < 2 ? row_a : row_b;
                if (key >= s1 || (causal && key > row)) x = -INFINITY;
            }
            sc[n][r] = x;
        }
        mx_a = fmaxf(mx_a, fmaxf(sc[n][0], sc[n][1]));
        mx_b = fmaxf(mx_b, fmaxf(sc[n][2], sc[n][3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    mx_a *= scale_log2;
    mx_b *= scale_log2;
    const float mn_a = fmaxf(st.m_a, mx_a), mn_b = fmaxf(st.m_b, mx_b);
    // A row with nothing visible yet keeps reference 0: exp2(-inf - 0) = 0, no NaN.
    const float base_a = mn_a == -INFINITY ? 0.0f : mn_a;
    const float base_b = mn_b == -INFINITY ? 0.0f : mn_b;
    corr_a = ex2_approx(st.m_a - base_a);
    corr_b = ex2_approx(st.m_b - base_b);
    st.m_a = mn_a;
    st.m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
        sc[n][0] = ex2_approx(fmaf(sc[n][0], scale_log2, -base_a));
        sc[n][1] = ex2_approx(fmaf(sc[n][1], scale_log2, -base_a));
        sc[n][2] = ex2_approx(fmaf(sc[n][2], scale_log2, -base_b));
        sc[n][3] = ex2_approx(fmaf(sc[n][3], scale_log2, -base_b));
        sum_a += sc[n][0] + sc[n][1];
        sum_b += sc[n][2] + sc[n][3];
    }
    st.l_a = st.l_a * corr_a + sum_a;
    st.l_b = st.l_b * corr_b + sum_b;
    if (drop.on) {
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int key = k0 + n * 8 + tig * 2 + (r & 1);
                sc[n][r] *= drop.factor(h, r < 2 ? row_a : row_b, key);
            }
        }
    }
    // P as A fragments: two adjacent n-tiles of S make one k-step.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
        pf[kk][0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
        pf[kk][1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
        pf[kk][2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pf[kk][3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
    }
}

template <int N>
__device__ __forceinline__ void pin_all(float (&x)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        pin(x[n][0]);
        pin(x[n][1]);
        pin(x[n][2]);
        pin(x[n][3]);
    }
}

template <int N>
__device__ __forceinline__ void scale_rows(float (&acc)[N][4], float corr_a, float corr_b) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        acc[n][0] *= corr_a;
        acc[n][1] *= corr_a;
        acc[n][2] *= corr_b;
        acc[n][3] *= corr_b;
    }
}

// Loads the thread's Q fragments (A of S) of rows row_a, row_b; zero past s1.
template <int D>
__device__ __forceinline__ void load_q(uint32_t (&qf)[D / 16][4], const bf16* q, int row_a,
                                      int row_b, int s1, int hq, int h, int tig) {
    const uint32_t* qa = reinterpret_cast<const uint32_t*>(q + ((size_t)row_a * hq + h) * D);
    const uint32_t* qb = reinterpret_cast<const uint32_t*>(q + ((size_t)row_b * hq + h) * D);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int c = (kk * 16 + tig * 2) / 2;  // in u32 units
        qf[kk][0] = row_a < s1 ? qa[c] : 0u;
        qf[kk][1] = row_b < s1 ? qb[c] : 0u;
        qf[kk][2] = row_a < s1 ? qa[c + 4] : 0u;
        qf[kk][3] = row_b < s1 ? qb[c + 4] : 0u;
    }
}

// o and lse of the thread's two rows (sums reduced over the 4 threads of a row).
template <int D>
__device__ __forceinline__ void store_rows(float (&acc)[D / 8][4], RowState st, bf16* o,
                                           float* lse, int row_a, int row_b, int s1, int hq,
                                           int h, int tig, int tokens) {
    st.l_a += __shfl_xor_sync(0xffffffffu, st.l_a, 1);
    st.l_a += __shfl_xor_sync(0xffffffffu, st.l_a, 2);
    st.l_b += __shfl_xor_sync(0xffffffffu, st.l_b, 1);
    st.l_b += __shfl_xor_sync(0xffffffffu, st.l_b, 2);
    const float inv_a = st.l_a > 0.0f ? 1.0f / st.l_a : 0.0f;
    const float inv_b = st.l_b > 0.0f ? 1.0f / st.l_b : 0.0f;
    if (row_a < s1) {
        uint32_t* oa = reinterpret_cast<uint32_t*>(o + ((size_t)row_a * hq + h) * D);
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            oa[(n * 8 + tig * 2) / 2] = pack_bf16(acc[n][0] * inv_a, acc[n][1] * inv_a);
        if (tig == 0)
            lse[(size_t)h * tokens + row_a] =
                st.l_a > 0.0f ? (st.m_a + log2f(st.l_a)) * LN2_F : -INFINITY;
    }
    if (row_b < s1) {
        uint32_t* ob = reinterpret_cast<uint32_t*>(o + ((size_t)row_b * hq + h) * D);
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            ob[(n * 8 + tig * 2) / 2] = pack_bf16(acc[n][2] * inv_b, acc[n][3] * inv_b);
        if (tig == 0)
            lse[(size_t)h * tokens + row_b] =
                st.l_b > 0.0f ? (st.m_b + log2f(st.l_b)) * LN2_F : -INFINITY;
    }
}

// v5: v4 with the next key tile's S = Q K^T issued before this tile's P V, so
// the softmax of tile j + 1 runs on the CUDA cores while the tensor cores do
// P_j V_j (FlashAttention-3's intra-warpgroup overlap). K/V go through a
// three-stage ring (tile j + 2 loads while j + 1's S and j's P V run); P is
// double-buffered in registers (the in-flight P V still reads P_j).
template <int D>
__device__ __forceinline__ void fwd_pipe(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, bf16* __restrict__ o,
                                         float* __restrict__ lse, const int* __restrict__ tiles,
                                         int tokens, int hq, int hkv, float scale_log2,
                                         int causal, Drop drop) {
    constexpr int NS = BC / 8, ND = D / 8;
    constexpr uint32_t TILE_BYTES = BC * D * 2, STAGE_BYTES = 2 * TILE_BYTES;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    auto stage = [&](int t) { return base + (uint32_t)(t % 3) * STAGE_BYTES; };

    const int q0 = tiles[3 * blockIdx.x], s0 = tiles[3 * blockIdx.x + 1];
    const int s1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int row_a = q0 + warp * 16 + gid, row_b = row_a + 8;

    uint32_t qf[D / 16][4];
    load_q<D>(qf, q, row_a, row_b, s1, hq, h, tig);
    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState st{-INFINITY, -INFINITY, 0.0f, 0.0f};
    float corr_a, corr_b;

    const int k_end = causal ? min(s1, q0 + BR) : s1;
    const int n_tiles = (k_end - s0 + BC - 1) / BC;

    // Prologue: tiles 0 and 1 in flight (one cp.async group each, maybe
    // empty), S_0 and its softmax.
    load_tile<D>(stage(0), k, s0, s1, hkv, g);
    load_tile<D>(stage(0) + TILE_BYTES, v, s0, s1, hkv, g);
    cp_async_commit();
    if (n_tiles > 1) {
        load_tile<D>(stage(1), k, s0 + BC, s1, hkv, g);
        load_tile<D>(stage(1) + TILE_BYTES, v, s0 + BC, s1, hkv, g);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    uint32_t pf[BC / 16][4];
    {
        float sc[NS][4];
        wgmma_fence();
        issue_s<D>(sc, qf, stage(0));
        wgmma_commit();
        wgmma_wait<0>();
        pin_all(sc);
        softmax_tile(sc, pf, st, corr_a, corr_b, s0, q0, s1, causal, row_a, row_b, tig,
                     scale_log2, h, drop);
    }

    for (int j = 0; j < n_tiles; ++j) {
        const bool has_next = j + 1 < n_tiles;
        // Stage (j + 2) % 3 held tile j - 1, whose readers finished before
        // the barrier that ended the last iteration.
        if (j + 2 < n_tiles) {
            const int k2 = s0 + (j + 2) * BC;
            load_tile<D>(stage(j + 2), k, k2, s1, hkv, g);
            load_tile<D>(stage(j + 2) + TILE_BYTES, v, k2, s1, hkv, g);
        }
        cp_async_commit();
        cp_async_wait<1>();  // tile j + 1 landed (j + 2 may be in flight)
        fence_proxy_async();
        __syncthreads();

        // S of the next tile, issued even on the last iteration (on a stale
        // stage, result unused): with the commit groups the same on every
        // path, ptxas sees that wait<1> retires S and keeps the two GEMMs
        // asynchronous (a conditional S made it serialise them, C7514).
        float sn[NS][4];
        wgmma_fence();
        issue_s<D>(sn, qf, stage(j + 1));
        wgmma_commit();
        wgmma_fence();  // its own fence: ptxas delimits a pipeline stage by them
        issue_pv<D>(acc, pf, stage(j) + TILE_BYTES);
        wgmma_commit();
        uint32_t pn[BC / 16][4];
        wgmma_wait<1>();  // S_{j+1} done; P_j V_j may still run
        pin_all(sn);
        if (has_next) {
            softmax_tile(sn, pn, st, corr_a, corr_b, s0 + (j + 1) * BC, q0, s1, causal, row_a,
                         row_b, tig, scale_log2, h, drop);
        }
        wgmma_wait<0>();
        pin_all(acc);
        if (has_next) {
            scale_rows(acc, corr_a, corr_b);
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
                for (int r = 0; r < 4; ++r) pf[kk][r] = pn[kk][r];
        }
        __syncthreads();  // every warp is done with stage j % 3 before it is refilled
    }
    store_rows<D>(acc, st, o, lse, row_a, row_b, s1, hq, h, tig, tokens);
}

// v4: load, S, softmax, P V, one step after the other per key tile (two
// CTAs per SM overlap each other's phases).
template <int D>
__device__ __forceinline__ void fwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                    const bf16* __restrict__ v, bf16* __restrict__ o,
                                    float* __restrict__ lse, const int* __restrict__ tiles,
                                    int tokens, int hq, int hkv, float scale_log2, int causal,
                                    Drop drop) {
    constexpr int NS = BC / 8, ND = D / 8;
    constexpr uint32_t TILE_BYTES = BC * D * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // The dynamic window is only guaranteed 16-byte aligned: round up (the
    // launcher allocates 1024 bytes of slack).
    const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;

    const int q0 = tiles[3 * blockIdx.x], s0 = tiles[3 * blockIdx.x + 1];
    const int s1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int row_a = q0 + warp * 16 + gid, row_b = row_a + 8;

    uint32_t qf[D / 16][4];
    load_q<D>(qf, q, row_a, row_b, s1, hq, h, tig);
    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState st{-INFINITY, -INFINITY, 0.0f, 0.0f};

    const int k_end = causal ? min(s1, q0 + BR) : s1;
    const int n_tiles = (k_end - s0 + BC - 1) / BC;

    load_tile<D>(base, k, s0, s1, hkv, g);
    load_tile<D>(base + TILE_BYTES, v, s0, s1, hkv, g);
    cp_async_commit();
    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = s0 + j * BC;
        const uint32_t ks = base + (j & 1) * 2 * TILE_BYTES, vs = ks + TILE_BYTES;
        if (j + 1 < n_tiles) {
            const uint32_t kn = base + ((j + 1) & 1) * 2 * TILE_BYTES;
            load_tile<D>(kn, k, k0 + BC, s1, hkv, g);
            load_tile<D>(kn + TILE_BYTES, v, k0 + BC, s1, hkv, g);
            cp_async_commit();
            cp_async_wait<1>();  // tile j landed; j + 1 may be in flight
        } else {
            cp_async_wait<0>();
        }
        fence_proxy_async();
        __syncthreads();

        float sc[NS][4];
        wgmma_fence();
        issue_s<D>(sc, qf, ks);
        wgmma_commit();
        wgmma_wait<0>();
        pin_all(sc);
        uint32_t pf[BC / 16][4];
        float corr_a, corr_b;
        softmax_tile(sc, pf, st, corr_a, corr_b, k0, q0, s1, causal, row_a, row_b, tig,
                     scale_log2, h, drop);
        scale_rows(acc, corr_a, corr_b);

        wgmma_fence();
        issue_pv<D>(acc, pf, vs);
        wgmma_commit();
        wgmma_wait<0>();
        pin_all(acc);
        __syncthreads();  // every warp is done with this stage before it is refilled
    }
    store_rows<D>(acc, st, o, lse, row_a, row_b, s1, hq, h, tig, tokens);
}

}  // namespace v4

// Shared bytes the launcher gives: 2 stages x (K, V) x BC x D x 2 + 1024 slack.
#define FWD_WGMMA(NAME, DIM)                                                                     \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                      \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* tiles,      \
        int tokens, int hq, int hkv, float scale_log2, int causal, uint64_t seed,                \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop = Drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds}       \
                        .for_tile(tiles, blockIdx.x);                                            \
        v4::fwd<DIM>(q, k, v, o, lse, tiles, tokens, hq, hkv, scale_log2, causal, drop);         \
    }
FWD_WGMMA(attention_fwd_wgmma_d64, 64)
FWD_WGMMA(attention_fwd_wgmma_d128, 128)

// v5: three stages of K and V: 3 x 2 x BC x D x 2 + 1024 slack.
#define FWD_WGMMA_PIPE(NAME, DIM)                                                                \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                      \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* tiles,      \
        int tokens, int hq, int hkv, float scale_log2, int causal, uint64_t seed,                \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop = Drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds}       \
                        .for_tile(tiles, blockIdx.x);                                            \
        v4::fwd_pipe<DIM>(q, k, v, o, lse, tiles, tokens, hq, hkv, scale_log2, causal, drop);    \
    }
FWD_WGMMA_PIPE(attention_fwd_wgmma_pipe_d64, 64)
FWD_WGMMA_PIPE(attention_fwd_wgmma_pipe_d128, 128)
