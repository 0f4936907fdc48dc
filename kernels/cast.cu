// Element-type conversions between f32, bf16 and f16 on the device.
//
// Contract: `cast_<src>_<dst>(const Src* x, Dst* y, unsigned long long n)`
// converts n contiguous elements; x and y must not overlap. Narrowing rounds to
// nearest-even (the __float2bfloat16_rn / __float2half_rn intrinsics), which
// is what `half::bf16::from_f32` does on the CPU, so a cast on either device
// gives bit-identical results. bf16 <-> f16 goes through f32, exactly.
//
// Algorithm: a grid-stride loop, one element per thread per step. These run
// once per tensor upload or dtype change, never in a hot loop, so the simple
// form is kept over vectorised loads.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ float load_f32(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p, unsigned long long i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ float load_f32(const __half* p, unsigned long long i) {
    return __half2float(p[i]);
}

__device__ __forceinline__ void store_f32(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, unsigned long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store_f32(__half* p, unsigned long long i, float v) {
    p[i] = __float2half_rn(v);
}

template <typename Src, typename Dst>
__device__ void cast(const Src* __restrict__ x, Dst* __restrict__ y, unsigned long long n) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        store_f32(y, i, load_f32(x, i));
    }
}

}  // namespace

#define CAST(NAME, SRC, DST)                                                                   \
    extern "C" __global__ void NAME(const SRC* __restrict__ x, DST* __restrict__ y,             \
                                    unsigned long long n) {                                    \
        cast<SRC, DST>(x, y, n);                                                               \
    }

CAST(cast_f32_bf16, float, __nv_bfloat16)
CAST(cast_f32_f16, float, __half)
CAST(cast_bf16_f32, __nv_bfloat16, float)
CAST(cast_f16_f32, __half, float)
CAST(cast_bf16_f16, __nv_bfloat16, __half)
CAST(cast_f16_bf16, __half, __nv_bfloat16)
