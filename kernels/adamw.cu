// One AdamW step (torch.optim.AdamW semantics: decoupled decay, bias-corrected
// moments, eps after the bias correction); CPU reference: crates/tensor/src/cpu/adamw.rs.
//
// Contract: params, grads, m, v: [n] f32, contiguous (params are the f32
//   master weights; m and v the caller's moment buffers), updated in place
//   (grads read only). The scalars are computed once on the host in f64 and
//   rounded to f32 exactly as the CPU kernel does:
//   decay = 1 − lr·wd, step_size = lr/(1 − β1ᵗ), bc2_sqrt = sqrt(1 − β2ᵗ),
//   b1 = β1, b2 = β2, c1 = 1 − β1, c2 = 1 − β2, eps.
//   Launch: any grid and blockDim (grid-stride loop over n).
//
// Algorithm, per element, in the CPU's exact operation order:
//   p ← p·decay;  m ← b1·m + c1·g;  v ← b2·v + (c2·g)·g;
//   p ← p − (step_size·m) / (sqrt(v)/bc2_sqrt + eps).
// Every operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn,
// __fdiv_rn, __fsqrt_rn), so nvcc cannot contract a multiply-add into an FMA
// and the result is bit-identical to the CPU's f32 step.

extern "C" __global__ void adamw_step_f32(float* __restrict__ params,
                                          const float* __restrict__ grads, float* __restrict__ m,
                                          float* __restrict__ v, long long n, float decay,
                                          float step_size, float bc2_sqrt, float b1, float b2,
                                          float c1, float c2, float eps) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = grads[i];
        float p = __fmul_rn(params[i], decay);
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(c1, g));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(c2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
    }
}
