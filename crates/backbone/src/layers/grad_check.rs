//! Gradient checks for layers, which compute in f32 (the ops' f64 kernels are
//! not reachable through `Tensor`). The loss Σ w·out is summed in f64 from f32
//! outputs, so its rounding noise is ~1e-7·Σ|w·out|; with a step of 5e-3 that
//! is ≲1e-3 of a unit gradient after dividing by 2·step, and the truncation
//! error (step²·f‴/6) is ~1e-5. A tolerance of 1e-2 relative to the larger of
//! the two derivatives (floored at a tenth of the largest gradient entry, so
//! near-zero entries are judged on the gradient's scale) sits well above both
//! and well below the O(1) relative error a wrong formula makes.

use llm2comp_tensor::Tensor;
use llm2comp_tensor::testing::{rng, uniform};

const STEP: f32 = 5e-3;
const TOL: f64 = 1e-2;
const MAX_PROBES: usize = 48;

/// A tensor of `shape` uniform in [−scale, scale) from `seed`.
pub(crate) fn rand_tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform::<f32>(&mut rng(seed), n, scale), shape).unwrap()
}

/// Σ out·w in f64: a loss whose gradient w.r.t. `out` is `w`.
pub(crate) fn weighted_sum(out: &Tensor, w: &Tensor) -> f64 {
    assert_eq!(out.shape(), w.shape(), "weighted_sum shapes");
    out.to_vec_f32()
        .iter()
        .zip(w.to_vec_f32())
        .map(|(&a, b)| a as f64 * b as f64)
        .sum()
}

/// Checks `analytic` = ∂f/∂x at `x` by central differences on up to 48
/// coordinates spread over x (see the module comment for the tolerance).
#[track_caller]
pub(crate) fn check_f32(what: &str, mut f: impl FnMut(&[f32]) -> f64, x: &[f32], analytic: &[f32]) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    assert!(
        analytic.iter().all(|g| g.is_finite()),
        "{what}: non-finite gradient"
    );
    let gmax = analytic.iter().fold(0f64, |m, g| m.max(g.abs() as f64));
    assert!(gmax > 0.0, "{what}: gradient is exactly zero");
    let stride = (x.len() / MAX_PROBES).max(1);
    let mut xp = x.to_vec();
    for i in (0..x.len()).step_by(stride) {
        xp[i] = x[i] + STEP;
        let fp = f(&xp);
        xp[i] = x[i] - STEP;
        let fm = f(&xp);
        xp[i] = x[i];
        // The step actually taken in f32.
        let h = ((x[i] + STEP) as f64 - (x[i] - STEP) as f64).max(f64::MIN_POSITIVE);
        let fd = (fp - fm) / h;
        let an = analytic[i] as f64;
        let scale = fd.abs().max(an.abs()).max(0.1 * gmax);
        assert!(
            (fd - an).abs() <= TOL * scale,
            "{what}: d/dx[{i}] finite difference {fd:.6e} vs analytic {an:.6e} (max |g| {gmax:.3e})"
        );
    }
}
