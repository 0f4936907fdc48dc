// SwiGLU (Llama's MLP activation), forward and backward; CPU reference: crates/tensor/src/cpu/swiglu.rs.
//
// Contract: gate, up, out, dout, dgate, dup: n contiguous elements of T (f32 or
// bf16), all the same T; no output overlaps an input. Kernel names end in _<T>.
//   swiglu_fwd:  out   = silu(gate) · up,  silu(g) = g·σ(g)
//   swiglu_bwd:  dgate = dout · up · σ(g)·(1 + g·(1 − σ(g))),  dup = dout · silu(g)
// Both outputs are overwritten.
//
// Algorithm: elementwise, one element per thread per step of a grid-stride loop
// over a 64-bit index, f32 arithmetic in registers. σ takes the branch that never
// exponentiates a positive number (as on the CPU), so nothing overflows and σ
// stays in [0, 1]; expf is the accurate one (no --use_fast_math), which keeps
// f32 results within a few ulp of the CPU's. Backward recomputes σ(gate) from
// the saved input instead of reading a stored activation.

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

__device__ __forceinline__ float sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

template <typename T>
__device__ void fwd(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                    unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float g = load_f32(gate, i);
        store_f32(out, i, g * sigmoid(g) * load_f32(up, i));
    }
}

template <typename T>
__device__ void bwd(const T* __restrict__ dout, const T* __restrict__ gate,
                    const T* __restrict__ up, T* __restrict__ dgate, T* __restrict__ dup,
                    unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float d = load_f32(dout, i);
        const float g = load_f32(gate, i);
        const float u = load_f32(up, i);
        const float s = sigmoid(g);
        store_f32(dup, i, d * g * s);
        store_f32(dgate, i, d * u * s * (1.0f + g * (1.0f - s)));
    }
}

}  // namespace

#define SWIGLU(NAME, T)                                                                        \
    extern "C" __global__ void swiglu_fwd_##NAME(const T* __restrict__ gate,                  \
                                                  const T* __restrict__ up, T* __restrict__ out, \
                                                  unsigned long long n) {                      \
        fwd<T>(gate, up, out, n);                                                              \
    }                                                                                          \
    extern "C" __global__ void swiglu_bwd_##NAME(                                              \
        const T* __restrict__ dout, const T* __restrict__ gate, const T* __restrict__ up,      \
        T* __restrict__ dgate, T* __restrict__ dup, unsigned long long n) {                    \
        bwd<T>(dout, gate, up, dgate, dup, n);                                                 \
    }

SWIGLU(f32, float)
SWIGLU(bf16, __nv_bfloat16)
