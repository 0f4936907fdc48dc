//! Gradient-check inputs for the layers. The check itself is
//! `llm2comp_tensor::testing::check_grad_f32` (shared with the trainers,
//! whose models also compute in f32); its tolerance is explained there.

use llm2comp_tensor::Tensor;
pub(crate) use llm2comp_tensor::testing::check_grad_f32 as check_f32;
use llm2comp_tensor::testing::{rng, uniform};

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
