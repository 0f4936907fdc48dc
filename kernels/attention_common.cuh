// Device helpers shared by kernels/attention.cu (portable, compute_80) and
// kernels/attention_sm90a.cu (Hopper): the dropout hash and its parameters,
// bf16 packing and the SFU exponent. Included after `bf16` is defined; the
// host emulator (kernels/emu) supplies its own ex2_approx.
#pragma once

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

// SplitMix64's finaliser, as cpu/dropout.rs.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ uint32_t hash_u32(uint64_t seed, uint64_t index) {
    return (uint32_t)(mix64(seed ^ mix64(index + 0x9e3779b97f4a7c15ULL)) >> 32);
}

// Dropout parameters, resolved on the host. One stream for the call (seeds
// null: indices over all `tokens`), or per-sequence streams (ops::dropout's
// SeqKeys, as cpu/attention.rs's Dropper::at): `seeds` holds each sequence's
// keyed seed (indexed per tile by the MMA kernels, whose host tile table
// repeats it, and per sequence by the simple ones), and `at` narrows the
// mask to one sequence [s0, s1): its seed, its length as T, indices counted
// from s0.
struct Drop {
    uint64_t seed, offset, thr, tokens;
    float inv_keep;
    int on;
    int base = 0;
    const uint64_t* seeds = nullptr;
    // The factor (0 or 1/(1-p)) of P[h, i, j]; 1 when dropout is off.
    __device__ __forceinline__ float factor(int h, int i, int j) const {
        if (!on) return 1.0f;
        uint64_t idx =
            ((uint64_t)h * tokens + (uint64_t)(i - base)) * tokens + (uint64_t)(j - base);
        return (uint64_t)hash_u32(seed, offset + idx) < thr ? inv_keep : 0.0f;
    }
    // This mask as sequence [s0, s1) with stream seed `s` sees it.
    __device__ __forceinline__ Drop at(uint64_t s, int s0, int s1) const {
        Drop d = *this;
        d.seed = s;
        d.tokens = (uint64_t)(s1 - s0);
        d.base = s0;
        return d;
    }
    // For a kernel whose block handles one tile of the host's (q0, s0, s1) table.
    __device__ __forceinline__ Drop for_tile(const int* tiles, int t) const {
        return seeds ? at(seeds[t], tiles[3 * t + 1], tiles[3 * t + 2]) : *this;
    }
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

#ifndef ATTN_HOST_EMU
// 2^x by the SFU alone (relative error ~2^-22; ex2(-inf) = 0): exp2f without
// fast math adds range handling around the same instruction.
__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

#endif  // ATTN_HOST_EMU
