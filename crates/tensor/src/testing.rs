//! Helpers shared by the op tests, the benches and the CLI self-check:
//! seeded random inputs, error norms and a central finite-difference
//! gradient check. Public so that crates above (layers, trainers) check their
//! own backward passes the same way.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Real;

/// Says that the running test is skipped and why, as `<test>: SKIPPED
/// (<why>)` (the form the GPU tests use). Written straight to stderr, not
/// with `eprintln!`: the test harness captures the print macros and shows
/// them only for a failure, and a skipped test "passes", so a skip printed
/// that way is never seen. Call it, then return from the test.
pub fn report_skip(why: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("test");
    let _ = writeln!(std::io::stderr(), "{name}: SKIPPED ({why})");
}

/// A seeded RNG, so every test input is reproducible from its seed.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn uniform<T: Real>(rng: &mut StdRng, n: usize, scale: f64) -> Vec<T> {
    (0..n)
        .map(|_| T::of(rng.random_range(-scale..scale)))
        .collect()
}

/// ‖a − b‖₂ / max(‖b‖₂, tiny): the relative error of `a` against reference `b`.
pub fn rel_err<T: Real>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.f64(), y.f64());
        num += (x - y) * (x - y);
        den += y * y;
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

/// Panics with a named message unless `rel_err(got, want) <= tol` and `got` is finite.
#[track_caller]
pub fn assert_close<T: Real>(what: &str, got: &[T], want: &[T], tol: f64) {
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{what}: non-finite values in result"
    );
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
}

/// The coordinates a gradient check probes: min(max_probes, n) of `0..n`,
/// `k·s mod n` for k = 0, 1, .. (sorted) with the stride s the smallest
/// integer ≥ n/max_probes coprime with n, so the probes are distinct and
/// span the whole tensor (gaps at most about three strides).
///
/// Why coprime: a tensor is [rows, heads, channels] with n a multiple of the
/// row period p, and a stride sharing a factor with p sees only some residues
/// mod p (a stride of 24 over [T, 2, 3] keys once probed only channel 0 of
/// head 0 of attention's dk and dv). gcd(s, n) = 1 gives gcd(s, p) = 1 for
/// every divisor p of n, so any p consecutive probes meet every residue mod
/// p: every head and channel family is probed once max_probes ≥ p.
pub fn probe_indices(n: usize, max_probes: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut stride = n.div_ceil(max_probes.max(1));
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    let mut probes: Vec<usize> = (0..max_probes.clamp(1, n))
        .map(|k| k * stride % n)
        .collect();
    probes.sort_unstable();
    probes
}

/// Checks `analytic` = ∂f/∂x at `x` by central differences with step `eps`,
/// on the coordinates [`probe_indices`] picks (at most `max_probes`).
/// Each coordinate must satisfy |fd − an| ≤ tol · max(1, |fd|, |an|).
#[track_caller]
pub fn check_grad(
    what: &str,
    mut f: impl FnMut(&[f64]) -> f64,
    x: &[f64],
    analytic: &[f64],
    max_probes: usize,
) {
    const EPS: f64 = 1e-6;
    const TOL: f64 = 1e-6;
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut xp = x.to_vec();
    let mut probes = 0;
    for i in probe_indices(x.len(), max_probes) {
        xp[i] = x[i] + EPS;
        let fp = f(&xp);
        xp[i] = x[i] - EPS;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * EPS);
        let an = analytic[i];
        let scale = 1f64.max(fd.abs()).max(an.abs());
        assert!(
            (fd - an).abs() <= TOL * scale,
            "{what}: d/dx[{i}] finite difference {fd:.9e} vs analytic {an:.9e}"
        );
        probes += 1;
    }
    assert!(probes > 0, "{what}: no coordinate probed");
}

/// Σ out·w: a scalar loss whose gradient w.r.t. `out` is `w`. Random `w` make
/// every output element matter to a gradient check.
pub fn dot(out: &[f64], w: &[f64]) -> f64 {
    out.iter().zip(w).map(|(a, b)| a * b).sum()
}

// Gradient checks of layers and whole models, which compute in f32 (the ops'
// f64 kernels are not reachable through `Tensor`). Each probe is a
// Richardson-extrapolated central difference, (4·D(h/2) − D(h))/3 with
// D(h) = (f(x+h) − f(x−h))/2h and h = 1e-2: its truncation error is O(h⁴),
// so strongly curved coordinates (deep compositions: an encoder feeding a
// decoder) are judged fairly, where a plain central difference at 5e-3 is
// off by a few percent. The loss Σ w·out is summed in f64 from f32 outputs,
// so its rounding noise is ~1e-7·Σ|w·out|; divided by the steps that is
// ≲1e-3 of a unit gradient. A tolerance of 1e-2 relative to the larger of
// the two derivatives (floored at a tenth of the largest gradient entry, so
// near-zero entries are judged on the gradient's scale) sits well above both
// and well below the O(1) relative error a wrong formula makes.

const F32_STEP: f32 = 1e-2;
const F32_TOL: f64 = 1e-2;
const F32_MAX_PROBES: usize = 48;

/// Checks `analytic` = ∂f/∂x at `x` by extrapolated central differences on
/// up to 48 coordinates spread over x by [`probe_indices`] (tolerance: see
/// the comment above).
/// Panics with the first mismatching coordinate: a test helper.
#[track_caller]
pub fn check_grad_f32(what: &str, f: impl FnMut(&[f32]) -> f64, x: &[f32], analytic: &[f32]) {
    check_grad_f32_tol(what, f, x, analytic, F32_TOL)
}

/// [`check_grad_f32`] with relative tolerance `tol`, for deep compositions
/// whose f32 rounding noise needs more room (the caller says why).
#[track_caller]
pub fn check_grad_f32_tol(
    what: &str,
    mut f: impl FnMut(&[f32]) -> f64,
    x: &[f32],
    analytic: &[f32],
    tol: f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    assert!(
        analytic.iter().all(|g| g.is_finite()),
        "{what}: non-finite gradient"
    );
    let gmax = analytic.iter().fold(0f64, |m, g| m.max(g.abs() as f64));
    assert!(gmax > 0.0, "{what}: gradient is exactly zero");
    let mut xp = x.to_vec();
    for i in probe_indices(x.len(), F32_MAX_PROBES) {
        let mut central = |step: f32| {
            xp[i] = x[i] + step;
            let fp = f(&xp);
            xp[i] = x[i] - step;
            let fm = f(&xp);
            xp[i] = x[i];
            // The step actually taken in f32.
            let h = ((x[i] + step) as f64 - (x[i] - step) as f64).max(f64::MIN_POSITIVE);
            (fp - fm) / h
        };
        let (d1, d2) = (central(F32_STEP), central(F32_STEP / 2.0));
        let fd = (4.0 * d2 - d1) / 3.0;
        let an = analytic[i] as f64;
        let scale = fd.abs().max(an.abs()).max(0.1 * gmax);
        assert!(
            (fd - an).abs() <= tol * scale,
            "{what}: d/dx[{i}] finite difference {fd:.6e} vs analytic {an:.6e} (max |g| {gmax:.3e})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_few_distinct_spread_and_meet_every_residue_of_every_period() {
        for n in 1..1200 {
            for max in [1, 7, 48, 80] {
                let p = probe_indices(n, max);
                assert_eq!(p.len(), max.min(n), "n {n} max {max}");
                assert!(p.windows(2).all(|w| w[0] < w[1]) && p[p.len() - 1] < n);
                // Spread over the whole tensor: no gap (the end included)
                // wider than three even spacings.
                let gap = p
                    .windows(2)
                    .map(|w| w[1] - w[0])
                    .chain([n - p[p.len() - 1]])
                    .max()
                    .unwrap();
                assert!(gap <= 3 * n.div_ceil(max), "n {n} max {max}: {p:?}");
                // Every period the tensor can have (a divisor of n) small
                // enough for the probe budget has all its residues probed.
                for period in (1..=p.len()).filter(|d| n % d == 0) {
                    let mut seen = vec![false; period];
                    p.iter().for_each(|&i| seen[i % period] = true);
                    assert!(seen.iter().all(|&s| s), "n {n} max {max} period {period}");
                }
            }
        }
        assert_eq!(probe_indices(0, 5), Vec::<usize>::new());
        assert_eq!(probe_indices(4, 80), vec![0, 1, 2, 3]);
    }

    /// attention's keys in its backward test: [331 tokens, 2 heads, 3
    /// channels], 80 probes. A gradient wrong in one channel family only
    /// (channel 1 of every head) must be caught; the old stride of 24 = 4·6
    /// probed channel 0 of head 0 alone and passed it.
    const KEYS: usize = 331 * 2 * 3;

    fn wrong_in_channel_1(x: &[f64]) -> Vec<f64> {
        // f = ½Σx² has gradient x; channel 1 is off by 10 %.
        x.iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 1 { 1.1 * v } else { v })
            .collect()
    }

    #[test]
    fn check_grad_passes_a_right_gradient() {
        let x: Vec<f64> = uniform(&mut rng(1), KEYS, 1.0);
        let f = |x: &[f64]| 0.5 * x.iter().map(|v| v * v).sum::<f64>();
        check_grad("right", f, &x, &x, 80);
        let x: Vec<f32> = uniform(&mut rng(2), 336 * 2 * 3, 1.0);
        let f = |x: &[f32]| 0.5 * x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        check_grad_f32("right", f, &x, &x);
    }

    #[test]
    #[should_panic(expected = "finite difference")]
    fn check_grad_catches_a_gradient_wrong_in_one_channel_family() {
        // Values in [1, 2): every probe's gradient is large enough to judge.
        let x: Vec<f64> = uniform(&mut rng(1), KEYS, 0.5)
            .into_iter()
            .map(|v: f64| 1.5 + v)
            .collect();
        let f = |x: &[f64]| 0.5 * x.iter().map(|v| v * v).sum::<f64>();
        check_grad("channel 1", f, &x, &wrong_in_channel_1(&x), 80);
    }

    /// The f32 check's 48 probes over [336, 2, 3]: the old stride, 42 = 7·6,
    /// also saw channel 0 of head 0 alone.
    #[test]
    #[should_panic(expected = "finite difference")]
    fn check_grad_f32_catches_a_gradient_wrong_in_one_channel_family() {
        let x: Vec<f32> = uniform(&mut rng(2), 336 * 2 * 3, 0.5)
            .into_iter()
            .map(|v: f32| 1.5 + v)
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let an: Vec<f32> = wrong_in_channel_1(&x64)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let f = |x: &[f32]| 0.5 * x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        check_grad_f32("channel 1", f, &x, &an);
    }
}
