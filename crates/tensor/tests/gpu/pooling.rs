//! Mean pooling on the GPU against the CPU op, on random overlapping index
//! sets with repeated indices and on the memory-token sets the trainer
//! builds. f32 is expected bit-identical (same summation order, no FMA
//! contraction); bf16 outputs are rounded to 8 mantissa bits.

use llm2comp_tensor::ops::pooling::{self, IndexSets};
use llm2comp_tensor::{DType, Device};

use crate::common;

/// `sets` random non-empty sets of 1..=6 indices < `tokens`, repeats allowed.
fn random_sets(sets: usize, tokens: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut s = seed;
    let mut next = move |m: u64| {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 33) % m
    };
    let mut offsets = vec![0u32];
    let mut indices = Vec::new();
    for _ in 0..sets {
        for _ in 0..=next(6) {
            indices.push(next(tokens as u64) as u32);
        }
        offsets.push(indices.len() as u32);
    }
    (offsets, indices)
}

#[test]
fn pooling_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[67, 576]);
}

/// A tiny width, for the compute-sanitizer pass (which runs tests named `small`).
#[test]
fn pooling_small_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[7]);
}

/// Forward and backward against the CPU for each width, on three kinds of sets over 211 rows.
fn compare(dev: Device, widths: &[usize]) {
    let random = random_sets(37, 211, 21);
    let memory = IndexSets::last_tokens(&[0, 50, 51, 130, 211], 1).unwrap();
    let mean = IndexSets::all_tokens(&[0, 50, 51, 130, 211]).unwrap();
    let cases = [
        ("random", random.0, random.1),
        ("last k", memory.offsets, memory.indices),
        ("all tokens", mean.offsets, mean.indices),
    ];
    for (what, offsets, indices) in &cases {
        for &h in widths {
            let tokens = 211;
            let sets = offsets.len() - 1;
            let hidden = common::randn(&[tokens, h], 22);
            let dout = common::randn(&[sets, h], 23);
            for (dt, bound) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
                let tag = format!("pooling {what} {dt} H={h}");
                let hg = common::to_gpu(&hidden, dt, dev);
                let out = pooling::forward(&hg, offsets, indices).unwrap();
                assert_eq!(out.dtype(), dt);
                let want = pooling::forward(&common::to_cpu_f32(&hg), offsets, indices).unwrap();
                common::check(&format!("{tag} forward"), &out, &want, bound);

                let dg = common::to_gpu(&dout, dt, dev);
                let dh = pooling::backward(&dg, tokens, offsets, indices).unwrap();
                assert_eq!(dh.dtype(), dt);
                let want =
                    pooling::backward(&common::to_cpu_f32(&dg), tokens, offsets, indices).unwrap();
                common::check(&format!("{tag} backward"), &dh, &want, bound);
            }
        }
    }
}
