// Residual connections; CPU reference: crates/tensor/src/cpu/residual.rs.
//
// Contract: every pointer addresses n contiguous elements; no output overlaps an input.
//   residual_fwd_<T>(a, b, out, n):        out = a + b;      a, b, out of T
//   residual_bwd_<T>(dout, da, db, n):     da = db = dout;   all of T
//   residual_add_<A>_<X>(acc, x, n):       acc += x;         acc of A, x of X
// with T, A, X each f32 or bf16. add_into mixes types so a bf16 gradient can
// accumulate into an f32 buffer (and vice versa) without a cast kernel first.
//
// Algorithm: elementwise, one element per thread per step of a grid-stride loop
// over a 64-bit index; the sum is formed in f32 and rounded once on store, so an
// f32 result is bit-identical to the CPU's. Backward writes both branches in one
// pass (one read of dout instead of two device-to-device copies).

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

__device__ __forceinline__ unsigned long long first() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ unsigned long long stride() {
    return (unsigned long long)gridDim.x * blockDim.x;
}

template <typename T>
__device__ void fwd(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                    unsigned long long n) {
    for (unsigned long long i = first(); i < n; i += stride()) {
        store_f32(out, i, load_f32(a, i) + load_f32(b, i));
    }
}

// A plain copy: bf16 -> f32 -> bf16 is exact, so no conversion is needed.
template <typename T>
__device__ void bwd(const T* __restrict__ dout, T* __restrict__ da, T* __restrict__ db,
                    unsigned long long n) {
    for (unsigned long long i = first(); i < n; i += stride()) {
        const T g = dout[i];
        da[i] = g;
        db[i] = g;
    }
}

template <typename A, typename X>
__device__ void add(A* __restrict__ acc, const X* __restrict__ x, unsigned long long n) {
    for (unsigned long long i = first(); i < n; i += stride()) {
        store_f32(acc, i, load_f32(acc, i) + load_f32(x, i));
    }
}

}  // namespace

#define RESIDUAL(NAME, T)                                                                      \
    extern "C" __global__ void residual_fwd_##NAME(const T* __restrict__ a,                   \
                                                    const T* __restrict__ b,                   \
                                                    T* __restrict__ out, unsigned long long n) { \
        fwd<T>(a, b, out, n);                                                                  \
    }                                                                                          \
    extern "C" __global__ void residual_bwd_##NAME(const T* __restrict__ dout,                \
                                                    T* __restrict__ da, T* __restrict__ db,    \
                                                    unsigned long long n) {                    \
        bwd<T>(dout, da, db, n);                                                               \
    }

#define RESIDUAL_ADD(AN, A, XN, X)                                                             \
    extern "C" __global__ void residual_add_##AN##_##XN(A* __restrict__ acc,                  \
                                                         const X* __restrict__ x,              \
                                                         unsigned long long n) {               \
        add<A, X>(acc, x, n);                                                                  \
    }

RESIDUAL(f32, float)
RESIDUAL(bf16, __nv_bfloat16)
RESIDUAL_ADD(f32, float, f32, float)
RESIDUAL_ADD(f32, float, bf16, __nv_bfloat16)
RESIDUAL_ADD(bf16, __nv_bfloat16, f32, float)
RESIDUAL_ADD(bf16, __nv_bfloat16, bf16, __nv_bfloat16)
