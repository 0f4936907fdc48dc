//! Global-norm gradient clipping on the CPU (PyTorch's `clip_grad_norm_`).
//!
//! The squared norm is accumulated in f64: a LoRA model has millions of
//! gradient elements, and an f32 running sum would lose the small ones.
//! Work is split into fixed-size chunks across *all* tensors (many LoRA
//! factors are tiny, so per-tensor parallelism would leave cores idle), and
//! the per-chunk partial sums are added serially in order, so the norm is
//! bit-for-bit reproducible whatever rayon's scheduling.

pub use crate::shared::grad_clip::CLIP_EPS;
use rayon::prelude::*;

use crate::Real;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The global L2 norm of all slices together, accumulated in f64.
pub fn global_norm<T: Real>(grads: &[&[T]]) -> f64 {
    let chunks: Vec<&[T]> = grads.iter().flat_map(|g| g.chunks(CHUNK)).collect();
    let partial: Vec<f64> = chunks
        .par_iter()
        .map(|c| c.iter().map(|&x| x.f64() * x.f64()).sum::<f64>())
        .collect();
    partial.iter().sum::<f64>().sqrt()
}

/// Multiplies every element of every slice by `factor`.
pub fn scale<T: Real>(grads: &mut [&mut [T]], factor: T) {
    let chunks: Vec<&mut [T]> = grads.iter_mut().flat_map(|g| g.chunks_mut(CHUNK)).collect();
    chunks
        .into_par_iter()
        .for_each(|c| c.iter_mut().for_each(|x| *x *= factor));
}

/// Returns the pre-clip global norm; scales all grads by max_norm/(norm + 1e-6)
/// when that is below 1. A non-finite norm leaves the grads untouched (the
/// caller decides what to do: the ops layer turns it into an error).
pub fn clip_grad_norm<T: Real>(grads: &mut [&mut [T]], max_norm: f64) -> f64 {
    let norm = {
        let views: Vec<&[T]> = grads.iter().map(|g| &**g).collect();
        global_norm(&views)
    };
    if norm.is_finite() {
        let coef = max_norm / (norm + CLIP_EPS);
        if coef < 1.0 {
            scale(grads, T::of(coef));
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, rng, uniform};

    /// The norm and the clipped copies by the definition, in f64.
    fn naive(grads: &[Vec<f64>], max_norm: f64) -> (f64, Vec<Vec<f64>>) {
        let norm = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        let out = grads
            .iter()
            .map(|g| g.iter().map(|x| x * coef).collect())
            .collect();
        (norm, out)
    }

    fn random_grads(seed: u64) -> Vec<Vec<f64>> {
        let mut r = rng(seed);
        // Several tiny tensors (LoRA factors) and one spanning several chunks.
        [3, 1, CHUNK * 2 + 5, 17, 0]
            .iter()
            .map(|&n| uniform(&mut r, n, 0.1))
            .collect()
    }

    fn run<T: Real>(grads: &mut [Vec<T>], max_norm: f64) -> f64 {
        let mut views: Vec<&mut [T]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
        clip_grad_norm(&mut views, max_norm)
    }

    #[test]
    fn clips_like_naive_and_lands_on_max_norm() {
        let norm = naive(&random_grads(51), 1.0).0;
        assert!(norm > 2.0, "test needs clipping, norm {norm}");
        // Far below the norm, just below it, and exactly at it: PyTorch still
        // scales by norm/(norm + 1e-6) there, since the coefficient is < 1.
        for max_norm in [1.0, 0.9 * norm, norm] {
            let mut g = random_grads(51);
            let (_, want) = naive(&g, max_norm);
            let got = run(&mut g, max_norm);
            assert!((got - norm).abs() <= 1e-12 * norm, "{got} vs {norm}");
            for (g, w) in g.iter().zip(&want) {
                assert_close("clipped", g, w, 1e-14);
            }
            let views: Vec<&[f64]> = g.iter().map(|g| g.as_slice()).collect();
            let after = global_norm(&views);
            let exact = max_norm * norm / (norm + 1e-6);
            assert!((after - exact).abs() < 1e-12 * exact, "{after} vs {exact}");
            assert!(after < max_norm);
        }
    }

    #[test]
    fn f32_norm_accumulates_in_f64() {
        let g64 = random_grads(52);
        let mut g32: Vec<Vec<f32>> = g64
            .iter()
            .map(|g| g.iter().map(|&x| x as f32).collect())
            .collect();
        let widened: Vec<Vec<f64>> = g32
            .iter()
            .map(|g| g.iter().map(|&x| x as f64).collect())
            .collect();
        let (norm, _) = naive(&widened, 1e9);
        assert!((run(&mut g32, 1e9) - norm).abs() <= 1e-13 * norm);
    }

    #[test]
    fn below_threshold_is_a_no_op() {
        let mut g = random_grads(53);
        let before = g.clone();
        let norm = run(&mut g, 1e3);
        assert!(norm > 0.0 && norm < 1e3);
        assert_eq!(g, before);
    }

    #[test]
    fn non_finite_norm_leaves_grads_alone() {
        for bad in [f64::NAN, f64::INFINITY] {
            let mut g = random_grads(54);
            g[2][CHUNK + 3] = bad;
            let before = g.clone();
            assert!(!run(&mut g, 1.0).is_finite());
            // NaN != NaN, so compare bit patterns.
            let bits =
                |g: &[Vec<f64>]| -> Vec<u64> { g.iter().flatten().map(|x| x.to_bits()).collect() };
            assert_eq!(bits(&g), bits(&before));
        }
    }
}
