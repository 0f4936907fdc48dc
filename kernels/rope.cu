// Rotary position embedding, forward and backward; CPU reference: crates/tensor/src/cpu/rope.rs.
//
// Contract (row-major, contiguous):
//   x (input), y (output): [tokens, heads, 2·half] of T (f32 or bf16); y may equal x
//     (in place), but must not partially overlap it;
//   positions: [tokens] u32, each < the table's row count (checked on the host);
//   cos, sin: [max_positions, half] f32, cos/sin of p·θᵢ built on the host in f64.
//   Layout is Hugging Face's "rotate-half": element i of a head pairs with i + half.
//   sign = +1 rotates by +p·θᵢ (forward), −1 by −p·θᵢ (backward: the transpose).
//   Kernel names: rope_<T>.
//
// Algorithm: one thread per (token, head, i < half) pair, in a grid-stride loop
// over a 64-bit pair index. A thread reads both members of its pair before it
// writes either, and no two threads share a pair, so y == x is safe. Arithmetic
// is f32, the same expression order as the CPU: lo' = a·c − b·s, hi' = b·c + a·s.

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

// No __restrict__ on x/y: they may alias (in-place rotation).
template <typename T>
__device__ void rope(const T* x, T* y, const unsigned int* __restrict__ positions,
                     const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                     unsigned long long tokens, unsigned long long heads,
                     unsigned long long half, float sign) {
    const unsigned long long pairs = tokens * heads * half;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pairs; p += stride) {
        const unsigned long long i = p % half;
        const unsigned long long th = p / half;  // token · heads + head
        const unsigned long long t = th / heads;
        const unsigned long long row = (unsigned long long)positions[t] * half + i;
        const float c = cos_t[row];
        const float s = sign * sin_t[row];
        const unsigned long long lo = th * 2 * half + i;
        const unsigned long long hi = lo + half;
        const float a = load_f32(x, lo);
        const float b = load_f32(x, hi);
        store_f32(y, lo, a * c - b * s);
        store_f32(y, hi, b * c + a * s);
    }
}

}  // namespace

extern "C" __global__ void rope_f32(const float* x, float* y, const unsigned int* positions,
                                    const float* cos_t, const float* sin_t,
                                    unsigned long long tokens, unsigned long long heads,
                                    unsigned long long half, float sign) {
    rope<float>(x, y, positions, cos_t, sin_t, tokens, heads, half, sign);
}

extern "C" __global__ void rope_bf16(const __nv_bfloat16* x, __nv_bfloat16* y,
                                     const unsigned int* positions, const float* cos_t,
                                     const float* sin_t, unsigned long long tokens,
                                     unsigned long long heads, unsigned long long half,
                                     float sign) {
    rope<__nv_bfloat16>(x, y, positions, cos_t, sin_t, tokens, heads, half, sign);
}
