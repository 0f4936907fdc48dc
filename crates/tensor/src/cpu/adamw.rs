//! One AdamW step on the CPU, element-wise and parallel over chunks.
//!
//! Semantics of `torch.optim.AdamW` (non-amsgrad, non-maximize), derived from
//! the update rule rather than any implementation:
//!
//! ```text
//! p ← p·(1 − lr·wd)                      decoupled weight decay, before the moments
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr·m̂ / (sqrt(v̂) + eps),        m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ)
//! ```
//!
//! The scalar factors (bias corrections, step size) are computed once in f64
//! and rounded to `T`, as PyTorch does with its Python-float hyper-parameters.
//! sqrt(v̂) is evaluated as sqrt(v)/sqrt(1 − β2ᵗ) so eps is added after the
//! bias correction, exactly where the formula puts it.

use rayon::prelude::*;

use crate::Real;
use crate::shared::adamw::{AdamWConfig, Coefs};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Updates params, m and v in place with gradient `grads` at step `t` (1-based).
pub fn step<T: Real>(
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    cfg: &AdamWConfig,
    t: u64,
) {
    assert!(t >= 1, "adamw: step is 1-based");
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "adamw: lengths differ"
    );
    let Coefs {
        decay,
        step_size,
        bc2_sqrt,
        b1,
        b2,
        c1,
        c2,
        eps,
    } = Coefs::<T>::new(cfg, t);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *p *= decay;
                *m = b1 * *m + c1 * g;
                *v = b2 * *v + c2 * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, rng, uniform};

    fn cfg(weight_decay: f64) -> AdamWConfig {
        AdamWConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// AdamW one scalar at a time with the textbook m̂ and v̂, in f64.
    fn naive_adamw(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        c: &AdamWConfig,
        t: i32,
    ) {
        for i in 0..p.len() {
            p[i] -= c.lr * c.weight_decay * p[i];
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let mhat = m[i] / (1.0 - c.beta1.powi(t));
            let vhat = v[i] / (1.0 - c.beta2.powi(t));
            p[i] -= c.lr * mhat / (vhat.sqrt() + c.eps);
        }
    }

    /// Adam (no weight decay at all), written separately from the AdamW reference.
    fn naive_adam(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], c: &AdamWConfig, t: i32) {
        for i in 0..p.len() {
            m[i] += (1.0 - c.beta1) * (g[i] - m[i]);
            v[i] += (1.0 - c.beta2) * (g[i] * g[i] - v[i]);
            let denom = (v[i] / (1.0 - c.beta2.powi(t))).sqrt() + c.eps;
            p[i] -= c.lr / (1.0 - c.beta1.powi(t)) * m[i] / denom;
        }
    }

    #[test]
    fn several_steps_match_naive_in_f64_and_f32() {
        // Larger than one chunk, odd length.
        let n = CHUNK * 2 + 37;
        let c = cfg(0.1);
        let mut r = rng(41);
        let p0: Vec<f64> = uniform(&mut r, n, 1.0);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut pn, mut mn, mut vn) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let mut p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
        let (mut m32, mut v32) = (vec![0.0f32; n], vec![0.0f32; n]);
        for t in 1..=5 {
            let g: Vec<f64> = uniform(&mut r, n, 0.5);
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            step(&mut p, &g, &mut m, &mut v, &c, t as u64);
            step(&mut p32, &g32, &mut m32, &mut v32, &c, t as u64);
            naive_adamw(&mut pn, &g, &mut mn, &mut vn, &c, t);
        }
        assert_close("adamw p", &p, &pn, 1e-13);
        assert_close("adamw m", &m, &mn, 1e-13);
        assert_close("adamw v", &v, &vn, 1e-13);
        let pn32: Vec<f32> = pn.iter().map(|&x| x as f32).collect();
        assert_close("adamw p f32", &p32, &pn32, 1e-6);
    }

    #[test]
    fn first_step_by_hand() {
        // t = 1: m̂ = g and v̂ = g², so p = p·(1 − lr·wd) − lr·g/(|g| + eps).
        let c = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0.0; 2], [0.0; 2]);
        step(&mut p, &[0.5, -0.25], &mut m, &mut v, &c, 1);
        let want = [
            0.999 - 0.1 * 0.5 / (0.5 + 1e-8),
            -1.998 + 0.1 * 0.25 / (0.25 + 1e-8),
        ];
        assert!((p[0] - want[0]).abs() < 1e-14, "{} vs {}", p[0], want[0]);
        assert!((p[1] - want[1]).abs() < 1e-14, "{} vs {}", p[1], want[1]);
        assert!((m[0] - 0.05).abs() < 1e-16 && (v[0] - 0.00025).abs() < 1e-18);
    }

    #[test]
    fn zero_weight_decay_is_adam() {
        let n = 101;
        let c = cfg(0.0);
        let mut r = rng(42);
        let p0: Vec<f64> = uniform(&mut r, n, 1.0);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut pa, mut ma, mut va) = (p0, vec![0.0; n], vec![0.0; n]);
        for t in 1..=4 {
            let g: Vec<f64> = uniform(&mut r, n, 1.0);
            step(&mut p, &g, &mut m, &mut v, &c, t as u64);
            naive_adam(&mut pa, &g, &mut ma, &mut va, &c, t);
        }
        assert_close("adamw(wd=0) vs adam", &p, &pa, 1e-13);
    }

    #[test]
    fn zero_gradient_only_decays() {
        // With g = m = v = 0 the Adam term is 0/eps = 0: only the decoupled decay acts.
        let c = cfg(0.5);
        let (mut p, mut m, mut v) = ([2.0f64, -3.0], [0.0; 2], [0.0; 2]);
        for t in 1..=3 {
            step(&mut p, &[0.0, 0.0], &mut m, &mut v, &c, t);
        }
        let f = (1.0f64 - 1e-2 * 0.5).powi(3);
        assert_close("pure decay", &p, &[2.0 * f, -3.0 * f], 1e-15);
    }
}
