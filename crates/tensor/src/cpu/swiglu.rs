//! SwiGLU on the CPU, Llama's MLP activation: out = silu(gate) · up with
//! silu(x) = x·σ(x).
//!
//! σ is evaluated in the branch that never exponentiates a positive number
//! (1/(1+e^−x) for x ≥ 0, e^x/(1+e^x) below), so no intermediate overflows
//! and σ stays in [0, 1] for any finite x. Backward recomputes σ(gate) from
//! the saved input rather than storing it: one exp per element is cheaper
//! than another [N, I] activation kept alive until backward.
//! silu'(x) = σ(x)·(1 + x·(1 − σ(x))), a form that is finite wherever σ is.

use rayon::prelude::*;

use crate::Real;

/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// The logistic function 1/(1+e^−x), without overflow for large |x|.
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// out = silu(gate) · up, elementwise over equal-length slices.
pub fn forward<T: Real>(gate: &[T], up: &[T], out: &mut [T]) {
    assert!(
        gate.len() == out.len() && up.len() == out.len(),
        "swiglu: lengths"
    );
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
}

/// dgate = dout · up · silu'(gate); dup = dout · silu(gate). Both overwritten.
pub fn backward<T: Real>(dout: &[T], gate: &[T], up: &[T], dgate: &mut [T], dup: &mut [T]) {
    let n = dout.len();
    assert!(
        gate.len() == n && up.len() == n && dgate.len() == n && dup.len() == n,
        "swiglu: lengths"
    );
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((((dg, du), d), g), u)| {
            for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du).zip(d).zip(g).zip(u) {
                let s = sigmoid(g);
                *du = d * g * s;
                *dg = d * u * s * (T::one() + g * (T::one() - s));
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};

    /// The definition in f64: g / (1 + e^−g) · u.
    fn naive(g: &[f64], u: &[f64]) -> Vec<f64> {
        g.iter()
            .zip(u)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect()
    }

    #[test]
    fn forward_matches_naive_across_chunks() {
        let n = 2 * CHUNK + 13;
        let mut r = rng(1);
        let g: Vec<f32> = uniform(&mut r, n, 6.0);
        let u: Vec<f32> = uniform(&mut r, n, 2.0);
        let mut out = vec![f32::NAN; n];
        forward(&g, &u, &mut out);
        let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        let u64: Vec<f64> = u.iter().map(|&v| v as f64).collect();
        let want: Vec<f32> = naive(&g64, &u64).iter().map(|&v| v as f32).collect();
        assert_close("swiglu forward", &out, &want, 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 257;
        let mut r = rng(2);
        let g: Vec<f64> = uniform(&mut r, n, 5.0);
        let u: Vec<f64> = uniform(&mut r, n, 2.0);
        let w: Vec<f64> = uniform(&mut r, n, 1.0);
        let f = |g: &[f64], u: &[f64]| {
            let mut out = vec![0.0; n];
            forward(g, u, &mut out);
            dot(&out, &w)
        };
        let (mut dg, mut du) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        backward(&w, &g, &u, &mut dg, &mut du);
        check_grad("swiglu dgate", |g| f(g, &u), &g, &dg, n);
        check_grad("swiglu dup", |u| f(&g, u), &u, &du, n);
    }

    #[test]
    fn large_inputs_give_finite_results_and_the_right_limits() {
        let g = [100.0f32, -100.0, 1000.0, -1000.0, f32::MAX, f32::MIN];
        let one = [1.0f32; 6];
        let mut out = [f32::NAN; 6];
        forward(&g, &one, &mut out);
        let (mut dg, mut du) = ([f32::NAN; 6], [f32::NAN; 6]);
        backward(&one, &g, &one, &mut dg, &mut du);
        for i in 0..6 {
            let s = sigmoid(g[i]);
            assert!((0.0..=1.0).contains(&s), "sigmoid({}) = {s}", g[i]);
            assert!(out[i].is_finite() && dg[i].is_finite(), "x = {}", g[i]);
            if g[i] > 0.0 {
                // silu(x) → x and silu'(x) → 1.
                assert_eq!(
                    (s, out[i], du[i], dg[i]),
                    (1.0, g[i], g[i], 1.0),
                    "x = {}",
                    g[i]
                );
            } else {
                // silu(x) → 0⁻ and silu'(x) → 0.
                assert!(
                    out[i] <= 0.0 && out[i] > -1e-30,
                    "silu({}) = {}",
                    g[i],
                    out[i]
                );
                assert!(dg[i].abs() < 1e-30, "silu'({}) = {}", g[i], dg[i]);
            }
        }
        assert_eq!(sigmoid(0.0f64), 0.5);
        assert!(sigmoid(f64::NAN).is_nan());
    }
}
