// RMSNorm (Llama's pre-norm) forward and backward; CPU reference: crates/tensor/src/cpu/rmsnorm.rs.
//
// Contract (row-major, contiguous, all sizes in elements):
//   x, y, dy, dx: [rows, dim] of X (f32 or bf16);  weight: [dim] of W (f32 or bf16);
//   rstd: [rows] f32, written by forward and read by backward;
//   partial: [gridDim.x, dim] f32 scratch of the backward (or null when no dweight is wanted);
//   dweight: [dim] of W, ADDED to (never overwritten).
//   Kernel names end in _<X>_w<W>, e.g. rmsnorm_fwd_bf16_wf32.
//   Every kernel is launched with blockDim.x a multiple of 32, at most 1024.
//
// Algorithm. One block owns one row at a time (a grid-stride loop over rows, so
// the backward can run on fewer blocks than rows). Its threads stride over the
// columns, accumulate their share of the row's sum in f32 registers and combine
// it with a warp-shuffle tree plus one shared-memory step. Forward then writes
// y = x·s·w with s = 1/sqrt(mean(x²) + eps), and saves s in rstd. Backward
// computes dot = Σ dy·w·x the same way, then dx = s·dy·w − s³·dot/dim · x.
//
// The weight gradient dw = Σ_rows dy·x·s is reduced without atomics, so it is
// bitwise reproducible for a given grid: thread t of a block only ever touches
// columns t, t + blockDim, ..., so it can keep its running sums for those columns
// in a shared-memory row of dim floats without any synchronisation; at the end
// each block stores that row to partial[blockIdx.x]. A second kernel,
// rmsnorm_dweight_*, gives one thread per column, sums the gridDim partial rows
// in order and adds the total to dweight (so dweight may be bf16 or f32).

#include <cuda_bf16.h>

namespace {

__device__ __forceinline__ float load_f32(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p, unsigned long long i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store_f32(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, unsigned long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

// Sum of v over the block; every thread gets the result. `scratch` holds 32
// floats; the leading __syncthreads makes it safe to call repeatedly.
__device__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

template <typename X, typename W>
__device__ void fwd(const X* __restrict__ x, const W* __restrict__ w, X* __restrict__ y,
                    float* __restrict__ rstd, int rows, int dim, float eps) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned long long base = (unsigned long long)r * dim;
        float ss = 0.0f;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            const float v = load_f32(x, base + c);
            ss += v * v;
        }
        ss = block_sum(ss, scratch);
        const float s = 1.0f / sqrtf(ss / (float)dim + eps);
        if (threadIdx.x == 0) rstd[r] = s;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            store_f32(y, base + c, load_f32(x, base + c) * s * load_f32(w, c));
        }
    }
}

// Dynamic shared memory: dim floats when partial != null, else none.
template <typename X, typename W>
__device__ void bwd(const X* __restrict__ dy, const X* __restrict__ x, const W* __restrict__ w,
                    const float* __restrict__ rstd, X* __restrict__ dx,
                    float* __restrict__ partial, int rows, int dim) {
    __shared__ float scratch[32];
    extern __shared__ float dw_acc[];
    const bool want_dw = partial != nullptr;
    if (want_dw) {
        for (int c = threadIdx.x; c < dim; c += blockDim.x) dw_acc[c] = 0.0f;
    }
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned long long base = (unsigned long long)r * dim;
        const float s = rstd[r];
        float dot = 0.0f;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            const float g = load_f32(dy, base + c);
            const float xv = load_f32(x, base + c);
            dot += g * load_f32(w, c) * xv;
            if (want_dw) dw_acc[c] += g * xv * s;
        }
        dot = block_sum(dot, scratch);
        const float k = s * s * s * dot / (float)dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            const float g = load_f32(dy, base + c);
            const float xv = load_f32(x, base + c);
            store_f32(dx, base + c, s * g * load_f32(w, c) - k * xv);
        }
    }
    if (want_dw) {
        // Each thread wrote only its own columns: no barrier needed before the store.
        const unsigned long long out = (unsigned long long)blockIdx.x * dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) partial[out + c] = dw_acc[c];
    }
}

// dweight[c] += Σ_b partial[b, c], summed in block order b = 0, 1, ...
template <typename W>
__device__ void dweight_sum(const float* __restrict__ partial, W* __restrict__ dweight,
                            int blocks, int dim) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    float acc = 0.0f;
    for (int b = 0; b < blocks; ++b) acc += partial[(unsigned long long)b * dim + c];
    store_f32(dweight, c, load_f32(dweight, c) + acc);
}

}  // namespace

#define RMSNORM(XN, X, WN, W)                                                                  \
    extern "C" __global__ void rmsnorm_fwd_##XN##_w##WN(const X* __restrict__ x,              \
                                                         const W* __restrict__ w,              \
                                                         X* __restrict__ y,                    \
                                                         float* __restrict__ rstd, int rows,   \
                                                         int dim, float eps) {                 \
        fwd<X, W>(x, w, y, rstd, rows, dim, eps);                                              \
    }                                                                                          \
    extern "C" __global__ void rmsnorm_bwd_##XN##_w##WN(                                       \
        const X* __restrict__ dy, const X* __restrict__ x, const W* __restrict__ w,            \
        const float* __restrict__ rstd, X* __restrict__ dx, float* __restrict__ partial,       \
        int rows, int dim) {                                                                   \
        bwd<X, W>(dy, x, w, rstd, dx, partial, rows, dim);                                     \
    }

RMSNORM(f32, float, f32, float)
RMSNORM(f32, float, bf16, __nv_bfloat16)
RMSNORM(bf16, __nv_bfloat16, f32, float)
RMSNORM(bf16, __nv_bfloat16, bf16, __nv_bfloat16)

extern "C" __global__ void rmsnorm_dweight_f32(const float* __restrict__ partial,
                                               float* __restrict__ dweight, int blocks, int dim) {
    dweight_sum<float>(partial, dweight, blocks, dim);
}
extern "C" __global__ void rmsnorm_dweight_bf16(const float* __restrict__ partial,
                                                __nv_bfloat16* __restrict__ dweight, int blocks,
                                                int dim) {
    dweight_sum<__nv_bfloat16>(partial, dweight, blocks, dim);
}
