//! Residual connections on the CPU: out = a + b.
//!
//! Trivial arithmetic, kept as an explicit op family anyway so a layer's
//! backward reads as the mirror of its forward and the CUDA backend has one
//! place to fuse into. The gradient reaches both branches unchanged; the
//! in-place `add_into` is what accumulates a residual stream's gradient
//! (the skip path plus the block's input gradient) without a temporary.

use rayon::prelude::*;

use crate::Real;

/// Elements per rayon task: memory-bound work, so chunks only need to be big.
const CHUNK: usize = 1 << 14;

/// out = a + b, elementwise.
pub fn forward<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "residual: lengths"
    );
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((o, a), b)| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// da = dout and db = dout: both branches receive the gradient unchanged.
pub fn backward<T: Real>(dout: &[T], da: &mut [T], db: &mut [T]) {
    assert!(
        da.len() == dout.len() && db.len() == dout.len(),
        "residual: lengths"
    );
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((da, db), g)| {
            da.copy_from_slice(g);
            db.copy_from_slice(g);
        });
}

/// acc += x, elementwise.
pub fn add_into<T: Real>(acc: &mut [T], x: &[T]) {
    assert_eq!(acc.len(), x.len(), "residual: lengths");
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(acc, x)| {
            for (a, &x) in acc.iter_mut().zip(x) {
                *a += x;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grad, dot, rng, uniform};

    #[test]
    fn forward_and_add_into_match_the_definition_across_chunks() {
        let n = 2 * CHUNK + 77;
        let mut r = rng(1);
        let a: Vec<f32> = uniform(&mut r, n, 1.0);
        let b: Vec<f32> = uniform(&mut r, n, 1.0);
        let mut out = vec![f32::NAN; n];
        forward(&a, &b, &mut out);
        let mut acc = a.clone();
        add_into(&mut acc, &b);
        for i in 0..n {
            assert_eq!(out[i], a[i] + b[i], "forward at {i}");
            assert_eq!(acc[i], a[i] + b[i], "add_into at {i}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 101;
        let mut r = rng(2);
        let a: Vec<f64> = uniform(&mut r, n, 1.0);
        let b: Vec<f64> = uniform(&mut r, n, 1.0);
        let g: Vec<f64> = uniform(&mut r, n, 1.0);
        let f = |a: &[f64], b: &[f64]| {
            let mut out = vec![0.0; n];
            forward(a, b, &mut out);
            dot(&out, &g)
        };
        let (mut da, mut db) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        backward(&g, &mut da, &mut db);
        check_grad("residual da", |a| f(a, &b), &a, &da, n);
        check_grad("residual db", |b| f(&a, b), &b, &db, n);
    }
}
