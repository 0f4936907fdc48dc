// Dropout forward/backward with a counter-based mask; CPU reference:
// crates/tensor/src/cpu/dropout.rs, whose hash this file reproduces bit for bit.
//
// Contract: src, dst: [n] of T (f32 or bf16), contiguous; dst = src · mask · scale.
//   seed, offset: the mask's stream (element i uses index offset + i);
//   thr: keep threshold in [0, 2^32] (cpu::dropout::keep_threshold, computed on
//   the host); scale: 1/(1 − p) rounded to f32 on the host exactly as the CPU does.
//   Forward and backward are the same kernel (backward passes dy → dx).
//   Launch: any grid and blockDim (grid-stride loop over n).
//
// Algorithm. Element i is kept iff hash_u32(seed, offset + i) < thr, with
// hash_u32 = high 32 bits of mix64(seed ^ mix64(index + golden)), mix64 being
// SplitMix64's finaliser. All arithmetic is 64-bit unsigned with wrap-around,
// identical to Rust's wrapping ops, so the GPU drops exactly the elements the
// CPU drops; the kept value is one f32 multiply (bit-exact for f32 storage).

#include <cuda_bf16.h>

static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
static __device__ __forceinline__ void store(__nv_bfloat16* p, long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

static __device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static __device__ __forceinline__ unsigned hash_u32(unsigned long long seed, unsigned long long index) {
    return (unsigned)(mix64(seed ^ mix64(index + 0x9e3779b97f4a7c15ULL)) >> 32);
}

template <typename T>
static __device__ void apply(const T* __restrict__ src, T* __restrict__ dst, long long n,
                      unsigned long long seed, unsigned long long offset, unsigned long long thr,
                      float scale) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const bool keep = (unsigned long long)hash_u32(seed, offset + (unsigned long long)i) < thr;
        store(dst, i, keep ? __fmul_rn(to_f32(src[i]), scale) : 0.0f);
    }
}


extern "C" __global__ void dropout_f32(const float* src, float* dst, long long n,
                                       unsigned long long seed, unsigned long long offset,
                                       unsigned long long thr, float scale) {
    apply(src, dst, n, seed, offset, thr, scale);
}

extern "C" __global__ void dropout_bf16(const __nv_bfloat16* src, __nv_bfloat16* dst, long long n,
                                        unsigned long long seed, unsigned long long offset,
                                        unsigned long long thr, float scale) {
    apply(src, dst, n, seed, offset, thr, scale);
}
