//! Dropout on the CPU with a counter-based mask.
//!
//! Element i of a call is kept iff `hash(seed, offset + i) < (1 − p)·2³²`.
//! The mask is a pure function of (seed, index): backward regenerates it
//! instead of storing it, parallel chunks need no shared RNG state, and a CUDA
//! kernel computing the same hash drops the same elements. (A stateful RNG
//! from the `rand` crate cannot give any of the three.)

use rayon::prelude::*;

use crate::Real;
pub use crate::shared::dropout::{hash_u32, keep, keep_threshold, keyed_seed};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// y = x · mask / (1 − p). `p` in [0, 1); `offset` is the stream index of x[0].
pub fn forward<T: Real>(x: &[T], p: f32, seed: u64, offset: u64, y: &mut [T]) {
    apply(x, p, seed, offset, y)
}

/// dx = dy · mask / (1 − p), regenerating forward's mask from (seed, offset).
pub fn backward<T: Real>(dy: &[T], p: f32, seed: u64, offset: u64, dx: &mut [T]) {
    apply(dy, p, seed, offset, dx)
}

fn apply<T: Real>(src: &[T], p: f32, seed: u64, offset: u64, dst: &mut [T]) {
    let thr = keep_threshold(p);
    let scale = T::of(1.0 / (1.0 - p as f64));
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (dst, src))| {
            let base = offset + (c * CHUNK) as u64;
            for (i, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                *d = if keep(seed, base + i as u64, thr) {
                    s * scale
                } else {
                    T::zero()
                };
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grad, dot, rng, uniform};

    #[test]
    fn drop_rate_is_p_and_kept_values_are_rescaled() {
        let n = 200_000;
        let x = vec![1.0f32; n];
        let mut y = vec![f32::NAN; n];
        forward(&x, 0.2, 42, 0, &mut y);
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.2).abs() < 0.005, "dropped fraction {dropped}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
    }

    #[test]
    fn same_seed_same_mask_other_seed_other_mask_and_offsets_compose() {
        let x: Vec<f32> = uniform(&mut rng(3), 50_000, 1.0);
        let run = |seed, offset, x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            forward(x, 0.5, seed, offset, &mut y);
            y
        };
        assert_eq!(run(7, 0, &x), run(7, 0, &x));
        assert_ne!(run(7, 0, &x), run(8, 0, &x));
        // Two calls on halves with offsets equal one call on the whole.
        let (a, b) = x.split_at(20_001);
        let mut halves = run(7, 0, a);
        halves.extend(run(7, 20_001, b));
        assert_eq!(halves, run(7, 0, &x));
    }

    #[test]
    fn p_zero_is_identity() {
        let x: Vec<f32> = uniform(&mut rng(4), 1000, 1.0);
        let mut y = vec![0.0; 1000];
        forward(&x, 0.0, 1, 0, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rng(5);
        let x: Vec<f64> = uniform(&mut r, 300, 1.0);
        let g: Vec<f64> = uniform(&mut r, 300, 1.0);
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            forward(x, 0.3, 9, 11, &mut y);
            dot(&y, &g)
        };
        let mut dx = vec![f64::NAN; 300];
        backward(&g, 0.3, 9, 11, &mut dx);
        check_grad("dropout dx", f, &x, &dx, 300);
    }
}
