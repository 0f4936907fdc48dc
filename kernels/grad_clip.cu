// Global-norm gradient clipping: sum of squares over many tensors, then a
// scale; CPU reference: crates/tensor/src/cpu/grad_clip.rs.
//
// Contract:
//   sumsq_partials_<T>(x [n] of T, n, partials): T = f32 or bf16. Writes
//     partials[blockIdx.x] = Σ x² over the elements block blockIdx.x visits,
//     in f64. Launch with blockDim.x = 256 exactly (the shared array size).
//     The host gives each tensor its own slice of one partials buffer.
//   sumsq_final(partials [count] f64, count, out [1] f64): out[0] = Σ partials.
//     Launch with ONE block of 256 threads.
//   scale_<T>(x [n] of T, n, factor f32): x ← x·factor in place; any launch.
//
// Algorithm. Squares and sums are in f64, as on the CPU: a LoRA model has
// millions of gradient elements and an f32 running sum loses the small ones
// (an f64 partial of ≤ a few thousand f32 squares is exact to ~1e-16
// relative). Each thread accumulates a grid-strided share, then the block
// reduces its 256 values with a fixed shared-memory tree. The final kernel
// sums the partials in a fixed pattern too, so for a given set of tensor
// sizes (which fixes every grid) the norm is bitwise reproducible from run to
// run. It may differ from the CPU's in the last bits (another summation
// order). NaN or Inf anywhere propagates into the norm; the host then refuses
// to scale and reports the error the CPU path reports.

#include <cuda_bf16.h>

constexpr int kBlock = 256;

static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
static __device__ __forceinline__ void store(__nv_bfloat16* p, long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

// Sum of v over a kBlock-thread block, through `sh` (kBlock doubles of shared
// memory, declared by the kernel); valid in thread 0 only.
static __device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

template <typename T>
static __device__ void block_partials(const T* __restrict__ x, long long n, double* __restrict__ out,
                                      double* sh) {
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * kBlock;
    for (long long i = (long long)blockIdx.x * kBlock + threadIdx.x; i < n; i += stride) {
        const double d = (double)to_f32(x[i]);
        acc += d * d;
    }
    const double total = block_sum(acc, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

template <typename T>
static __device__ void scale(T* __restrict__ x, long long n, float factor) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        store(x, i, __fmul_rn(to_f32(x[i]), factor));
    }
}

extern "C" __global__ void sumsq_partials_f32(const float* x, long long n, double* partials) {
    __shared__ double sh[kBlock];
    block_partials(x, n, partials, sh);
}

extern "C" __global__ void sumsq_partials_bf16(const __nv_bfloat16* x, long long n,
                                               double* partials) {
    __shared__ double sh[kBlock];
    block_partials(x, n, partials, sh);
}

extern "C" __global__ void sumsq_final(const double* partials, int count, double* out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += kBlock) acc += partials[i];
    __shared__ double sh[kBlock];
    const double total = block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = total;
}

extern "C" __global__ void scale_f32(float* x, long long n, float factor) { scale(x, n, factor); }

extern "C" __global__ void scale_bf16(__nv_bfloat16* x, long long n, float factor) {
    scale(x, n, factor);
}
