// Mean pooling over CSR index sets, forward and backward; CPU reference:
// crates/tensor/src/cpu/pooling.rs.
//
// Contract (row-major, contiguous, sizes in elements; validated on the host:
// every set non-empty, every index < T):
//   hidden: [T, H] of X (f32 or bf16);  out: [S, H] of X;
//   offsets: [S + 1] u32, indices: [nnz] u32 (set s lists indices[offsets[s]..offsets[s+1]]);
//   dout: [S, H] of X;  dhidden: [T, H] of X, overwritten (0 on rows no set lists);
//   row_start: [T + 1] u32, row_sets: [nnz] u32: the transposed CSR (for each
//   token row, the sets listing it with multiplicity, in set order), built on
//   the host by cpu::pooling::transpose.
//   Launch: forward grid = S blocks, backward grid = T blocks; any blockDim.
//
// Algorithm. Forward: block s, threads striding over H, sums its rows in list
// order and multiplies by 1/|s| (one f32 reciprocal, as the CPU). Backward
// gathers over the transposed CSR instead of scattering over sets, so each
// dhidden row has one owner: no atomics, deterministic. Products and sums use
// __fmul_rn/__fadd_rn so no FMA contraction changes the rounding: for f32
// storage both directions are bit-identical to the CPU.

#include <cuda_bf16.h>

static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ void store(float* p, unsigned long long i, float v) { p[i] = v; }
static __device__ __forceinline__ void store(__nv_bfloat16* p, unsigned long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

static __device__ __forceinline__ float inv_len(const unsigned* offsets, unsigned s) {
    return __fdiv_rn(1.0f, (float)(offsets[s + 1] - offsets[s]));
}

template <typename X>
static __device__ void fwd(const X* __restrict__ hidden, const unsigned* __restrict__ offsets,
                    const unsigned* __restrict__ indices, X* __restrict__ out, int h) {
    const unsigned s = blockIdx.x;
    const unsigned begin = offsets[s], end = offsets[s + 1];
    const float inv = inv_len(offsets, s);
    const unsigned long long base = (unsigned long long)s * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float acc = 0.0f;
        for (unsigned i = begin; i < end; ++i) {
            acc = __fadd_rn(acc, to_f32(hidden[(unsigned long long)indices[i] * h + j]));
        }
        store(out, base + j, __fmul_rn(acc, inv));
    }
}

template <typename X>
static __device__ void bwd(const X* __restrict__ dout, const unsigned* __restrict__ offsets,
                    const unsigned* __restrict__ row_start, const unsigned* __restrict__ row_sets,
                    X* __restrict__ dhidden, int h) {
    const unsigned t = blockIdx.x;
    const unsigned begin = row_start[t], end = row_start[t + 1];
    const unsigned long long base = (unsigned long long)t * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float acc = 0.0f;
        for (unsigned i = begin; i < end; ++i) {
            const unsigned s = row_sets[i];
            const float g = to_f32(dout[(unsigned long long)s * h + j]);
            acc = __fadd_rn(acc, __fmul_rn(g, inv_len(offsets, s)));
        }
        store(dhidden, base + j, acc);
    }
}


extern "C" __global__ void pooling_fwd_f32(const float* hidden, const unsigned* offsets,
                                           const unsigned* indices, float* out, int h) {
    fwd(hidden, offsets, indices, out, h);
}

extern "C" __global__ void pooling_fwd_bf16(const __nv_bfloat16* hidden, const unsigned* offsets,
                                            const unsigned* indices, __nv_bfloat16* out, int h) {
    fwd(hidden, offsets, indices, out, h);
}

extern "C" __global__ void pooling_bwd_f32(const float* dout, const unsigned* offsets,
                                           const unsigned* row_start, const unsigned* row_sets,
                                           float* dhidden, int h) {
    bwd(dout, offsets, row_start, row_sets, dhidden, h);
}

extern "C" __global__ void pooling_bwd_bf16(const __nv_bfloat16* dout, const unsigned* offsets,
                                            const unsigned* row_start, const unsigned* row_sets,
                                            __nv_bfloat16* dhidden, int h) {
    bwd(dout, offsets, row_start, row_sets, dhidden, h);
}
