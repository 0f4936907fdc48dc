// Scaled dot-product attention over packed variable-length sequences, CUDA.
//
// CONTRACT (same as crates/tensor/src/cpu/attention.rs, the reference)
//   q [T, Hq, D], k and v [T, Hkv, D], o [T, Hq, D]: row-major, token-major.
//   Hq is a multiple of Hkv (GQA): query head h reads kv head h / (Hq / Hkv).
//   Sequences are token ranges [cu[b], cu[b+1]); a query only sees keys of
//   its own sequence, and with `causal` only keys j <= i (global indices).
//   lse [Hq, T] f32 = ln sum_j exp(scale * q_i . k_j) over the visible keys
//   (undropped). Every query row sees at least itself, so lse is finite; a
//   row with no key (unreachable) would get o = 0 and lse = -inf.
//   Dropout (PyTorch SDPA semantics): o = dropout(P) V with P the softmax;
//   P[h, i, j] is kept iff hash_u32(seed, offset + (h*T + i)*T + j) < thr,
//   kept values are scaled by inv_keep = 1/(1-p): the SplitMix64 hash and
//   index of cpu/dropout.rs and cpu::attention::dropout_index, so CPU and GPU
//   drop the same elements. thr and inv_keep are computed on the host.
//   Backward: delta[h, i] = dO_i . O_i, then dS = P * (dP * f - delta) with
//   dP = dO V^T and f the dropout factor (1 without dropout); dV = (P f)^T dO,
//   dK = scale dS^T Q, dQ = scale dS K. dK and dV of a kv head sum over the
//   Hq/Hkv query heads of its group.
//   Statistics (lse, delta) and the dq accumulator are f32; the MMA kernels
//   take bf16 q/k/v/o/dout and write bf16 o/dk/dv (f32 accumulation).
//
// TWO IMPLEMENTATIONS
//   *_mma_d{64,128}: FlashAttention-2 on tensor cores (bf16 only).
//   *_simple_{bf16,f32}: one warp per query (or key) row, f32 scalar math,
//     lanes split the head dimension (D <= 256), no shared memory. Obviously
//     correct and slow; the launcher uses them when LLM2COMP_ATTN_SIMPLE=1, for
//     f32 tensors and for head dims the MMA kernels do not instantiate, and the
//     GPU tests run both, so a failure localises to the MMA code or not.
//
// VERSIONS (docs/kernels.md has each one's prediction and measured outcome)
//   v3, the launcher's default (unprefixed names): v1's forward with the
//     score scale fused into the exponent's FFMA (fwd_mma's FAST); the
//     backward with 128-key tiles on 8 warps and the next query tile
//     prefetched (bwd_mma<D, 8, true>).
//   v1 (*_v1_*) and v2 (*_v2_*: fwd_mma2, bwd_mma<D, 4, true>) stay so the
//     benchmark measures each step against them in the same run.
//
// MMA FORWARD (attention_fwd_mma_{v1_,}d*; v2 differs as fwd_mma2 says)
//   Grid (tiles, Hq), 128 threads = 4 warps. A tile is 64 query rows of one
//   sequence, given by the host table tiles[3*t..] = (q0, seq_start, seq_end)
//   (sorted so that the longest tiles start first). Warp w owns query rows
//   q0+16w .. q0+16w+15, and keeps its Q fragments in registers (read once from
//   global memory). The CTA walks key tiles of 64 rows from seq_start to
//   seq_end (causal: up to the tile's last query, so tiles entirely above the
//   diagonal are never visited); K and V tiles are staged in shared memory by
//   cp.async (rows padded by 8 bf16 so ldmatrix rows hit distinct banks; rows
//   past seq_end are zero-filled), the next K tile loads while P V runs.
//   S = Q K^T and O += P V use mma.m16n8k16 (bf16 in, f32 accumulate); the
//   online softmax runs in registers in the log2 domain (scale * log2 e folded
//   into one multiplier, exp2f); row sums stay per-thread partial and are
//   reduced across the 4 threads of a row at the end.
//
// MMA BACKWARD (attention_bwd_delta_*, attention_bwd_mma_{v1_,v2_,}d*,
//   attention_dq_cast_bf16; described for v1's 4 warps and 64 keys: v3 has
//   NW = 8 warps and 16 NW = 128 keys, and v2, v3 prefetch, see bwd_mma)
//   delta = rowsum(dO o O) first (one warp per row). Then grid (key tiles,
//   Hkv), 4 warps: a CTA owns 64 keys of one sequence and kv head g, keeps its
//   K and V tiles in shared memory, and loops over the group's query heads and
//   the query tiles of BR rows (BR = 32 for D = 128, 64 for D = 64, to bound
//   registers; causal: from the tile holding the CTA's first key). Warp w owns
//   keys 16w..16w+15 and computes the transposed tiles S^T = K Q^T and
//   dP^T = V dO^T (16 keys x BR queries), rebuilds P^T = exp2(S^T*scale*log2e
//   - lse*log2e), forms dS^T, and accumulates dV += (P f)^T dO and
//   dK += dS^T Q in registers (f32) across all query tiles and heads: no
//   atomics for dK, dV. dQ = dS K needs sums over all 64 keys, i.e. across
//   warps: dS is written to shared memory (bf16, [query][key]), then warp w
//   computes a 16 x 64 block of dQ (rows 16*(w % (BR/16)), columns
//   64*(w / (BR/16))) and atomically adds it into the f32 accumulator
//   dq_acc [T, Hq, D] (zeroed by the launcher); attention_dq_cast_bf16 turns
//   it into bf16.
//
// FRAGMENT LAYOUT (PTX ISA, mma.m16n8k16 with .bf16; lane = 0..31,
//   gid = lane >> 2, tig = lane & 3; a register holds two bf16, the lower
//   column / lower k index in the low 16 bits)
//   A (16x16, row-major): a0 = A[gid][2tig, 2tig+1], a1 = A[gid+8][2tig, ..],
//                         a2 = A[gid][2tig+8, ..],   a3 = A[gid+8][2tig+8, ..]
//   B (16x8, "col"):      b0 = B[2tig, 2tig+1][gid], b1 = B[2tig+8, 2tig+9][gid]
//   C (16x8, f32):        c0, c1 = C[gid][2tig, 2tig+1], c2, c3 = C[gid+8][..]
//   Hence two adjacent C tiles (columns 0-7, 8-15) of S are exactly the A
//   fragment of P for one k-step: a0 = (c0,c1) of tile 0, a1 = (c2,c3) of
//   tile 0, a2 = (c0,c1) of tile 1, a3 = (c2,c3) of tile 1.
//   ldmatrix.x4: lanes 8m..8m+7 give the row addresses of 8x8 matrix m; lane l
//   receives register m = M_m[l>>2][2(l&3), 2(l&3)+1] (with .trans:
//   M_m[2(l&3)][l>>2], M_m[2(l&3)+1][l>>2]). So:
//   - A from a row-major [row][k] tile: lane l addresses row (l&7) + 8((l>>3)&1),
//     column 8(l>>4)  -> a0..a3.
//   - B = X^T from a row-major [n][k] tile X (K for S = Q K^T): lane l
//     addresses row n0 + (l&7) + 8(l>>4), column k0 + 8((l>>3)&1) -> b0, b1 of
//     n-tile n0 and b0, b1 of n-tile n0+8.
//   - B = X from a row-major [k][n] tile X (V for P V), with .trans: lane l
//     addresses row k0 + (l&7) + 8((l>>3)&1), column n0 + 8(l>>4) -> b0, b1 of
//     n-tile n0 and b0, b1 of n-tile n0+8.
//
// MASKING
//   A score is set to -inf (forward) or its probability to 0 (backward) when
//   the key is at or past seq_end, or (causal) key > query. Rows of K, V, Q,
//   dO past seq_end are zero in shared memory / registers, so every product
//   stays finite; backward gives query rows past seq_end lse = +inf (P = 0)
//   and delta = 0. Rows past seq_end are never stored. Forward masks only on
//   tiles that can hold a hidden entry (ragged or crossing the diagonal).
//
// Global offsets are computed in 64 bits: T * H * D may exceed 2^31.

// kernels/emu/attention_emu.cpp compiles this file on the host with its own
// definitions of the PTX wrappers below (a fiber-per-thread emulation of the
// warp-level instructions), to test the fragment logic without a GPU.
#ifndef ATTN_HOST_EMU
#include <cuda_bf16.h>
#include <stdint.h>
typedef __nv_bfloat16 bf16;
#endif

#include "attention_common.cuh"

// ---------------------------------------------------------------- helpers

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename E> __device__ __forceinline__ E from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// The sequence [s0, s1) holding token i: the largest b < nseq with cu[b] <= i.
// Returns b; with per-sequence dropout keys, narrows `drop` to b's stream.
__device__ __forceinline__ int find_seq(const int* cu, int nseq, int i, int& s0, int& s1,
                                        Drop& drop) {
    int lo = 0, hi = nseq;  // invariant cu[lo] <= i < cu[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (cu[mid] <= i) lo = mid; else hi = mid;
    }
    s0 = cu[lo];
    s1 = cu[lo + 1];
    if (drop.seeds) drop = drop.at(drop.seeds[lo], s0, s1);
    return lo;
}

#ifndef ATTN_HOST_EMU
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// c += A B for one m16n8k16 tile (bf16 inputs, f32 accumulators).
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

#endif  // ATTN_HOST_EMU

// Stages rows row0 .. row0+R-1 of head `head` of a [T, H, D] bf16 tensor into a
// [R][D+8] shared tile (async); rows at or past `end` become zeros.
template <int D, int R>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, int row0, int end, int heads,
                                          int head) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    constexpr int STRIDE = D + 8;
    for (int c = threadIdx.x; c < R * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        bf16* d = dst + r * STRIDE + col;
        const int tok = row0 + r;
        if (tok < end) {
            cp_async16(smem_addr(d), src + ((size_t)tok * heads + head) * D + col);
        } else {
            *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
        }
    }
}

// ------------------------------------------------------------ MMA forward

// FAST (v3): scores stay unscaled until the exponent, which is one FFMA
// (s * scale_log2 - max) into ex2.approx, instead of a multiply per score, a
// subtract and exp2f's range handling (the row maxima are scaled instead: the
// scale is positive, so the maximum is the same score).
template <bool FAST> __device__ __forceinline__ float pow2(float x) {
    return FAST ? ex2_approx(x) : exp2f(x);
}

template <int D, bool FAST>
__device__ __forceinline__ void fwd_mma(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, bf16* __restrict__ o,
                                        float* __restrict__ lse, const int* __restrict__ tiles,
                                        int tokens, int hq, int hkv, float scale_log2, int causal,
                                        Drop drop) {
    constexpr int BR = 64, BC = 64, STRIDE = D + 8;
    constexpr int KD = D / 16;  // k-steps over the head dimension
    constexpr int NS = BC / 8;  // n-tiles of a 16 x BC score block
    constexpr int ND = D / 8;   // n-tiles of a 16 x D output block
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + BC * STRIDE;

    const int q0 = tiles[3 * blockIdx.x], s0 = tiles[3 * blockIdx.x + 1];
    const int s1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int row_a = q0 + warp * 16 + gid, row_b = row_a + 8;

    // Q fragments (A operand), straight from global memory; zero past s1.
    uint32_t qf[KD][4];
    {
        const uint32_t* qa = reinterpret_cast<const uint32_t*>(q + ((size_t)row_a * hq + h) * D);
        const uint32_t* qb = reinterpret_cast<const uint32_t*>(q + ((size_t)row_b * hq + h) * D);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            const int c = (kk * 16 + tig * 2) / 2;  // in u32 units
            qf[kk][0] = row_a < s1 ? qa[c] : 0u;
            qf[kk][1] = row_b < s1 ? qb[c] : 0u;
            qf[kk][2] = row_a < s1 ? qa[c + 4] : 0u;
            qf[kk][3] = row_b < s1 ? qb[c + 4] : 0u;
        }
    }

    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

    const int k_end = causal ? min(s1, q0 + BR) : s1;
    const int n_tiles = (k_end - s0 + BC - 1) / BC;

    load_rows<D, BC>(ks, k, s0, s1, hkv, g);
    cp_async_commit();
    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = s0 + j * BC;
        load_rows<D, BC>(vs, v, k0, s1, hkv, g);
        cp_async_commit();
        cp_async_wait<1>();  // K(j) landed; V(j) may still be in flight
        __syncthreads();

        float sc[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int c = kk * 16 + (((lane >> 3) & 1) << 3);
                uint32_t b0, b1, b2, b3;
                ldsm_x4(smem_addr(ks + r * STRIDE + c), b0, b1, b2, b3);
                mma16816(sc[2 * np], qf[kk], b0, b1);
                mma16816(sc[2 * np + 1], qf[kk], b2, b3);
            }
        }

        // Scale into the log2 domain, mask, and take the tile's row maxima.
        const bool need_mask = (k0 + BC > s1) || (causal && k0 + BC - 1 > q0);
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                float x = FAST ? sc[n][r] : sc[n][r] * scale_log2;
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
        if (FAST) {
            mx_a *= scale_log2;
            mx_b *= scale_log2;
        }
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        // A row with nothing visible yet keeps reference 0: exp2(-inf - 0) = 0, no NaN.
        const float base_a = mn_a == -INFINITY ? 0.0f : mn_a;
        const float base_b = mn_b == -INFINITY ? 0.0f : mn_b;
        const float corr_a = pow2<FAST>(m_a - base_a), corr_b = pow2<FAST>(m_b - base_b);
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.0f, sum_b = 0.0f;
        // v1: the scores are scaled already; v3: scale inside the FFMA.
        const float mul = FAST ? scale_log2 : 1.0f;
#pragma unroll
        for (int n = 0; n < NS; ++n) {
            sc[n][0] = pow2<FAST>(fmaf(sc[n][0], mul, -base_a));
            sc[n][1] = pow2<FAST>(fmaf(sc[n][1], mul, -base_a));
            sc[n][2] = pow2<FAST>(fmaf(sc[n][2], mul, -base_b));
            sc[n][3] = pow2<FAST>(fmaf(sc[n][3], mul, -base_b));
            sum_a += sc[n][0] + sc[n][1];
            sum_b += sc[n][2] + sc[n][3];
        }
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            acc[n][0] *= corr_a;
            acc[n][1] *= corr_a;
            acc[n][2] *= corr_b;
            acc[n][3] *= corr_b;
        }
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
        // P as A fragments: two adjacent C tiles make one k-step (see header).
        uint32_t pf[BC / 16][4];
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            pf[kk][0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            pf[kk][1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            pf[kk][2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            pf[kk][3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
        }

        __syncthreads();  // every warp is done reading ks
        if (j + 1 < n_tiles) {
            load_rows<D, BC>(ks, k, k0 + BC, s1, hkv, g);
            cp_async_commit();
            cp_async_wait<1>();  // V(j) landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
            for (int dp = 0; dp < ND / 2; ++dp) {
                const int r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                const int c = dp * 16 + ((lane >> 4) << 3);
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(smem_addr(vs + r * STRIDE + c), b0, b1, b2, b3);
                mma16816(acc[2 * dp], pf[kk], b0, b1);
                mma16816(acc[2 * dp + 1], pf[kk], b2, b3);
            }
        }
        __syncthreads();  // every warp is done reading vs before the next V load
    }

    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f;
    const float inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
    if (row_a < s1) {
        uint32_t* oa = reinterpret_cast<uint32_t*>(o + ((size_t)row_a * hq + h) * D);
#pragma unroll
        for (int n = 0; n < ND; ++n)
            oa[(n * 8 + tig * 2) / 2] = pack_bf16(acc[n][0] * inv_a, acc[n][1] * inv_a);
        if (tig == 0)
            lse[(size_t)h * tokens + row_a] = l_a > 0.0f ? (m_a + log2f(l_a)) * LN2_F : -INFINITY;
    }
    if (row_b < s1) {
        uint32_t* ob = reinterpret_cast<uint32_t*>(o + ((size_t)row_b * hq + h) * D);
#pragma unroll
        for (int n = 0; n < ND; ++n)
            ob[(n * 8 + tig * 2) / 2] = pack_bf16(acc[n][2] * inv_b, acc[n][3] * inv_b);
        if (tig == 0)
            lse[(size_t)h * tokens + row_b] = l_b > 0.0f ? (m_b + log2f(l_b)) * LN2_F : -INFINITY;
    }
}

#define FWD_MMA(NAME, DIM, FAST)                                                                \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                      \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* tiles,      \
        int tokens, int hq, int hkv, float scale_log2, int causal, uint64_t seed,                \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop = Drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds}       \
                        .for_tile(tiles, blockIdx.x);                                            \
        fwd_mma<DIM, FAST>(q, k, v, o, lse, tiles, tokens, hq, hkv, scale_log2, causal, drop);   \
    }
FWD_MMA(attention_fwd_mma_v1_d64, 64, false)
FWD_MMA(attention_fwd_mma_v1_d128, 128, false)
FWD_MMA(attention_fwd_mma_d64, 64, true)
FWD_MMA(attention_fwd_mma_d128, 128, true)

// ------------------------------------------------------ MMA forward, v2
// As fwd_mma, but a CTA owns 128 query rows and each of its 4 warps owns two
// 16-row m-tiles (32 rows), so every K or V fragment a warp reads from
// shared memory (ldmatrix) feeds four MMAs instead of two: v1 is bound by
// shared-memory reads, not by the tensor cores. Q no longer fits in
// registers beside two m-tiles of accumulators, so it is staged in shared
// memory once and its A fragments are re-read per key tile (one ldmatrix per
// m-tile and k-step, against NS/2 for K). Key tiles are 32 rows: with 64,
// the two m-tiles' score blocks pushed ptxas to 255 registers and spills
// (116 bytes at D = 128, 20 at D = 64); with 32 there are none (254 and 168
// registers on sm_90). Shared memory: Q [128][D+8], then K and V [32][D+8]
// (the launcher mirrors it).
template <int D> struct Fwd2Tile {
    static constexpr int MT = 2, BR = 4 * 16 * MT, BC = 32;
};

template <int D>
__device__ __forceinline__ void fwd_mma2(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, bf16* __restrict__ o,
                                         float* __restrict__ lse, const int* __restrict__ tiles,
                                         int tokens, int hq, int hkv, float scale_log2, int causal,
                                         Drop drop) {
    constexpr int MT = Fwd2Tile<D>::MT, BR = Fwd2Tile<D>::BR, BC = Fwd2Tile<D>::BC;
    constexpr int STRIDE = D + 8, KD = D / 16, NS = BC / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* ks = qs + BR * STRIDE;
    bf16* vs = ks + BC * STRIDE;

    const int q0 = tiles[3 * blockIdx.x], s0 = tiles[3 * blockIdx.x + 1];
    const int s1 = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, g = h / (hq / hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int wrow = warp * 16 * MT;  // the warp's first row within the tile
    // rows[m][0] = row gid of m-tile m, rows[m][1] = row gid + 8.
    int rows[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        rows[m][0] = q0 + wrow + m * 16 + gid;
        rows[m][1] = rows[m][0] + 8;
    }

    float acc[MT][ND][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int n = 0; n < ND; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        mrow[m][0] = mrow[m][1] = -INFINITY;
        lrow[m][0] = lrow[m][1] = 0.0f;
    }

    const int k_end = causal ? min(s1, q0 + BR) : s1;
    const int n_tiles = (k_end - s0 + BC - 1) / BC;

    load_rows<D, BR>(qs, q, q0, s1, hq, h);
    load_rows<D, BC>(ks, k, s0, s1, hkv, g);
    cp_async_commit();
    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = s0 + j * BC;
        load_rows<D, BC>(vs, v, k0, s1, hkv, g);
        cp_async_commit();
        cp_async_wait<1>();  // Q and K(j) landed; V(j) may still be in flight
        __syncthreads();

        float sc[MT][NS][4];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int n = 0; n < NS; ++n) sc[m][n][0] = sc[m][n][1] = sc[m][n][2] = sc[m][n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const int r = wrow + m * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                const int c = kk * 16 + ((lane >> 4) << 3);
                ldsm_x4(smem_addr(qs + r * STRIDE + c), a[m][0], a[m][1], a[m][2], a[m][3]);
            }
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int c = kk * 16 + (((lane >> 3) & 1) << 3);
                uint32_t b0, b1, b2, b3;
                ldsm_x4(smem_addr(ks + r * STRIDE + c), b0, b1, b2, b3);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma16816(sc[m][2 * np], a[m], b0, b1);
                    mma16816(sc[m][2 * np + 1], a[m], b2, b3);
                }
            }
        }

        // Per m-tile: scale into the log2 domain, mask, online softmax, as v1.
        const bool need_mask = (k0 + BC > s1) || (causal && k0 + BC - 1 > q0 + wrow);
        uint32_t pf[MT][BC / 16][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
            for (int n = 0; n < NS; ++n) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    float x = sc[m][n][r] * scale_log2;
                    if (need_mask) {
                        const int key = k0 + n * 8 + tig * 2 + (r & 1);
                        const int row = rows[m][r >> 1];
                        if (key >= s1 || (causal && key > row)) x = -INFINITY;
                    }
                    sc[m][n][r] = x;
                }
                mx_a = fmaxf(mx_a, fmaxf(sc[m][n][0], sc[m][n][1]));
                mx_b = fmaxf(mx_b, fmaxf(sc[m][n][2], sc[m][n][3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            const float mn_a = fmaxf(mrow[m][0], mx_a), mn_b = fmaxf(mrow[m][1], mx_b);
            // A row with nothing visible yet keeps reference 0: exp2(-inf - 0) = 0, no NaN.
            const float base_a = mn_a == -INFINITY ? 0.0f : mn_a;
            const float base_b = mn_b == -INFINITY ? 0.0f : mn_b;
            const float corr_a = exp2f(mrow[m][0] - base_a), corr_b = exp2f(mrow[m][1] - base_b);
            mrow[m][0] = mn_a;
            mrow[m][1] = mn_b;
            float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                sc[m][n][0] = exp2f(sc[m][n][0] - base_a);
                sc[m][n][1] = exp2f(sc[m][n][1] - base_a);
                sc[m][n][2] = exp2f(sc[m][n][2] - base_b);
                sc[m][n][3] = exp2f(sc[m][n][3] - base_b);
                sum_a += sc[m][n][0] + sc[m][n][1];
                sum_b += sc[m][n][2] + sc[m][n][3];
            }
            lrow[m][0] = lrow[m][0] * corr_a + sum_a;
            lrow[m][1] = lrow[m][1] * corr_b + sum_b;
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                acc[m][n][0] *= corr_a;
                acc[m][n][1] *= corr_a;
                acc[m][n][2] *= corr_b;
                acc[m][n][3] *= corr_b;
            }
            if (drop.on) {
#pragma unroll
                for (int n = 0; n < NS; ++n) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const int key = k0 + n * 8 + tig * 2 + (r & 1);
                        sc[m][n][r] *= drop.factor(h, rows[m][r >> 1], key);
                    }
                }
            }
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                pf[m][kk][0] = pack_bf16(sc[m][2 * kk][0], sc[m][2 * kk][1]);
                pf[m][kk][1] = pack_bf16(sc[m][2 * kk][2], sc[m][2 * kk][3]);
                pf[m][kk][2] = pack_bf16(sc[m][2 * kk + 1][0], sc[m][2 * kk + 1][1]);
                pf[m][kk][3] = pack_bf16(sc[m][2 * kk + 1][2], sc[m][2 * kk + 1][3]);
            }
        }

        __syncthreads();  // every warp is done reading ks
        if (j + 1 < n_tiles) {
            load_rows<D, BC>(ks, k, k0 + BC, s1, hkv, g);
            cp_async_commit();
            cp_async_wait<1>();  // V(j) landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
            for (int dp = 0; dp < ND / 2; ++dp) {
                const int r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                const int c = dp * 16 + ((lane >> 4) << 3);
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(smem_addr(vs + r * STRIDE + c), b0, b1, b2, b3);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma16816(acc[m][2 * dp], pf[m][kk], b0, b1);
                    mma16816(acc[m][2 * dp + 1], pf[m][kk], b2, b3);
                }
            }
        }
        __syncthreads();  // every warp is done reading vs before the next V load
    }

#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float l = lrow[m][half];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int row = rows[m][half];
            if (row >= s1) continue;
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            uint32_t* orow = reinterpret_cast<uint32_t*>(o + ((size_t)row * hq + h) * D);
#pragma unroll
            for (int n = 0; n < ND; ++n)
                orow[(n * 8 + tig * 2) / 2] =
                    pack_bf16(acc[m][n][2 * half] * inv, acc[m][n][2 * half + 1] * inv);
            if (tig == 0)
                lse[(size_t)h * tokens + row] =
                    l > 0.0f ? (mrow[m][half] + log2f(l)) * LN2_F : -INFINITY;
        }
    }
}

#define FWD_MMA2(DIM)                                                                           \
    extern "C" __global__ void __launch_bounds__(128) attention_fwd_mma_v2_d##DIM(               \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* tiles,      \
        int tokens, int hq, int hkv, float scale_log2, int causal, uint64_t seed,                \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop = Drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds}       \
                        .for_tile(tiles, blockIdx.x);                                            \
        fwd_mma2<DIM>(q, k, v, o, lse, tiles, tokens, hq, hkv, scale_log2, causal, drop);        \
    }
FWD_MMA2(64)
FWD_MMA2(128)

// ----------------------------------------------------------- MMA backward

// delta[h, i] = dO_i . O_i for every (token, head): one warp per row, any D.
template <typename E>
__device__ __forceinline__ void bwd_delta(const E* dout, const E* o, float* delta, int tokens,
                                          int hq, int d) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)tokens * hq) return;
    const int i = (int)(w / hq), h = (int)(w % hq);
    const size_t base = ((size_t)i * hq + h) * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) s += to_f(dout[base + c]) * to_f(o[base + c]);
    s = warp_sum(s);
    if (lane == 0) delta[(size_t)h * tokens + i] = s;
}

extern "C" __global__ void attention_bwd_delta_bf16(const bf16* dout, const bf16* o, float* delta,
                                                    int tokens, int hq, int d) {
    bwd_delta<bf16>(dout, o, delta, tokens, hq, d);
}

extern "C" __global__ void attention_bwd_delta_f32(const float* dout, const float* o, float* delta,
                                                   int tokens, int hq, int d) {
    bwd_delta<float>(dout, o, delta, tokens, hq, d);
}

// dq (bf16) = the f32 accumulator, n elements.
extern "C" __global__ void attention_dq_cast_bf16(const float* acc, bf16* dq, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dq[i] = __float2bfloat16_rn(acc[i]);
}

// Query rows per backward query tile: 32 at D = 128 keeps dK and dV
// accumulators (2 x 64 f32 per thread) plus the S^T, dP^T tiles in registers.
// Dynamic shared memory (the launcher mirrors it): K, V [64][D+8], then NB
// buffers of Q, dO [BR][D+8], dS [BR][64+8] bf16, then NB buffers of lse and
// delta [BR] f32 (NB = 2 with PREFETCH, else 1).
template <int D> struct BwdTile { static constexpr int BR = D == 128 ? 32 : 64; };

// PREFETCH (v2): the (query head, query tile) iterations form one sequence
// and the next one's Q, dO, lse and delta load into the other buffer while
// the current one computes. v1 (no PREFETCH) loads each tile and waits for
// it, so every tile exposed a full global-memory round trip.
// NW warps own 16 keys each, so a CTA holds BC = 16 NW keys. Every CTA
// re-reads the Q and dO of its whole sequence (per query head of its group)
// and adds its dQ share by atomics, so that L2 traffic scales with the number
// of key tiles: NW = 8 halves it against NW = 4 (v1, v2), at the same 8 warps
// per SM (registers allow one CTA of 8 or two of 4).
template <int D, int NW, bool PREFETCH>
__device__ __forceinline__ void bwd_mma(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                        const float* __restrict__ lse,
                                        const float* __restrict__ delta, float* __restrict__ dq_acc,
                                        bf16* __restrict__ dk, bf16* __restrict__ dv,
                                        const int* __restrict__ tiles, int tokens, int hq, int hkv,
                                        float scale, float scale_log2, int causal, Drop drop) {
    constexpr int BC = 16 * NW, BR = BwdTile<D>::BR, STRIDE = D + 8, SSTRIDE = BC + 8;
    constexpr int NQ = BR / 8;             // n-tiles of a 16 x BR transposed score block
    constexpr int ND = D / 8;              // n-tiles of a 16 x D gradient block
    constexpr int RG = BR / 16;            // dQ: row groups of 16 queries
    constexpr int DW = D / (NW / RG);      // dQ: columns per warp
    constexpr int NDW = DW / 8;
    static_assert(DW % 16 == 0 && NW % RG == 0, "dQ warp split");
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + BC * STRIDE;
    constexpr int NB = PREFETCH ? 2 : 1;
    bf16* q_buf = vs + BC * STRIDE;           // NB x [BR][STRIDE]
    bf16* do_buf = q_buf + NB * BR * STRIDE;  // NB x [BR][STRIDE]
    bf16* dss = do_buf + NB * BR * STRIDE;    // dS as [query][key], stride SSTRIDE
    float* lse_buf = reinterpret_cast<float*>(dss + BR * SSTRIDE);  // NB x [BR], lse * log2 e
    float* delta_buf = lse_buf + NB * BR;                            // NB x [BR]

    const int k0 = tiles[3 * blockIdx.x], s0 = tiles[3 * blockIdx.x + 1];
    const int s1 = tiles[3 * blockIdx.x + 2];
    const int g = blockIdx.y, group = hq / hkv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int key_a = k0 + warp * 16 + gid, key_b = key_a + 8;

    load_rows<D, BC>(ks, k, k0, s1, hkv, g);
    load_rows<D, BC>(vs, v, k0, s1, hkv, g);
    cp_async_commit();

    float dka[ND][4], dva[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.0f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.0f;
    }

    // Causal: query tiles wholly before k0 see none of these keys.
    const int q_first = causal ? s0 + ((k0 - s0) / BR) * BR : s0;
    // Iteration it is query head g * group + it / per_head, tile it % per_head.
    const int per_head = (s1 - q_first + BR - 1) / BR, total = group * per_head;
    // Issues the loads of iteration it into buffer b (async for Q and dO).
    auto stage = [&](int it, int b) {
        const int h = g * group + it / per_head, qq0 = q_first + (it % per_head) * BR;
        load_rows<D, BR>(q_buf + b * BR * STRIDE, q, qq0, s1, hq, h);
        load_rows<D, BR>(do_buf + b * BR * STRIDE, dout, qq0, s1, hq, h);
        for (int i = threadIdx.x; i < BR; i += blockDim.x) {
            const int tok = qq0 + i;
            lse_buf[b * BR + i] = tok < s1 ? lse[(size_t)h * tokens + tok] * LOG2E_F : INFINITY;
            delta_buf[b * BR + i] = tok < s1 ? delta[(size_t)h * tokens + tok] : 0.0f;
        }
    };
    if (PREFETCH) {
        stage(0, 0);
        cp_async_commit();
    }
    for (int it = 0; it < total; ++it) {
        const int buf = PREFETCH ? (it & 1) : 0;
        __syncthreads();  // the previous iteration is done with its buffers and dss
        if (!PREFETCH) {
            stage(it, 0);
            cp_async_commit();
            cp_async_wait<0>();
        } else if (it + 1 < total) {
            stage(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();  // everything but the prefetch just issued has landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        {
            const int h = g * group + it / per_head, qq0 = q_first + (it % per_head) * BR;
            const bf16* qs = q_buf + buf * BR * STRIDE;
            const bf16* dos = do_buf + buf * BR * STRIDE;
            const float* lse_s = lse_buf + buf * BR;
            const float* delta_s = delta_buf + buf * BR;

            // S^T = K_w Q^T and dP^T = V_w dO^T: 16 keys x BR queries per warp.
            float st[NQ][4], dpt[NQ][4];
#pragma unroll
            for (int n = 0; n < NQ; ++n) {
                st[n][0] = st[n][1] = st[n][2] = st[n][3] = 0.0f;
                dpt[n][0] = dpt[n][1] = dpt[n][2] = dpt[n][3] = 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const int ar = warp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                const int ac = kk * 16 + ((lane >> 4) << 3);
                uint32_t ka[4], va[4];
                ldsm_x4(smem_addr(ks + ar * STRIDE + ac), ka[0], ka[1], ka[2], ka[3]);
                ldsm_x4(smem_addr(vs + ar * STRIDE + ac), va[0], va[1], va[2], va[3]);
#pragma unroll
                for (int np = 0; np < NQ / 2; ++np) {
                    const int br = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                    const int bc = kk * 16 + (((lane >> 3) & 1) << 3);
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(smem_addr(qs + br * STRIDE + bc), b0, b1, b2, b3);
                    mma16816(st[2 * np], ka, b0, b1);
                    mma16816(st[2 * np + 1], ka, b2, b3);
                    ldsm_x4(smem_addr(dos + br * STRIDE + bc), b0, b1, b2, b3);
                    mma16816(dpt[2 * np], va, b0, b1);
                    mma16816(dpt[2 * np + 1], va, b2, b3);
                }
            }

            // st <- P f (dropped probabilities), dpt <- dS = P (dP f - delta).
#pragma unroll
            for (int n = 0; n < NQ; ++n) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int key = r < 2 ? key_a : key_b;
                    const int qi_l = n * 8 + tig * 2 + (r & 1);
                    const int qi = qq0 + qi_l;
                    float p = exp2f(st[n][r] * scale_log2 - lse_s[qi_l]);
                    if (key >= s1 || (causal && key > qi)) p = 0.0f;
                    const float f = drop.factor(h, qi, key);
                    st[n][r] = p * f;
                    dpt[n][r] = p * (dpt[n][r] * f - delta_s[qi_l]);
                }
            }

            // dV += (P f)^T dO, dK += dS^T Q (scale applied at the end).
#pragma unroll
            for (int kq = 0; kq < BR / 16; ++kq) {
                uint32_t pa[4], sa[4];
                pa[0] = pack_bf16(st[2 * kq][0], st[2 * kq][1]);
                pa[1] = pack_bf16(st[2 * kq][2], st[2 * kq][3]);
                pa[2] = pack_bf16(st[2 * kq + 1][0], st[2 * kq + 1][1]);
                pa[3] = pack_bf16(st[2 * kq + 1][2], st[2 * kq + 1][3]);
                sa[0] = pack_bf16(dpt[2 * kq][0], dpt[2 * kq][1]);
                sa[1] = pack_bf16(dpt[2 * kq][2], dpt[2 * kq][3]);
                sa[2] = pack_bf16(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
                sa[3] = pack_bf16(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
#pragma unroll
                for (int dp = 0; dp < ND / 2; ++dp) {
                    const int r = kq * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                    const int c = dp * 16 + ((lane >> 4) << 3);
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(smem_addr(dos + r * STRIDE + c), b0, b1, b2, b3);
                    mma16816(dva[2 * dp], pa, b0, b1);
                    mma16816(dva[2 * dp + 1], pa, b2, b3);
                    ldsm_x4_t(smem_addr(qs + r * STRIDE + c), b0, b1, b2, b3);
                    mma16816(dka[2 * dp], sa, b0, b1);
                    mma16816(dka[2 * dp + 1], sa, b2, b3);
                }
            }

            // dS (bf16) to shared memory as [query][key] for the dQ product.
#pragma unroll
            for (int n = 0; n < NQ; ++n) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int qi_l = n * 8 + tig * 2 + (r & 1);
                    const int key_l = warp * 16 + gid + (r < 2 ? 0 : 8);
                    dss[qi_l * SSTRIDE + key_l] = __float2bfloat16_rn(dpt[n][r]);
                }
            }
            __syncthreads();

            // dQ[rows 16 rg.., cols DW ds..] += dS K over the 64 keys, then atomics.
            {
                const int rg = warp % RG, dsplit = warp / RG;
                float dqa[NDW][4];
#pragma unroll
                for (int n = 0; n < NDW; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {
                    uint32_t a[4];
                    const int ar = rg * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                    const int ac = kk * 16 + ((lane >> 4) << 3);
                    ldsm_x4(smem_addr(dss + ar * SSTRIDE + ac), a[0], a[1], a[2], a[3]);
#pragma unroll
                    for (int dp = 0; dp < NDW / 2; ++dp) {
                        const int r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                        const int c = dsplit * DW + dp * 16 + ((lane >> 4) << 3);
                        uint32_t b0, b1, b2, b3;
                        ldsm_x4_t(smem_addr(ks + r * STRIDE + c), b0, b1, b2, b3);
                        mma16816(dqa[2 * dp], a, b0, b1);
                        mma16816(dqa[2 * dp + 1], a, b2, b3);
                    }
                }
                const int qa = qq0 + rg * 16 + gid, qb = qa + 8;
#pragma unroll
                for (int n = 0; n < NDW; ++n) {
                    const int c = dsplit * DW + n * 8 + tig * 2;
                    if (qa < s1) {
                        float* p = dq_acc + ((size_t)qa * hq + h) * D + c;
                        atomicAdd(p, dqa[n][0] * scale);
                        atomicAdd(p + 1, dqa[n][1] * scale);
                    }
                    if (qb < s1) {
                        float* p = dq_acc + ((size_t)qb * hq + h) * D + c;
                        atomicAdd(p, dqa[n][2] * scale);
                        atomicAdd(p + 1, dqa[n][3] * scale);
                    }
                }
            }
        }
    }

    if (key_a < s1) {
        uint32_t* ka = reinterpret_cast<uint32_t*>(dk + ((size_t)key_a * hkv + g) * D);
        uint32_t* va = reinterpret_cast<uint32_t*>(dv + ((size_t)key_a * hkv + g) * D);
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            ka[(n * 8 + tig * 2) / 2] = pack_bf16(dka[n][0] * scale, dka[n][1] * scale);
            va[(n * 8 + tig * 2) / 2] = pack_bf16(dva[n][0], dva[n][1]);
        }
    }
    if (key_b < s1) {
        uint32_t* kb = reinterpret_cast<uint32_t*>(dk + ((size_t)key_b * hkv + g) * D);
        uint32_t* vb = reinterpret_cast<uint32_t*>(dv + ((size_t)key_b * hkv + g) * D);
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            kb[(n * 8 + tig * 2) / 2] = pack_bf16(dka[n][2] * scale, dka[n][3] * scale);
            vb[(n * 8 + tig * 2) / 2] = pack_bf16(dva[n][2], dva[n][3]);
        }
    }
}

#define BWD_MMA(NAME, DIM, NW, PREFETCH)                                                        \
    extern "C" __global__ void __launch_bounds__(32 * NW) NAME(                                  \
        const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,         \
        const float* delta, float* dq_acc, bf16* dk, bf16* dv, const int* tiles, int tokens,     \
        int hq, int hkv, float scale, float scale_log2, int causal, uint64_t seed,               \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop = Drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds}       \
                        .for_tile(tiles, blockIdx.x);                                            \
        bwd_mma<DIM, NW, PREFETCH>(q, k, v, dout, lse, delta, dq_acc, dk, dv, tiles, tokens, hq,  \
                                   hkv, scale, scale_log2, causal, drop);                        \
    }
BWD_MMA(attention_bwd_mma_v1_d64, 64, 4, false)
BWD_MMA(attention_bwd_mma_v1_d128, 128, 4, false)
BWD_MMA(attention_bwd_mma_v2_d64, 64, 4, true)
BWD_MMA(attention_bwd_mma_v2_d128, 128, 4, true)
BWD_MMA(attention_bwd_mma_d64, 64, 8, true)
BWD_MMA(attention_bwd_mma_d128, 128, 8, true)

// ---------------------------------------------------------- simple kernels
// One warp per row; lane l holds head-dimension entries l, l+32, ... (< D <= 256).

constexpr int SIMPLE_MAXC = 8;  // 8 x 32 lanes = D <= 256

template <typename E>
__device__ __forceinline__ void load_row(float* r, const E* src, int d, int lane) {
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) {
        const int x = lane + 32 * c;
        r[c] = x < d ? to_f(src[x]) : 0.0f;
    }
}

template <typename E>
__device__ __forceinline__ float dot_row(const float* r, const E* src, int d, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) {
        const int x = lane + 32 * c;
        if (x < d) s += r[c] * to_f(src[x]);
    }
    return warp_sum(s);
}

template <typename E>
__device__ __forceinline__ void store_row(E* dst, const float* r, float mul, int d, int lane) {
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) {
        const int x = lane + 32 * c;
        if (x < d) dst[x] = from_f<E>(r[c] * mul);
    }
}

// o, lse for query row (i, h): two-pass-free online softmax over the visible keys.
template <typename E>
__device__ __forceinline__ void fwd_simple(const E* q, const E* k, const E* v, E* o, float* lse,
                                           const int* cu, int nseq, int tokens, int hq, int hkv,
                                           int d, float scale, int causal, Drop drop) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)tokens * hq) return;
    const int i = (int)(w / hq), h = (int)(w % hq), g = h / (hq / hkv);
    int s0, s1;
    find_seq(cu, nseq, i, s0, s1, drop);
    float qr[SIMPLE_MAXC], acc[SIMPLE_MAXC];
    load_row(qr, q + ((size_t)i * hq + h) * d, d, lane);
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int jend = causal ? i + 1 : s1;
    for (int j = s0; j < jend; ++j) {
        const size_t kv = ((size_t)j * hkv + g) * d;
        const float s = dot_row(qr, k + kv, d, lane) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        m = mn;
        const float pf = p * drop.factor(h, i, j);
#pragma unroll
        for (int c = 0; c < SIMPLE_MAXC; ++c) {
            const int x = lane + 32 * c;
            acc[c] = acc[c] * corr + (x < d ? pf * to_f(v[kv + x]) : 0.0f);
        }
    }
    store_row(o + ((size_t)i * hq + h) * d, acc, l > 0.0f ? 1.0f / l : 0.0f, d, lane);
    if (lane == 0) lse[(size_t)h * tokens + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// dq for query row (i, h): scale sum_j P_ij (dP_ij f_ij - delta_i) k_j.
template <typename E>
__device__ __forceinline__ void bwd_simple_dq(const E* q, const E* k, const E* v, const E* dout,
                                              const float* lse, const float* delta, E* dq,
                                              const int* cu, int nseq, int tokens, int hq, int hkv,
                                              int d, float scale, int causal, Drop drop) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)tokens * hq) return;
    const int i = (int)(w / hq), h = (int)(w % hq), g = h / (hq / hkv);
    int s0, s1;
    find_seq(cu, nseq, i, s0, s1, drop);
    float qr[SIMPLE_MAXC], dor[SIMPLE_MAXC], acc[SIMPLE_MAXC];
    load_row(qr, q + ((size_t)i * hq + h) * d, d, lane);
    load_row(dor, dout + ((size_t)i * hq + h) * d, d, lane);
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) acc[c] = 0.0f;
    const float L = lse[(size_t)h * tokens + i], dl = delta[(size_t)h * tokens + i];
    const int jend = causal ? i + 1 : s1;
    for (int j = s0; j < jend; ++j) {
        const size_t kv = ((size_t)j * hkv + g) * d;
        const float p = expf(dot_row(qr, k + kv, d, lane) * scale - L);
        const float dp = dot_row(dor, v + kv, d, lane);
        const float ds = p * (dp * drop.factor(h, i, j) - dl);
#pragma unroll
        for (int c = 0; c < SIMPLE_MAXC; ++c) {
            const int x = lane + 32 * c;
            if (x < d) acc[c] += ds * to_f(k[kv + x]);
        }
    }
    store_row(dq + ((size_t)i * hq + h) * d, acc, scale, d, lane);
}

// dk, dv for key row (j, g): sums over the group's query heads and the queries that see j.
template <typename E>
__device__ __forceinline__ void bwd_simple_dkv(const E* q, const E* k, const E* v, const E* dout,
                                               const float* lse, const float* delta, E* dk, E* dv,
                                               const int* cu, int nseq, int tokens, int hq,
                                               int hkv, int d, float scale, int causal, Drop drop) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)tokens * hkv) return;
    const int j = (int)(w / hkv), g = (int)(w % hkv), group = hq / hkv;
    int s0, s1;
    find_seq(cu, nseq, j, s0, s1, drop);
    float kr[SIMPLE_MAXC], vr[SIMPLE_MAXC], dka[SIMPLE_MAXC], dva[SIMPLE_MAXC];
    load_row(kr, k + ((size_t)j * hkv + g) * d, d, lane);
    load_row(vr, v + ((size_t)j * hkv + g) * d, d, lane);
#pragma unroll
    for (int c = 0; c < SIMPLE_MAXC; ++c) dka[c] = dva[c] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int i = causal ? j : s0; i < s1; ++i) {
            const size_t qo = ((size_t)i * hq + h) * d;
            const float p = expf(dot_row(kr, q + qo, d, lane) * scale - lse[(size_t)h * tokens + i]);
            const float dp = dot_row(vr, dout + qo, d, lane);
            const float f = drop.factor(h, i, j);
            const float ds = p * (dp * f - delta[(size_t)h * tokens + i]);
#pragma unroll
            for (int c = 0; c < SIMPLE_MAXC; ++c) {
                const int x = lane + 32 * c;
                if (x < d) {
                    dva[c] += p * f * to_f(dout[qo + x]);
                    dka[c] += ds * to_f(q[qo + x]);
                }
            }
        }
    }
    store_row(dk + ((size_t)j * hkv + g) * d, dka, scale, d, lane);
    store_row(dv + ((size_t)j * hkv + g) * d, dva, 1.0f, d, lane);
}

#define SIMPLE(SUF, E)                                                                          \
    extern "C" __global__ void attention_fwd_simple_##SUF(                                       \
        const E* q, const E* k, const E* v, E* o, float* lse, const int* cu, int nseq,           \
        int tokens, int hq, int hkv, int d, float scale, int causal, uint64_t seed,              \
        uint64_t offset, uint64_t thr, float inv_keep, int drop_on, const uint64_t* seeds) {     \
        Drop drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds};             \
        fwd_simple<E>(q, k, v, o, lse, cu, nseq, tokens, hq, hkv, d, scale, causal, drop);       \
    }                                                                                            \
    extern "C" __global__ void attention_bwd_simple_dq_##SUF(                                    \
        const E* q, const E* k, const E* v, const E* dout, const float* lse,                     \
        const float* delta, E* dq, const int* cu, int nseq, int tokens, int hq, int hkv, int d,  \
        float scale, int causal, uint64_t seed, uint64_t offset, uint64_t thr, float inv_keep,   \
        int drop_on, const uint64_t* seeds) {                                                    \
        Drop drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds};             \
        bwd_simple_dq<E>(q, k, v, dout, lse, delta, dq, cu, nseq, tokens, hq, hkv, d, scale,     \
                         causal, drop);                                                          \
    }                                                                                            \
    extern "C" __global__ void attention_bwd_simple_dkv_##SUF(                                   \
        const E* q, const E* k, const E* v, const E* dout, const float* lse,                     \
        const float* delta, E* dk, E* dv, const int* cu, int nseq, int tokens, int hq, int hkv,  \
        int d, float scale, int causal, uint64_t seed, uint64_t offset, uint64_t thr,            \
        float inv_keep, int drop_on, const uint64_t* seeds) {                                    \
        Drop drop{seed, offset, thr, (uint64_t)tokens, inv_keep, drop_on, 0, seeds};             \
        bwd_simple_dkv<E>(q, k, v, dout, lse, delta, dk, dv, cu, nseq, tokens, hq, hkv, d,       \
                          scale, causal, drop);                                                  \
    }
SIMPLE(bf16, bf16)
SIMPLE(f32, float)
