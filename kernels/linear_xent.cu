// Fused LM head + loss on the GPU: cross-entropy (linear_xent_*) and
// KL(teacher || student) (linear_kl_*), the per-tile arithmetic of
// crates/tensor/src/cpu/linear_xent.rs and cpu/linear_kl.rs.
//
// Contract shared by every kernel here
// - The host (crates/tensor/src/cuda/linear_xent.rs) walks the vocabulary in
//   tiles [t0, t0 + len) and the *active* rows (rows that contribute to the
//   loss: target != ignore index and coefficient != 0, in increasing order)
//   in chunks of rc rows. The logits tile of a chunk, Z = h_chunk . W_tile^T,
//   comes from a cuBLAS GEMM as f32, row-major [rc, len] (row stride = len).
//   These kernels never see [N, V].
// - Per-active-row arrays (targets, coef, running state) are indexed by the
//   row's position in the active list; the host passes them already offset
//   to the chunk's first position, so blockIdx.x is the row within the chunk.
//   rows[i] maps an active position back to the original row (for lse [N]
//   and dh [N, H]).
// - Row kernels: one block of LXENT_BLOCK (256) threads per chunk row,
//   grid = rc; threads stride over the row's len logits. Elementwise kernels
//   use a grid-stride loop over n elements and any grid.
// - dtypes: logits, running state, lse, coefficients and all accumulators
//   are f32. Kernels suffixed _f32 / _bf16 read or write hidden-state,
//   weight or gradient tensors of that type (bf16 rounded to nearest even).
//   Targets and row indices are int32 (V < 2^31).
//
// Algorithm
// - Forward: each tile updates a running (max, sum) per row, the online
//   log-sum-exp: new max m' = max(m, tile max), sum' = sum.exp(m - m') +
//   sum_v exp(z_v - m'); the target's logit is picked from the tile that
//   holds it. lse = m + log(sum), loss_row = c.(lse - z_target).
// - Backward: with forward's lse, the tile becomes in one elementwise pass
//   G = c.dloss.(exp(z - lse) - onehot(target)), written as the GEMM input
//   type (bf16 for bf16 models: cuBLAS wants A and B of one type; in place
//   for f32). The host then runs dh += G.W_tile and dW += G^T.h_chunk.
// - One sweep (frozen head): dh_r = c.(sum_v softmax_v.W_v - W_target), a
//   softmax-weighted sum accumulated online like attention's output: the
//   tile kernel writes P = exp(z - m') and rescales the row's f32
//   accumulator by exp(m - m') before the host's GEMM acc += P.W_tile; the
//   finish kernel divides by the sum and subtracts W_target.
// - One sweep with dW (trained head): the host walks row chunks over the
//   whole vocabulary instead (linear_xent_sweep_row_*), so each row's lse
//   is final before its gradient is formed.
// - KL: teacher and student tiles Zt, Zs; running (max, sum) for both, and
//   cross = sum_v exp(zt - mt).(zt - zs) rescaled with the teacher's sum, so
//   KL = cross/sum_t - lse_t + lse_s. Backward: G = c.dloss.(p_s - p_t) from
//   both saved lse; the teacher gets no gradient.
// No masking inside a tile is needed: inactive rows never enter a chunk, and
// the last tile / chunk are simply shorter (len, rc passed in).

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#define LXENT_BLOCK 256

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

// Block-wide max / sum over LXENT_BLOCK threads, result in every thread.
// The leading __syncthreads lets callers reduce back to back with one
// scratch array: nobody overwrites it before all have read the last result.
__device__ float block_max(float v) {
    __shared__ float scratch[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

__device__ float block_sum(float v) {
    __shared__ float scratch[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

// Rescale factor exp(old - new) of sums taken relative to max `old`; 0 when
// nothing was summed yet (old = -inf), without forming -inf - -inf.
__device__ __forceinline__ float rebase(float old_max, float new_max) {
    return old_max == -INFINITY ? 0.0f : expf(old_max - new_max);
}

// ---------------------------------------------------------------- shared helpers

// p[i] = value for i < n (running max = -inf, sums = 0 before the first tile).
extern "C" __global__ void linear_xent_fill_f32(float* p, long long n, float value) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        p[i] = value;
}

// dst[i, :] = src[rows[i], :] for i < na; src [N, dim], dst [na, dim], same type.
template <typename T>
__device__ void gather_rows(const T* src, const int* rows, T* dst, long long na, long long dim) {
    const long long n = na * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / dim, k = i - r * dim;
        dst[i] = src[(long long)rows[r] * dim + k];
    }
}
extern "C" __global__ void linear_xent_gather_f32(const float* src, const int* rows, float* dst,
                                                  long long na, long long dim) {
    gather_rows(src, rows, dst, na, dim);
}
extern "C" __global__ void linear_xent_gather_bf16(const bf16* src, const int* rows, bf16* dst,
                                                   long long na, long long dim) {
    gather_rows(src, rows, dst, na, dim);
}

// dst[rows[i], :] = (T) src[i, :] for i < na; src f32 [na, dim]; dst [N, dim]
// is zeroed by the host first (inactive rows keep a zero gradient).
template <typename T>
__device__ void scatter_rows(const float* src, const int* rows, T* dst, long long na, long long dim) {
    const long long n = na * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / dim, k = i - r * dim;
        st(dst, (long long)rows[r] * dim + k, src[i]);
    }
}
extern "C" __global__ void linear_xent_scatter_f32(const float* src, const int* rows, float* dst,
                                                   long long na, long long dim) {
    scatter_rows(src, rows, dst, na, dim);
}
extern "C" __global__ void linear_xent_scatter_bf16(const float* src, const int* rows, bf16* dst,
                                                    long long na, long long dim) {
    scatter_rows(src, rows, dst, na, dim);
}

// dw[i] = (T)(dw[i] + acc[i]) for i < n: folds a tile's f32 head gradient,
// summed over all chunks, into a bf16 dW with a single rounding.
template <typename T>
__device__ void add_into(const float* acc, T* dw, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        st(dw, i, ld(dw, i) + acc[i]);
}
extern "C" __global__ void linear_xent_add_f32(const float* acc, float* dw, long long n) {
    add_into(acc, dw, n);
}
extern "C" __global__ void linear_xent_add_bf16(const float* acc, bf16* dw, long long n) {
    add_into(acc, dw, n);
}

// ---------------------------------------------------------------- cross-entropy

// Forward, one tile: z f32 [rc, len]; targets, run_max, run_sum, picked: [rc]
// (chunk-offset). picked[r] gets z[r, target - t0] when the target is here.
extern "C" __global__ void linear_xent_fwd_tile(const float* z, int len, int t0, const int* targets,
                                                float* run_max, float* run_sum, float* picked) {
    const int r = blockIdx.x;
    const float* zr = z + (long long)r * len;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < len; v += blockDim.x) m = fmaxf(m, zr[v]);
    m = block_max(m);
    const float old = run_max[r];
    const float mn = fmaxf(old, m);
    float s = 0.0f;
    for (int v = threadIdx.x; v < len; v += blockDim.x) s += expf(zr[v] - mn);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        run_sum[r] = run_sum[r] * rebase(old, mn) + s;
        run_max[r] = mn;
        const int t = targets[r] - t0;
        if (t >= 0 && t < len) picked[r] = zr[t];
    }
}

// Forward, after the last tile, one thread per active row i < na:
// lse[rows[i]] = max + log(sum) (lse is [N], zeroed by the host for inactive
// rows); loss_rows[i] = coef[i].(lse - picked).
extern "C" __global__ void linear_xent_fwd_finish(const float* run_max, const float* run_sum,
                                                  const float* picked, const float* coef,
                                                  const int* rows, int na, float* lse,
                                                  float* loss_rows) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= na) return;
    const float l = run_max[i] + logf(run_sum[i]);
    lse[rows[i]] = l;
    loss_rows[i] = coef[i] * (l - picked[i]);
}

// Backward, one tile: g[r, v] = coef[r].dloss.(exp(z[r, v] - lse[rows[r]]) - [t0 + v == target]).
// z f32 [rc, len]; g [rc, len] of the GEMM type (may alias z for f32);
// targets, coef, rows: chunk-offset [rc]; lse: [N].
template <typename T>
__device__ void xent_bwd_tile(const float* z, T* g, int len, int t0, const int* targets,
                              const int* rows, const float* lse, const float* coef, float dloss) {
    const int r = blockIdx.x;
    const float l = lse[rows[r]];
    const float c = coef[r] * dloss;
    const int t = targets[r] - t0;
    const long long base = (long long)r * len;
    for (int v = threadIdx.x; v < len; v += blockDim.x) {
        const float p = expf(z[base + v] - l);
        st(g, base + v, c * (v == t ? p - 1.0f : p));
    }
}
extern "C" __global__ void linear_xent_bwd_tile_f32(const float* z, float* g, int len, int t0,
                                                    const int* targets, const int* rows,
                                                    const float* lse, const float* coef, float dloss) {
    xent_bwd_tile(z, g, len, t0, targets, rows, lse, coef, dloss);
}
extern "C" __global__ void linear_xent_bwd_tile_bf16(const float* z, bf16* g, int len, int t0,
                                                     const int* targets, const int* rows,
                                                     const float* lse, const float* coef, float dloss) {
    xent_bwd_tile(z, g, len, t0, targets, rows, lse, coef, dloss);
}

// One sweep, one tile: as linear_xent_fwd_tile, and also writes
// p[r, v] = exp(z[r, v] - new max) (GEMM type, may alias z for f32) and
// multiplies the row's accumulator acc f32 [rc, dim] (chunk-offset) by
// exp(old max - new max), so acc + P.W_tile stays relative to the new max.
template <typename T>
__device__ void xent_fb_tile(const float* z, T* p, int len, int t0, const int* targets,
                             float* run_max, float* run_sum, float* picked, float* acc, int dim) {
    const int r = blockIdx.x;
    const long long base = (long long)r * len;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < len; v += blockDim.x) m = fmaxf(m, z[base + v]);
    // The target's logit is read before the block_max barrier, hence before
    // any thread overwrites z with p (they may alias).
    if (threadIdx.x == 0) {
        const int t = targets[r] - t0;
        if (t >= 0 && t < len) picked[r] = z[base + t];
    }
    m = block_max(m);
    const float old = run_max[r];
    const float mn = fmaxf(old, m);
    float s = 0.0f;
    for (int v = threadIdx.x; v < len; v += blockDim.x) {
        const float e = expf(z[base + v] - mn);
        s += e;
        st(p, base + v, e);
    }
    s = block_sum(s);
    const float scale = rebase(old, mn);
    float* ar = acc + (long long)r * dim;
    for (int k = threadIdx.x; k < dim; k += blockDim.x) ar[k] *= scale;
    if (threadIdx.x == 0) {
        run_sum[r] = run_sum[r] * scale + s;
        run_max[r] = mn;
    }
}
extern "C" __global__ void linear_xent_fb_tile_f32(const float* z, float* p, int len, int t0,
                                                   const int* targets, float* run_max,
                                                   float* run_sum, float* picked, float* acc, int dim) {
    xent_fb_tile(z, p, len, t0, targets, run_max, run_sum, picked, acc, dim);
}
extern "C" __global__ void linear_xent_fb_tile_bf16(const float* z, bf16* p, int len, int t0,
                                                    const int* targets, float* run_max,
                                                    float* run_sum, float* picked, float* acc, int dim) {
    xent_fb_tile(z, p, len, t0, targets, run_max, run_sum, picked, acc, dim);
}

// One sweep, after the last tile; one block per active row i (grid = na):
// dh[rows[i], k] = coef.(acc[i, k] / sum - W[target, k]); lse and loss_rows as
// linear_xent_fwd_finish. acc f32 [na, dim]; w [V, dim]; dh [N, dim] zeroed
// by the host for inactive rows.
template <typename T>
__device__ void xent_fb_finish(const float* run_max, const float* run_sum, const float* picked,
                               const float* coef, const int* rows, const int* targets,
                               const float* acc, const T* w, int dim, float* lse,
                               float* loss_rows, T* dh) {
    const int i = blockIdx.x;
    const float c = coef[i];
    const float inv = c / run_sum[i];
    const long long wrow = (long long)targets[i] * dim;
    const long long hrow = (long long)rows[i] * dim;
    const float* ar = acc + (long long)i * dim;
    for (int k = threadIdx.x; k < dim; k += blockDim.x) st(dh, hrow + k, ar[k] * inv - c * ld(w, wrow + k));
    if (threadIdx.x == 0) {
        const float l = run_max[i] + logf(run_sum[i]);
        lse[rows[i]] = l;
        loss_rows[i] = c * (l - picked[i]);
    }
}
extern "C" __global__ void linear_xent_fb_finish_f32(const float* run_max, const float* run_sum,
                                                     const float* picked, const float* coef,
                                                     const int* rows, const int* targets,
                                                     const float* acc, const float* w, int dim,
                                                     float* lse, float* loss_rows, float* dh) {
    xent_fb_finish(run_max, run_sum, picked, coef, rows, targets, acc, w, dim, lse, loss_rows, dh);
}
extern "C" __global__ void linear_xent_fb_finish_bf16(const float* run_max, const float* run_sum,
                                                      const float* picked, const float* coef,
                                                      const int* rows, const int* targets,
                                                      const float* acc, const bf16* w, int dim,
                                                      float* lse, float* loss_rows, bf16* dh) {
    xent_fb_finish(run_max, run_sum, picked, coef, rows, targets, acc, w, dim, lse, loss_rows, dh);
}

// One sweep with the head's gradient (row chunks over the whole vocabulary),
// one block per chunk row r (grid = rc): z f32 [rc, vocab] holds the chunk's
// complete logit rows, so the row's lse is final after one online pass, and
// a second pass turns the row into g = coef.(softmax(z) - onehot(target)) of
// the GEMM type IN PLACE: row r of g starts at row r's first byte and keeps
// its byte stride (4.vocab), so bf16 g is read by cuBLAS with a leading
// dimension of 2.vocab elements. The host then runs dh_chunk = g.W and
// dW += g^T.h_chunk: 6.N.H.V FLOPs in all, with no [rc, vocab] buffer
// besides z. targets, coef, loss_rows, rows: chunk-offset [rc]; lse: [N].
//
// In place is safe because g[v] (bytes [2v, 2v + 2) of the row for bf16,
// [4v, 4v + 4) for f32) only overwrites z[j] with j <= v: each span of
// SWEEP_PER.blockDim logits is read whole into registers, then a barrier,
// then written, so every overwritten z was read in this span or before it.
#define SWEEP_PER 8
template <typename T>
__device__ void xent_row_sweep(float* z, int vocab, const int* targets, const int* rows,
                               const float* coef, float* lse, float* loss_rows) {
    const int r = blockIdx.x;
    float* zr = z + (long long)r * vocab;
    T* gr = reinterpret_cast<T*>(zr);
    // Online (max, sum) per thread, then combined across the block.
    float m = -INFINITY, s = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        const float x = zr[v];
        if (x > m) {
            s = s * rebase(m, x) + 1.0f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    const float mx = block_max(m);
    const float sum = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx));
    const float l = mx + logf(sum);
    const int t = targets[r];
    const float c = coef[r];
    // Read before the first span's barrier, so before any write.
    const float zt = zr[t];
    if (threadIdx.x == 0) {
        lse[rows[r]] = l;
        loss_rows[r] = c * (l - zt);
    }
    const int span = SWEEP_PER * blockDim.x;
    for (int v0 = 0; v0 < vocab; v0 += span) {
        float p[SWEEP_PER];
#pragma unroll
        for (int j = 0; j < SWEEP_PER; ++j) {
            const int v = v0 + j * blockDim.x + threadIdx.x;
            p[j] = v < vocab ? zr[v] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < SWEEP_PER; ++j) {
            const int v = v0 + j * blockDim.x + threadIdx.x;
            if (v < vocab) {
                const float q = expf(p[j] - l);
                st(gr, v, c * (v == t ? q - 1.0f : q));
            }
        }
    }
}
extern "C" __global__ void linear_xent_sweep_row_f32(float* z, int vocab, const int* targets,
                                                     const int* rows, const float* coef,
                                                     float* lse, float* loss_rows) {
    xent_row_sweep<float>(z, vocab, targets, rows, coef, lse, loss_rows);
}
extern "C" __global__ void linear_xent_sweep_row_bf16(float* z, int vocab, const int* targets,
                                                      const int* rows, const float* coef,
                                                      float* lse, float* loss_rows) {
    xent_row_sweep<bf16>(z, vocab, targets, rows, coef, lse, loss_rows);
}

// ---------------------------------------------------------------- KL(teacher || student)

// Forward, one tile: zt, zs f32 [rc, len] (teacher, student logits); state
// [rc] each (chunk-offset): teacher max/sum, student max/sum, and cross =
// sum_v exp(zt - max_t).(zt - zs), kept relative to the teacher's max.
extern "C" __global__ void linear_kl_fwd_tile(const float* zt, const float* zs, int len,
                                              float* t_max, float* t_sum, float* s_max,
                                              float* s_sum, float* cross) {
    const int r = blockIdx.x;
    const long long base = (long long)r * len;
    float mt = -INFINITY, ms = -INFINITY;
    for (int v = threadIdx.x; v < len; v += blockDim.x) {
        mt = fmaxf(mt, zt[base + v]);
        ms = fmaxf(ms, zs[base + v]);
    }
    mt = block_max(mt);
    ms = block_max(ms);
    const float old_t = t_max[r], old_s = s_max[r];
    const float nt = fmaxf(old_t, mt), ns = fmaxf(old_s, ms);
    float st_ = 0.0f, ss = 0.0f, cr = 0.0f;
    for (int v = threadIdx.x; v < len; v += blockDim.x) {
        const float a = zt[base + v], b = zs[base + v];
        const float e = expf(a - nt);
        st_ += e;
        cr += e * (a - b);
        ss += expf(b - ns);
    }
    st_ = block_sum(st_);
    ss = block_sum(ss);
    cr = block_sum(cr);
    if (threadIdx.x == 0) {
        const float sct = rebase(old_t, nt);
        t_sum[r] = t_sum[r] * sct + st_;
        cross[r] = cross[r] * sct + cr;
        t_max[r] = nt;
        s_sum[r] = s_sum[r] * rebase(old_s, ns) + ss;
        s_max[r] = ns;
    }
}

// Forward, after the last tile, one thread per active row i < na: both lse
// into [N] arrays (zeroed by the host), loss_rows[i] = coef.(cross/sum_t - lse_t + lse_s).
extern "C" __global__ void linear_kl_fwd_finish(const float* t_max, const float* t_sum,
                                                const float* s_max, const float* s_sum,
                                                const float* cross, const float* coef,
                                                const int* rows, int na, float* lse_t,
                                                float* lse_s, float* loss_rows) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= na) return;
    const double lt = (double)t_max[i] + log((double)t_sum[i]);
    const double ls = (double)s_max[i] + log((double)s_sum[i]);
    lse_t[rows[i]] = (float)lt;
    lse_s[rows[i]] = (float)ls;
    loss_rows[i] = (float)((double)coef[i] * ((double)cross[i] / (double)t_sum[i] - lt + ls));
}

// Backward, one tile: g[r, v] = coef[r].dloss.(exp(zs - lse_s) - exp(zt - lse_t)),
// lse_* [N] looked up through rows; g [rc, len] of the GEMM type (may alias zs for f32).
template <typename T>
__device__ void kl_bwd_tile(const float* zt, const float* zs, T* g, int len, const int* rows,
                            const float* lse_t, const float* lse_s, const float* coef, float dloss) {
    const int r = blockIdx.x;
    const float lt = lse_t[rows[r]], ls = lse_s[rows[r]];
    const float c = coef[r] * dloss;
    const long long base = (long long)r * len;
    for (int v = threadIdx.x; v < len; v += blockDim.x) {
        const float ps = expf(zs[base + v] - ls);
        const float pt = expf(zt[base + v] - lt);
        st(g, base + v, c * (ps - pt));
    }
}
extern "C" __global__ void linear_kl_bwd_tile_f32(const float* zt, const float* zs, float* g,
                                                  int len, const int* rows, const float* lse_t,
                                                  const float* lse_s, const float* coef, float dloss) {
    kl_bwd_tile(zt, zs, g, len, rows, lse_t, lse_s, coef, dloss);
}
extern "C" __global__ void linear_kl_bwd_tile_bf16(const float* zt, const float* zs, bf16* g,
                                                   int len, const int* rows, const float* lse_t,
                                                   const float* lse_s, const float* coef, float dloss) {
    kl_bwd_tile(zt, zs, g, len, rows, lse_t, lse_s, coef, dloss);
}
