//! Dropout on the GPU against the CPU op: the kernel reproduces the CPU's
//! counter-based hash, so the two must drop exactly the same elements (checked
//! element by element, not statistically), at a stream offset above 2³² so
//! the 64-bit index arithmetic is exercised, and the kept values must agree
//! (bit-identical for f32; bf16 outputs are rounded to 8 mantissa bits).

use llm2comp_tensor::ops::dropout::{self, DropoutMask};
use llm2comp_tensor::{DType, Device, Tensor};

use crate::common;

/// Positions where exactly one of the two tensors is zero.
fn mask_mismatches(got: &Tensor, want: &Tensor) -> usize {
    let (g, w) = (common::to_cpu_f32(got).to_vec_f32(), want.to_vec_f32());
    assert_eq!(g.len(), w.len());
    g.iter()
        .zip(&w)
        .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
        .count()
}

#[test]
fn dropout_drops_the_same_elements_as_the_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[317, 331]);
}

/// A tiny tensor, for the compute-sanitizer pass (which runs tests named `small`).
#[test]
fn dropout_small_drops_the_same_elements() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[5, 37]);
}

/// Masks and values against the CPU for three masks and both dtypes.
fn compare(dev: Device, shape: &[usize]) {
    let x = common::randn(shape, 11);
    assert!(
        x.to_vec_f32().iter().all(|&v| v != 0.0),
        "inputs must be non-zero"
    );
    for mask in [
        DropoutMask::new(0.3, 0xdead_beef_1234, (1 << 33) + 7),
        DropoutMask::new(0.9, 5, 0),
        DropoutMask::new(0.0, 9, 123),
    ] {
        for (dt, bound) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            let tag = format!("dropout {dt} p={} offset={}", mask.p, mask.offset);
            let xg = common::to_gpu(&x, dt, dev);
            let xc = common::to_cpu_f32(&xg);
            let y = dropout::forward(&xg, &mask).unwrap();
            assert_eq!(y.dtype(), dt);
            let want = dropout::forward(&xc, &mask).unwrap();
            let bad = mask_mismatches(&y, &want);
            let dropped = want.to_vec_f32().iter().filter(|&&v| v == 0.0).count();
            eprintln!(
                "{tag}: {bad} mask mismatches of {} ({dropped} dropped)",
                x.numel()
            );
            assert_eq!(bad, 0, "{tag}: masks differ");
            common::check(&format!("{tag} forward"), &y, &want, bound);

            let dx = dropout::backward(&xg, &mask).unwrap();
            let want = dropout::backward(&xc, &mask).unwrap();
            assert_eq!(
                mask_mismatches(&dx, &want),
                0,
                "{tag}: backward masks differ"
            );
            common::check(&format!("{tag} backward"), &dx, &want, bound);
        }
    }
    // Per-sequence streams (a packed batch of sequences with their own keys,
    // an empty one among them): the same elements as the CPU's loop.
    let rows = x.shape()[0] as u32;
    let (a, b) = (rows / 3, rows / 3 + rows / 4);
    let keys = dropout::SeqKeys::new(&[0, a, a, b, rows], &[7, 8, 9, 10]).unwrap();
    for dt in [DType::F32, DType::BF16] {
        let mask = DropoutMask::new(0.3, 0xfeed, (1 << 33) + 1).with_keys(Some(keys.clone()));
        let xg = common::to_gpu(&x, dt, dev);
        let xc = common::to_cpu_f32(&xg);
        let (y, want) = (
            dropout::forward(&xg, &mask).unwrap(),
            dropout::forward(&xc, &mask).unwrap(),
        );
        let bad = mask_mismatches(&y, &want);
        eprintln!("keyed dropout {dt}: {bad} mask mismatches of {}", x.numel());
        assert_eq!(bad, 0, "keyed dropout {dt}: masks differ");
        let dx = dropout::backward(&xg, &mask).unwrap();
        let want_dx = dropout::backward(&xc, &mask).unwrap();
        assert_eq!(
            mask_mismatches(&dx, &want_dx),
            0,
            "keyed dropout {dt}: backward"
        );
    }
}
