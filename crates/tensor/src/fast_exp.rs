//! A vectorisable single-precision exp for the softmax inner loops.
//!
//! Attention and the fused losses spend as much time in exp as in their
//! GEMMs when exp is libm's scalar `expf` (about T²·H calls per attention
//! call). This one is branch-free, so LLVM turns the loops below into SIMD
//! code: range reduction x = n·ln2 + r with a two-constant ln2, then a
//! degree-7 minimax-style polynomial for e^r on [−ln2/2, ln2/2] (the classic
//! Cephes `expf` coefficients), then a scale by 2ⁿ built from the exponent
//! bits. Error: within 2 ulp of the correctly rounded result for
//! x ∈ [−86, 88.7] (tested against f64 below); results under 2⁻¹²⁴ are
//! flushed to zero, −∞ gives 0, +∞ and x > 88.72 give +∞, NaN stays NaN.

/// Below this, the result is flushed to zero (keeps 2ⁿ⁻¹ a normal number).
const LO: f32 = -86.0;
/// Above this, exp overflows f32.
const HI: f32 = 88.722_83;

/// e^x, see the module comment for range and accuracy.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds any |v| < 2²² to the nearest integer n, which
    // then sits in the low mantissa bits: bits(t) = bits(ROUND) + n.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2ⁿ as 2ⁿ⁻¹·2 so n = 128 (x near HI) still has a finite exponent field.
    // Integer ops on the bits (not a float-to-int cast) keep the loop SIMD.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n_minus_1 = f32::from_bits(n_bits.wrapping_add(126) << 23);
    let y = e * two_n_minus_1 * 2.0;
    // One select per special case (not an if-else chain), so the loop
    // vectoriser turns them into blends instead of keeping branches.
    let y = if x < LO { 0.0 } else { y };
    let y = if x > HI { f32::INFINITY } else { y };
    // NaN passes the clamp unchanged; return it as it came.
    if x.is_nan() { x } else { y }
}

/// xs[i] = e^(xs[i] − m); returns Σ xs[i] (eight partial sums, so it vectorises).
///
/// The default x86-64 target only has 4-wide SSE2; where the CPU has AVX2 the
/// same loop is compiled 8-wide and chosen at run time. The arithmetic is
/// identical (no FMA contraction), so results do not depend on the CPU.
pub fn exp_sub_sum_f32(xs: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked on the line above.
            return unsafe { exp_sub_sum_avx2(xs, m) };
        }
    }
    exp_sub_sum_portable(xs, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_sub_sum_avx2(xs: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_portable(xs, m)
}

/// Two simple loops rather than one: a pure map and a sum with eight partial
/// accumulators each vectorise reliably, where the fused loop did not under
/// AVX2. The row is in L1 for the second pass.
#[inline(always)]
fn exp_sub_sum_portable(xs: &mut [f32], m: f32) -> f32 {
    for x in xs.iter_mut() {
        *x = exp_f32(*x - m);
    }
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn within_two_ulp_over_the_normal_range() {
        let mut worst = 0;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = LO + (HI - 0.01 - LO) * i as f32 / steps as f32;
            let want = (x as f64).exp() as f32;
            let got = exp_f32(x);
            worst = worst.max(ulps(got, want));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.7).is_finite());
    }

    #[test]
    fn dispatched_and_portable_loops_agree_bit_for_bit() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| (i as f32 * 0.71).cos() * 30.0 - 5.0)
            .collect();
        let (mut a, mut b) = (xs.clone(), xs);
        let (sa, sb) = (
            exp_sub_sum_f32(&mut a, 2.0),
            exp_sub_sum_portable(&mut b, 2.0),
        );
        assert_eq!(a, b);
        assert_eq!(sa, sb);
    }

    #[test]
    fn exp_sub_sum_matches_scalar_loop_on_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 1001] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
            let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut got = xs.clone();
            let sum = exp_sub_sum_f32(&mut got, m);
            let want: Vec<f64> = xs.iter().map(|&x| ((x - m) as f64).exp()).collect();
            for (g, w) in got.iter().zip(&want) {
                assert!(ulps(*g, *w as f32) <= 2, "{g} vs {w}");
            }
            let ws: f64 = want.iter().sum();
            assert!(
                (sum as f64 - ws).abs() <= 1e-6 * ws.max(1.0),
                "{sum} vs {ws}"
            );
        }
    }
}
