//! Shared pieces of the criterion benches: seeded inputs and the criterion
//! configuration every bench uses, so figures in `docs/benchmarks.md` are
//! taken the same way (see `scripts/bench-cpu.sh`).

use std::time::Duration;

use criterion::Criterion;
use llm2comp_tensor::{Tensor, testing};

/// A seeded random f32 tensor with values in [-scale, scale).
pub fn random(shape: &[usize], scale: f64, seed: u64) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = testing::uniform(&mut testing::rng(seed), n, scale);
    Tensor::from_vec(data, shape).expect("shape matches data")
}

/// Criterion settings for ops that take milliseconds to seconds per call:
/// few samples, so the whole suite fits in minutes on a 2-core machine.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args()
}
