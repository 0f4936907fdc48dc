// Token embedding forward (gather) and backward (scatter-add by id); CPU
// reference: crates/tensor/src/cpu/embedding.rs.
//
// Contract (row-major, contiguous, sizes in elements, all ids already checked
// < V on the host):
//   ids: [N] u32;  table: [V, H] of T;  out: [N, H] of T   (T = f32 or bf16).
//   Backward inputs are a grouping of the positions by id, built on the host
//   (the ids are host data anyway): order [N] u32 = positions stably sorted by
//   id; run_start [U + 1] u32 = where each run of equal ids starts in `order`;
//   run_row [U] u32 = the destination row of each run, or null for row u.
//   dout: [N, H] of T;  dst: f32, [V, H] (dense, accumulate = 1) or [U, H]
//   (sparse, accumulate = 0, overwritten).
//   Launch: forward grid = N blocks, backward grid = U blocks; any blockDim.
//
// Algorithm. Forward: block p copies row ids[p], threads striding over H.
// Backward: block u owns the one destination row of run u, so no two blocks
// write the same address and no atomics are needed. Each thread sums its
// columns over the run's positions in position order, starting from the value
// already in dst (dense) or from 0 (sparse): exactly the CPU's summation
// order, so f32 results are bit-identical to the CPU and deterministic.

#include <cuda_bf16.h>

static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
static __device__ void gather(const unsigned* __restrict__ ids, const T* __restrict__ table,
                       T* __restrict__ out, int hidden) {
    const unsigned long long p = blockIdx.x;
    const unsigned long long src = (unsigned long long)ids[p] * hidden;
    const unsigned long long dst = p * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) out[dst + j] = table[src + j];
}

template <typename T>
static __device__ void scatter_runs(const unsigned* __restrict__ order,
                             const unsigned* __restrict__ run_start,
                             const unsigned* __restrict__ run_row, const T* __restrict__ dout,
                             float* __restrict__ dst, int hidden, int accumulate) {
    const unsigned u = blockIdx.x;
    const unsigned begin = run_start[u], end = run_start[u + 1];
    const unsigned long long row = run_row ? run_row[u] : u;
    const unsigned long long base = row * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float acc = accumulate ? dst[base + j] : 0.0f;
        for (unsigned i = begin; i < end; ++i) {
            acc += to_f32(dout[(unsigned long long)order[i] * hidden + j]);
        }
        dst[base + j] = acc;
    }
}


extern "C" __global__ void embedding_fwd_f32(const unsigned* ids, const float* table, float* out,
                                             int hidden) {
    gather(ids, table, out, hidden);
}

extern "C" __global__ void embedding_fwd_bf16(const unsigned* ids, const __nv_bfloat16* table,
                                              __nv_bfloat16* out, int hidden) {
    gather(ids, table, out, hidden);
}

extern "C" __global__ void embedding_bwd_f32(const unsigned* order, const unsigned* run_start,
                                             const unsigned* run_row, const float* dout,
                                             float* dst, int hidden, int accumulate) {
    scatter_runs(order, run_start, run_row, dout, dst, hidden, accumulate);
}

extern "C" __global__ void embedding_bwd_bf16(const unsigned* order, const unsigned* run_start,
                                              const unsigned* run_row, const __nv_bfloat16* dout,
                                              float* dst, int hidden, int accumulate) {
    scatter_runs(order, run_start, run_row, dout, dst, hidden, accumulate);
}
