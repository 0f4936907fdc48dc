//! RMSNorm on the CPU: y = x / rms(x) · w, rms(x) = sqrt(mean(x²) + eps), per row.
//!
//! Forward saves the per-row reciprocal rms (`rstd`) so backward never
//! recomputes the reduction. Backward writes dx (`=`) and accumulates dw
//! (`+=`), the convention of every op here: parameter gradients accumulate
//! across micro-batches, activation gradients are overwritten.

use rayon::prelude::*;

use crate::Real;

/// Rows per rayon task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// x, y: [rows, dim]; w: [dim]; rstd: [rows].
pub fn forward<T: Real>(x: &[T], w: &[T], eps: T, y: &mut [T], rstd: &mut [T]) {
    let dim = w.len();
    y.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|((y, rstd), x)| {
            for ((y, r), x) in y.chunks_mut(dim).zip(rstd.iter_mut()).zip(x.chunks(dim)) {
                let ms = x.iter().map(|&v| v * v).sum::<T>() / T::of(dim as f64);
                let s = T::one() / (ms + eps).sqrt();
                *r = s;
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * s * w;
                }
            }
        });
}

/// dx = s·(w∘dy) − s³/dim · x · Σ(w∘dy∘x); dw += Σ_rows dy∘x·s.
pub fn backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    dx: &mut [T],
    dw: Option<&mut [T]>,
) {
    let dim = w.len();
    dx.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(dy.par_chunks(dim * ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dy), x), rstd)| {
            for (((dx, dy), x), &s) in dx
                .chunks_mut(dim)
                .zip(dy.chunks(dim))
                .zip(x.chunks(dim))
                .zip(rstd)
            {
                let dot: T = dy
                    .iter()
                    .zip(x)
                    .zip(w)
                    .map(|((&g, &x), &w)| g * w * x)
                    .sum();
                let c = s * s * s * dot / T::of(dim as f64);
                for (((dx, &g), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                    *dx = s * g * w - c * x;
                }
            }
        });
    if let Some(dw) = dw {
        let partial = dy
            .par_chunks(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .zip(rstd.par_chunks(ROWS_PER_TASK))
            .fold(
                || vec![T::zero(); dim],
                |mut acc, ((dy, x), rstd)| {
                    for ((dy, x), &s) in dy.chunks(dim).zip(x.chunks(dim)).zip(rstd) {
                        for ((a, &g), &x) in acc.iter_mut().zip(dy).zip(x) {
                            *a += g * x * s;
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![T::zero(); dim],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        dw.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};

    /// The textbook formula, one row at a time, in f64.
    fn naive(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        x.chunks(w.len())
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
                let r = (ms + eps).sqrt();
                row.iter().zip(w).map(move |(v, w)| v / r * w)
            })
            .collect()
    }

    #[test]
    fn forward_matches_naive_f32() {
        let mut r = rng(1);
        let (rows, dim) = (37, 61);
        let x: Vec<f32> = uniform(&mut r, rows * dim, 2.0);
        let w: Vec<f32> = uniform(&mut r, dim, 1.0);
        let mut y = vec![f32::NAN; rows * dim];
        let mut rstd = vec![f32::NAN; rows];
        forward(&x, &w, 1e-5, &mut y, &mut rstd);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let want: Vec<f32> = naive(&x64, &w64, 1e-5).iter().map(|&v| v as f32).collect();
        assert_close("rmsnorm forward", &y, &want, 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rng(2);
        let (rows, dim) = (19, 13);
        let x: Vec<f64> = uniform(&mut r, rows * dim, 1.5);
        let w: Vec<f64> = uniform(&mut r, dim, 1.0);
        let g: Vec<f64> = uniform(&mut r, rows * dim, 1.0);
        let eps = 1e-5;
        let loss = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; x.len()];
            let mut s = vec![0.0; rows];
            forward(x, w, eps, &mut y, &mut s);
            dot(&y, &g)
        };
        let mut y = vec![0.0; rows * dim];
        let mut rstd = vec![0.0; rows];
        forward(&x, &w, eps, &mut y, &mut rstd);
        let mut dx = vec![f64::NAN; rows * dim];
        let mut dw = vec![0.5; dim]; // accumulates on top of what is there
        backward(&g, &x, &w, &rstd, &mut dx, Some(&mut dw));
        dw.iter_mut().for_each(|d| *d -= 0.5);
        check_grad("rmsnorm dx", |x| loss(x, &w), &x, &dx, 400);
        check_grad("rmsnorm dw", |w| loss(&x, w), &w, &dw, 400);
    }
}
