// Host emulation of kernels/attention.cu, to test its fragment bookkeeping,
// masking and hash without a GPU:
//   g++ -O2 -std=c++20 -o /tmp/attn_emu kernels/emu/attention_emu.cpp && /tmp/attn_emu
//
// Every CUDA thread of a block is a ucontext fiber; a round-robin scheduler
// switches fibers only at barriers, so __syncthreads, shuffles, ldmatrix and
// mma.sync are emulated as warp/block collectives that gather all lanes'
// operands, then let each lane compute its own result from the documented
// PTX layouts (the same tables as the .cu header: they check that the kernel
// is consistent with them, not that they match the hardware). cp.async is a
// plain copy. The kernels run unchanged; results are compared with an f64
// reference written here from the math, not from the kernels.

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

// ------------------------------------------------------------ CUDA shims

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
using std::max;
using std::min;

struct Dim3 {
    unsigned x, y, z;
};
struct uint4 {
    uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }

struct bf16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    bf16 x, y;
};
inline bf16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return {0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
    return {(uint16_t)(u >> 16)};
}
inline float __bfloat162float(bf16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}

// Fibers.
static const int MAX_THREADS = 256;
static ucontext_t g_sched;
static ucontext_t g_ctx[MAX_THREADS];
static bool g_done[MAX_THREADS];
static int g_cur;
static Dim3 g_tid[MAX_THREADS];
static Dim3 g_block, g_grid, g_bdim;
static std::function<void()> g_kernel;
#define threadIdx (g_tid[g_cur])
#define blockIdx g_block
#define blockDim g_bdim
#define gridDim g_grid

static void yield_fiber() { swapcontext(&g_ctx[g_cur], &g_sched); }

struct Barrier {
    int n = 0, count = 0;
    long gen = 0;
    void wait() {
        long g = gen;
        if (++count == n) {
            count = 0;
            ++gen;
        } else {
            while (gen == g) yield_fiber();
        }
    }
};
static Barrier g_block_bar;
static Barrier g_warp_bar[MAX_THREADS / 32];

alignas(16) unsigned char smem[1 << 18];

inline void __syncthreads() { g_block_bar.wait(); }

// Per-warp exchange slots.
struct Slots {
    uint64_t u[32][12];
    float f[32][4];
};
static Slots g_slots[MAX_THREADS / 32];

static inline int lane_id() { return (int)(threadIdx.x & 31); }
static inline int warp_id() { return (int)(threadIdx.x >> 5); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
    Slots& s = g_slots[warp_id()];
    s.f[lane_id()][0] = v;
    g_warp_bar[warp_id()].wait();
    float r = s.f[lane_id() ^ o][0];
    g_warp_bar[warp_id()].wait();
    return r;
}

inline float atomicAdd(float* p, float v) {
    float old = *p;  // fibers never interleave inside this call
    *p = old + v;
    return old;
}

inline uint32_t smem_addr(const void* p) {
    return (uint32_t)((const unsigned char*)p - smem);
}

static inline uint16_t smem_u16(uint32_t addr) {
    uint16_t x;
    memcpy(&x, smem + addr, 2);
    return x;
}

// ldmatrix.x4: lane 8m + r addresses row r of matrix m; lane l gets, per
// matrix m, row l>>2, columns 2(l&3), 2(l&3)+1 (trans: rows 2(l&3), 2(l&3)+1
// of column l>>2).
static void ldsm_impl(uint32_t addr, uint32_t* r, bool trans) {
    Slots& s = g_slots[warp_id()];
    const int l = lane_id();
    s.u[l][0] = addr;
    g_warp_bar[warp_id()].wait();
    for (int m = 0; m < 4; ++m) {
        uint16_t lo, hi;
        if (!trans) {
            uint32_t row = (uint32_t)s.u[8 * m + (l >> 2)][0];
            lo = smem_u16(row + 2 * (2 * (l & 3)));
            hi = smem_u16(row + 2 * (2 * (l & 3) + 1));
        } else {
            uint32_t r0 = (uint32_t)s.u[8 * m + 2 * (l & 3)][0];
            uint32_t r1 = (uint32_t)s.u[8 * m + 2 * (l & 3) + 1][0];
            lo = smem_u16(r0 + 2 * (l >> 2));
            hi = smem_u16(r1 + 2 * (l >> 2));
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    g_warp_bar[warp_id()].wait();
}
inline void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t r[4];
    ldsm_impl(addr, r, false);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
inline void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t r[4];
    ldsm_impl(addr, r, true);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

static inline float lo_f(uint32_t x) { return __bfloat162float({(uint16_t)(x & 0xffff)}); }
static inline float hi_f(uint32_t x) { return __bfloat162float({(uint16_t)(x >> 16)}); }

// mma.m16n8k16.row.col.f32.bf16.bf16.f32, layouts of the PTX ISA.
inline void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    Slots& s = g_slots[warp_id()];
    const int l = lane_id();
    for (int i = 0; i < 4; ++i) s.u[l][i] = a[i];
    s.u[l][4] = b0;
    s.u[l][5] = b1;
    for (int i = 0; i < 4; ++i) s.f[l][i] = c[i];
    g_warp_bar[warp_id()].wait();
    float A[16][16], B[16][8], C[16][8];
    for (int t = 0; t < 32; ++t) {
        const int gid = t >> 2, tig = t & 3;
        const uint64_t* u = s.u[t];
        A[gid][2 * tig] = lo_f(u[0]);
        A[gid][2 * tig + 1] = hi_f(u[0]);
        A[gid + 8][2 * tig] = lo_f(u[1]);
        A[gid + 8][2 * tig + 1] = hi_f(u[1]);
        A[gid][2 * tig + 8] = lo_f(u[2]);
        A[gid][2 * tig + 9] = hi_f(u[2]);
        A[gid + 8][2 * tig + 8] = lo_f(u[3]);
        A[gid + 8][2 * tig + 9] = hi_f(u[3]);
        B[2 * tig][gid] = lo_f(u[4]);
        B[2 * tig + 1][gid] = hi_f(u[4]);
        B[2 * tig + 8][gid] = lo_f(u[5]);
        B[2 * tig + 9][gid] = hi_f(u[5]);
        C[gid][2 * tig] = s.f[t][0];
        C[gid][2 * tig + 1] = s.f[t][1];
        C[gid + 8][2 * tig] = s.f[t][2];
        C[gid + 8][2 * tig + 1] = s.f[t][3];
    }
    g_warp_bar[warp_id()].wait();
    const int gid = l >> 2, tig = l & 3;
    const int rows[4] = {gid, gid, gid + 8, gid + 8}, cols[4] = {2 * tig, 2 * tig + 1, 2 * tig, 2 * tig + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = C[rows[i]][cols[i]];
        for (int kk = 0; kk < 16; ++kk) acc += A[rows[i]][kk] * B[kk][cols[i]];
        c[i] = acc;
    }
}

inline void cp_async16(uint32_t dst, const void* src) { memcpy(smem + dst, src, 16); }
inline void cp_async_commit() {}
inline float ex2_approx(float x) { return std::exp2(x); }
template <int N> inline void cp_async_wait() {}

#define ATTN_HOST_EMU
#include "../attention.cu"

static void fiber_entry() {
    g_kernel();
    g_done[g_cur] = true;
    // returning switches to uc_link (the scheduler)
}

// Runs `kernel` over grid x block threads, block by block.
static void launch(Dim3 grid, int threads, std::function<void()> kernel) {
    static std::vector<std::vector<char>> stacks(MAX_THREADS, std::vector<char>(256 * 1024));
    g_grid = grid;
    g_bdim = {(unsigned)threads, 1, 1};
    g_kernel = kernel;
    g_block_bar.n = threads;
    for (int w = 0; w < threads / 32; ++w) g_warp_bar[w].n = 32;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            g_block = {bx, by, 0};
            for (int t = 0; t < threads; ++t) {
                g_tid[t] = {(unsigned)t, 0, 0};
                g_done[t] = false;
                getcontext(&g_ctx[t]);
                g_ctx[t].uc_stack.ss_sp = stacks[t].data();
                g_ctx[t].uc_stack.ss_size = stacks[t].size();
                g_ctx[t].uc_link = &g_sched;
                makecontext(&g_ctx[t], fiber_entry, 0);
            }
            for (bool any = true; any;) {
                any = false;
                for (int t = 0; t < threads; ++t) {
                    if (g_done[t]) continue;
                    any = true;
                    g_cur = t;
                    swapcontext(&g_sched, &g_ctx[t]);
                }
            }
        }
    }
}

// ------------------------------------------------------- f64 reference

static uint64_t ref_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct Cfg {
    std::vector<int> cu;
    int hq, hkv, d;
    bool causal;
    float p;  // dropout, 0 = off
    uint64_t seed = 1234, offset = 99;
    // Per-sequence dropout keys (empty: one stream for the call), as
    // ops::dropout::SeqKeys: sequence b draws from keyed_seed(seed, keys[b])
    // with T = its length and indices counted from its first token.
    std::vector<uint64_t> keys = {};
    int tokens() const { return cu.back(); }
};

// cpu::dropout::keyed_seed.
static uint64_t ref_keyed_seed(uint64_t seed, uint64_t key) {
    return ref_mix64(seed ^ ref_mix64(key ^ 0x6a09e667f3bcc909ULL));
}

static uint64_t thr_of(float p) {
    double t = (1.0 - (double)p) * 4294967296.0;
    return std::min<uint64_t>((uint64_t)t, 1ULL << 32);
}

// The factor of P[h, i, j] for tokens i, j of sequence b (starting at s0).
static double ref_factor(const Cfg& c, int b, int h, int i, int j) {
    if (c.p <= 0) return 1.0;
    uint64_t t = c.tokens(), seed = c.seed;
    if (!c.keys.empty()) {
        const int s0 = c.cu[b];
        t = (uint64_t)(c.cu[b + 1] - s0);
        seed = ref_keyed_seed(c.seed, c.keys[b]);
        i -= s0;
        j -= s0;
    }
    uint64_t idx = c.offset + ((uint64_t)h * t + i) * t + j;
    uint32_t hs = (uint32_t)(ref_mix64(seed ^ ref_mix64(idx + 0x9e3779b97f4a7c15ULL)) >> 32);
    return (uint64_t)hs < thr_of(c.p) ? 1.0 / (1.0 - (double)c.p) : 0.0;
}

struct Ref {
    std::vector<double> o, lse, dq, dk, dv;
};

static Ref reference(const Cfg& c, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const std::vector<double>& dout) {
    const int T = c.tokens(), hq = c.hq, hkv = c.hkv, d = c.d;
    const double scale = 1.0 / std::sqrt((double)d);
    Ref r;
    r.o.assign((size_t)T * hq * d, 0);
    r.lse.assign((size_t)hq * T, 0);
    r.dq.assign((size_t)T * hq * d, 0);
    r.dk.assign((size_t)T * hkv * d, 0);
    r.dv.assign((size_t)T * hkv * d, 0);
    for (size_t b = 0; b + 1 < c.cu.size(); ++b) {
        const int s0 = c.cu[b], s1 = c.cu[b + 1];
        for (int h = 0; h < hq; ++h) {
            const int g = h / (hq / hkv);
            for (int i = s0; i < s1; ++i) {
                const int je = c.causal ? i + 1 : s1;
                std::vector<double> s(je - s0), pr(je - s0);
                double mx = -INFINITY;
                for (int j = s0; j < je; ++j) {
                    double x = 0;
                    for (int e = 0; e < d; ++e)
                        x += q[((size_t)i * hq + h) * d + e] * k[((size_t)j * hkv + g) * d + e];
                    s[j - s0] = x * scale;
                    mx = std::max(mx, s[j - s0]);
                }
                double z = 0;
                for (double x : s) z += std::exp(x - mx);
                const double lse = mx + std::log(z);
                r.lse[(size_t)h * T + i] = lse;
                for (int j = s0; j < je; ++j) pr[j - s0] = std::exp(s[j - s0] - lse);
                double delta = 0;
                std::vector<double> orow(d, 0);
                for (int j = s0; j < je; ++j) {
                    const double f = ref_factor(c, (int)b, h, i, j);
                    for (int e = 0; e < d; ++e) orow[e] += pr[j - s0] * f * v[((size_t)j * hkv + g) * d + e];
                }
                for (int e = 0; e < d; ++e) {
                    r.o[((size_t)i * hq + h) * d + e] = orow[e];
                    delta += orow[e] * dout[((size_t)i * hq + h) * d + e];
                }
                for (int j = s0; j < je; ++j) {
                    const double f = ref_factor(c, (int)b, h, i, j), p = pr[j - s0];
                    double dp = 0;
                    for (int e = 0; e < d; ++e)
                        dp += dout[((size_t)i * hq + h) * d + e] * v[((size_t)j * hkv + g) * d + e];
                    const double ds = p * (dp * f - delta);
                    for (int e = 0; e < d; ++e) {
                        r.dq[((size_t)i * hq + h) * d + e] += scale * ds * k[((size_t)j * hkv + g) * d + e];
                        r.dk[((size_t)j * hkv + g) * d + e] += scale * ds * q[((size_t)i * hq + h) * d + e];
                        r.dv[((size_t)j * hkv + g) * d + e] += p * f * dout[((size_t)i * hq + h) * d + e];
                    }
                }
            }
        }
    }
    return r;
}

// ------------------------------------------------------------- driver

static double rel_err(const std::vector<float>& got, const std::vector<double>& want, bool& nan) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) nan = true;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

template <typename E> static std::vector<E> to_e(const std::vector<double>& x);
template <> std::vector<bf16> to_e<bf16>(const std::vector<double>& x) {
    std::vector<bf16> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = __float2bfloat16_rn((float)x[i]);
    return y;
}
template <> std::vector<float> to_e<float>(const std::vector<double>& x) {
    return std::vector<float>(x.begin(), x.end());
}
static std::vector<float> to_f32(const std::vector<bf16>& x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = __bfloat162float(x[i]);
    return y;
}
static std::vector<float> to_f32(const std::vector<float>& x) { return x; }

// Host tile table (q0, seq_start, seq_end), `rows` rows per tile.
static std::vector<int> tiles_of(const std::vector<int>& cu, int rows) {
    std::vector<int> t;
    for (size_t b = 0; b + 1 < cu.size(); ++b)
        for (int s = cu[b]; s < cu[b + 1]; s += rows) {
            t.push_back(s);
            t.push_back(cu[b]);
            t.push_back(cu[b + 1]);
        }
    return t;
}

// The kernels' `seeds`: null without keys; else each sequence's keyed seed,
// per sequence (`tiles` empty: the simple kernels) or per tile.
static std::vector<uint64_t> seeds_of(const Cfg& c, const std::vector<int>& tiles) {
    std::vector<uint64_t> seq, out;
    if (c.keys.empty()) return out;
    for (uint64_t k : c.keys) seq.push_back(ref_keyed_seed(c.seed, k));
    if (tiles.empty()) return seq;
    for (size_t t = 0; t < tiles.size(); t += 3) {
        size_t b = 0;  // the last sequence starting at or before the tile's s0
        while (b + 1 < c.cu.size() - 1 && c.cu[b + 1] <= tiles[t + 1]) ++b;
        out.push_back(seq[b]);
    }
    return out;
}
static const uint64_t* ptr_or_null(const std::vector<uint64_t>& v) {
    return v.empty() ? nullptr : v.data();
}

static int failures = 0;

// mma: 0 = simple kernels, 1 = MMA v1, 2 = MMA v2, 3 = MMA v3 (the launcher's
// default: v1's forward with the fused exponent, the 128-key, 8-warp backward).
template <typename E> static void run(const Cfg& c, int mma) {
    const int T = c.tokens(), hq = c.hq, hkv = c.hkv, d = c.d;
    std::mt19937_64 rng(T * 131 + hq * 7 + d + c.causal + 1000 * mma);
    std::normal_distribution<double> nd(0.0, 1.0);
    auto randv = [&](size_t n, double s) {
        std::vector<double> x(n);
        for (auto& e : x) e = nd(rng) * s;
        return x;
    };
    // Round inputs to E so the reference sees exactly what the kernel reads.
    auto rounded = [&](std::vector<double> x) {
        auto e = to_e<E>(x);
        auto f = to_f32(e);
        return std::vector<double>(f.begin(), f.end());
    };
    auto q = rounded(randv((size_t)T * hq * d, 1.5)), k = rounded(randv((size_t)T * hkv * d, 1.5));
    auto v = rounded(randv((size_t)T * hkv * d, 1.0)), dout = rounded(randv((size_t)T * hq * d, 1.0));
    Ref ref = reference(c, q, k, v, dout);

    auto qe = to_e<E>(q), ke = to_e<E>(k), ve = to_e<E>(v), doe = to_e<E>(dout);
    std::vector<E> o = to_e<E>(std::vector<double>((size_t)T * hq * d, NAN));
    std::vector<float> lse((size_t)hq * T, NAN), delta((size_t)hq * T, NAN);
    std::vector<E> dq = to_e<E>(std::vector<double>((size_t)T * hq * d, NAN));
    std::vector<E> dk = to_e<E>(std::vector<double>((size_t)T * hkv * d, NAN)), dv = dk;
    const float scale = 1.0f / std::sqrt((float)d);
    const uint64_t thr = thr_of(c.p);
    const float inv_keep = (float)(1.0 / (1.0 - (double)c.p));
    const int on = c.p > 0;
    const int nseq = (int)c.cu.size() - 1;
    auto tiles = tiles_of(c.cu, 64);
    const unsigned ntiles = (unsigned)(tiles.size() / 3);
    auto tiles2 = tiles_of(c.cu, 128);  // v2 forward: 128-row query tiles
    const unsigned ntiles2 = (unsigned)(tiles2.size() / 3);
    auto warps = [](long long rows) { return Dim3{(unsigned)((rows * 32 + 127) / 128), 1, 1}; };
    const auto seeds_seq = seeds_of(c, {}), seeds_t = seeds_of(c, tiles),
               seeds_t2 = seeds_of(c, tiles2);

    if constexpr (std::is_same_v<E, bf16>) {
        if (mma) {
            auto fwd = mma == 1   ? (d == 64 ? attention_fwd_mma_v1_d64 : attention_fwd_mma_v1_d128)
                       : mma == 2 ? (d == 64 ? attention_fwd_mma_v2_d64 : attention_fwd_mma_v2_d128)
                                  : (d == 64 ? attention_fwd_mma_d64 : attention_fwd_mma_d128);
            const auto& tt = mma != 2 ? tiles : tiles2;
            launch({mma != 2 ? ntiles : ntiles2, (unsigned)hq, 1}, 128, [&] {
                fwd(qe.data(), ke.data(), ve.data(), o.data(), lse.data(), tt.data(), T, hq, hkv,
                    scale * 1.4426950408889634f, c.causal, c.seed, c.offset, thr, inv_keep, on,
                    ptr_or_null(mma != 2 ? seeds_t : seeds_t2));
            });
        }
    }
    if (!mma) {
        launch(warps((long long)T * hq), 128, [&] {
            if constexpr (std::is_same_v<E, bf16>)
                attention_fwd_simple_bf16(qe.data(), ke.data(), ve.data(), o.data(), lse.data(),
                                          c.cu.data(), nseq, T, hq, hkv, d, scale, c.causal, c.seed,
                                          c.offset, thr, inv_keep, on, ptr_or_null(seeds_seq));
            else
                attention_fwd_simple_f32(qe.data(), ke.data(), ve.data(), o.data(), lse.data(),
                                         c.cu.data(), nseq, T, hq, hkv, d, scale, c.causal, c.seed,
                                         c.offset, thr, inv_keep, on, ptr_or_null(seeds_seq));
        });
    }
    // Backward runs from the kernel's own o and lse, as in training.
    launch(warps((long long)T * hq), 128, [&] {
        if constexpr (std::is_same_v<E, bf16>)
            attention_bwd_delta_bf16(doe.data(), o.data(), delta.data(), T, hq, d);
        else
            attention_bwd_delta_f32(doe.data(), o.data(), delta.data(), T, hq, d);
    });
    if constexpr (std::is_same_v<E, bf16>) {
        if (mma) {
            std::vector<float> acc((size_t)T * hq * d, 0.0f);
            auto bwd = mma == 1   ? (d == 64 ? attention_bwd_mma_v1_d64 : attention_bwd_mma_v1_d128)
                       : mma == 2 ? (d == 64 ? attention_bwd_mma_v2_d64 : attention_bwd_mma_v2_d128)
                                  : (d == 64 ? attention_bwd_mma_d64 : attention_bwd_mma_d128);
            const auto& tt = mma == 3 ? tiles2 : tiles;  // v3: 128-key tiles
            launch({mma == 3 ? ntiles2 : ntiles, (unsigned)hkv, 1}, mma == 3 ? 256 : 128, [&] {
                bwd(qe.data(), ke.data(), ve.data(), doe.data(), lse.data(), delta.data(), acc.data(),
                    dk.data(), dv.data(), tt.data(), T, hq, hkv, scale, scale * 1.4426950408889634f,
                    c.causal, c.seed, c.offset, thr, inv_keep, on,
                    ptr_or_null(mma == 3 ? seeds_t2 : seeds_t));
            });
            launch({4, 1, 1}, 128, [&] { attention_dq_cast_bf16(acc.data(), dq.data(), (long long)acc.size()); });
        }
    }
    if (!mma) {
        launch(warps((long long)T * hq), 128, [&] {
            if constexpr (std::is_same_v<E, bf16>)
                attention_bwd_simple_dq_bf16(qe.data(), ke.data(), ve.data(), doe.data(), lse.data(),
                                             delta.data(), dq.data(), c.cu.data(), nseq, T, hq, hkv, d,
                                             scale, c.causal, c.seed, c.offset, thr, inv_keep, on,
                                             ptr_or_null(seeds_seq));
            else
                attention_bwd_simple_dq_f32(qe.data(), ke.data(), ve.data(), doe.data(), lse.data(),
                                            delta.data(), dq.data(), c.cu.data(), nseq, T, hq, hkv, d,
                                            scale, c.causal, c.seed, c.offset, thr, inv_keep, on,
                                            ptr_or_null(seeds_seq));
        });
        launch(warps((long long)T * hkv), 128, [&] {
            if constexpr (std::is_same_v<E, bf16>)
                attention_bwd_simple_dkv_bf16(qe.data(), ke.data(), ve.data(), doe.data(), lse.data(),
                                              delta.data(), dk.data(), dv.data(), c.cu.data(), nseq, T,
                                              hq, hkv, d, scale, c.causal, c.seed, c.offset, thr,
                                              inv_keep, on, ptr_or_null(seeds_seq));
            else
                attention_bwd_simple_dkv_f32(qe.data(), ke.data(), ve.data(), doe.data(), lse.data(),
                                             delta.data(), dk.data(), dv.data(), c.cu.data(), nseq, T,
                                             hq, hkv, d, scale, c.causal, c.seed, c.offset, thr,
                                             inv_keep, on, ptr_or_null(seeds_seq));
        });
    }
    bool nan = false;
    const double bound = std::is_same_v<E, bf16> ? 1e-2 : 1e-5;
    const double e_o = rel_err(to_f32(o), ref.o, nan), e_l = rel_err(lse, ref.lse, nan);
    const double e_q = rel_err(to_f32(dq), ref.dq, nan), e_k = rel_err(to_f32(dk), ref.dk, nan);
    const double e_v = rel_err(to_f32(dv), ref.dv, nan);
    const bool ok = !nan && e_o < bound && e_l < bound / 10 && e_q < bound && e_k < bound && e_v < bound;
    if (!ok) ++failures;
    printf("%s %-6s T %4d hq %d hkv %d d %3d causal %d p %.1f%s: o %.1e lse %.1e dq %.1e dk %.1e dv %.1e%s %s\n",
           mma == 0 ? "simple" : mma == 1 ? "mma v1" : mma == 2 ? "mma v2" : "mma v3", std::is_same_v<E, bf16> ? "bf16" : "f32", T, hq, hkv, d, c.causal,
           c.p, c.keys.empty() ? "" : " keyed", e_o, e_l, e_q, e_k, e_v, nan ? " NaN" : "",
           ok ? "ok" : "FAIL");
    fflush(stdout);
}

int main(int argc, char** argv) {
    const bool quick = argc > 1;
    std::vector<int> cu = quick ? std::vector<int>{0, 1, 8, 80} : std::vector<int>{0, 1, 8, 137, 137, 200};
    for (int d : {64, 128})
        for (bool causal : {true, false})
            for (auto [hq, hkv] : {std::pair{4, 1}, std::pair{2, 2}}) {
                Cfg c{cu, hq, hkv, d, causal, 0.0f};
                for (int version = 1; version <= 3; ++version) run<bf16>(c, version);
            }
    Cfg drop{cu, 2, 1, 64, true, 0.1f};
    for (int version = 1; version <= 3; ++version) run<bf16>(drop, version);
    // Per-sequence keys (an empty sequence among them in the full set).
    for (bool causal : {true, false}) {
        Cfg keyed{cu, 2, 1, 64, causal, 0.2f};
        for (size_t b = 0; b + 1 < cu.size(); ++b) keyed.keys.push_back(1000 + 17 * b);
        for (int version = 0; version <= 3; ++version) run<bf16>(keyed, version);
    }
    std::vector<int> small{0, 1, 7, 40};
    for (bool causal : {true, false}) {
        Cfg c{small, 4, 2, 64, causal, 0.0f};
        run<bf16>(c, 0);
        run<float>(c, 0);
    }
    Cfg sd{small, 2, 1, 40, true, 0.1f};
    run<float>(sd, 0);
    Cfg sk{small, 2, 1, 40, false, 0.2f};
    sk.keys = {5, 6, 7};
    run<float>(sk, 0);
    printf("%d failures\n", failures);
    return failures != 0;
}
