//! InfoNCE (contrastive cross-entropy over cosine similarities) on the CPU.
//!
//! Forward normalises queries and keys, forms S = q̂·k̂ᵀ/τ with one GEMM, and
//! turns each row of S into its softmax in place, so the only [B, M] buffer is
//! the one backward needs anyway: dS = (softmax(S) − onehot)/B. B and M are
//! batch sizes (a similarity matrix), so materialising it is cheap next to
//! the encoder that produced q and k.
//!
//! Normalisation divides by max(‖x‖, [`NORM_EPS`]) like PyTorch's
//! `F.normalize`: a zero row maps to zero instead of NaN, and backward is the
//! exact derivative of that clamped map (plain 1/eps scaling where it clamps).

use rayon::prelude::*;

use crate::Real;
use crate::cpu::matmul;

/// Norms at or below this are clamped before dividing (PyTorch's `F.normalize` default).
pub const NORM_EPS: f64 = 1e-12;

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 16;

/// xhat[r] = x[r] / max(‖x[r]‖, NORM_EPS); norm[r] = ‖x[r]‖ (unclamped, so backward sees the clamp).
fn normalize_rows<T: Real>(x: &[T], dim: usize, xhat: &mut [T], norm: &mut [T]) {
    let eps = T::of(NORM_EPS);
    xhat.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(norm.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|((xhat, norm), x)| {
            for ((xhat, n), x) in xhat.chunks_mut(dim).zip(norm.iter_mut()).zip(x.chunks(dim)) {
                *n = x.iter().map(|&v| v * v).sum::<T>().sqrt();
                let inv = T::one() / n.max(eps);
                for (h, &v) in xhat.iter_mut().zip(x) {
                    *h = v * inv;
                }
            }
        });
}

/// In place, g: dx̂ → dx = (dx̂ − x̂(x̂·dx̂))/‖x‖, or dx̂/eps on rows whose norm was clamped.
fn normalize_rows_backward<T: Real>(g: &mut [T], xhat: &[T], norm: &[T], dim: usize) {
    let eps = T::of(NORM_EPS);
    g.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(xhat.par_chunks(dim * ROWS_PER_TASK))
        .zip(norm.par_chunks(ROWS_PER_TASK))
        .for_each(|((g, xhat), norm)| {
            for ((g, xhat), &n) in g.chunks_mut(dim).zip(xhat.chunks(dim)).zip(norm) {
                if n > eps {
                    let proj: T = g.iter().zip(xhat).map(|(&a, &b)| a * b).sum();
                    let inv = T::one() / n;
                    for (g, &h) in g.iter_mut().zip(xhat) {
                        *g = (*g - h * proj) * inv;
                    }
                } else {
                    // x̂ = x/eps is linear in x here: no projection term.
                    let inv = T::one() / eps;
                    g.iter_mut().for_each(|g| *g *= inv);
                }
            }
        });
}

/// Returns the mean cross-entropy loss. q: [B, dim]; k: [M, dim]; labels: [B], each < M.
/// Saves qhat [B, dim], qnorm [B], khat [M, dim], knorm [M] and probs = softmax(S) [B, M].
pub fn forward<T: Real>(
    q: &[T],
    k: &[T],
    labels: &[u32],
    dim: usize,
    tau: T,
    qhat: &mut [T],
    qnorm: &mut [T],
    khat: &mut [T],
    knorm: &mut [T],
    probs: &mut [T],
) -> f64 {
    let b = labels.len();
    let m = knorm.len();
    assert!(b > 0 && m > 0 && dim > 0, "infonce: empty batch");
    assert_eq!(q.len(), b * dim, "infonce: q length");
    assert_eq!(k.len(), m * dim, "infonce: k length");
    assert_eq!(probs.len(), b * m, "infonce: probs length");
    assert!(
        labels.iter().all(|&l| (l as usize) < m),
        "infonce: label out of range"
    );
    normalize_rows(q, dim, qhat, qnorm);
    normalize_rows(k, dim, khat, knorm);
    matmul::x_wt(qhat, khat, probs, b, dim, m, false);
    let inv_tau = T::one() / tau;
    let total: f64 = probs
        .par_chunks_mut(m)
        .zip(labels.par_iter())
        .map(|(row, &label)| {
            row.iter_mut().for_each(|s| *s *= inv_tau);
            // Stable log-sum-exp: shift by the row maximum before exponentiating.
            let max = row.iter().fold(T::neg_infinity(), |a, &s| a.max(s));
            let sum: T = row.iter().map(|&s| (s - max).exp()).sum();
            let lse = max + sum.ln();
            let loss = lse - row[label as usize];
            row.iter_mut().for_each(|s| *s = (*s - lse).exp());
            loss.f64()
        })
        // Per-row losses are collected in order, then summed serially: the
        // reported loss does not depend on how rayon split the rows.
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    total / b as f64
}

/// dq [B, dim] and dk [M, dim] (both overwritten) of the mean loss, from forward's saved state.
pub fn backward<T: Real>(
    probs: &[T],
    labels: &[u32],
    qhat: &[T],
    qnorm: &[T],
    khat: &[T],
    knorm: &[T],
    dim: usize,
    tau: T,
    dq: &mut [T],
    dk: &mut [T],
) {
    let (b, m) = (labels.len(), knorm.len());
    assert_eq!(probs.len(), b * m, "infonce: probs length");
    // dS/τ folded into one factor: the 1/τ of S = q̂·k̂ᵀ/τ and the 1/B of the mean.
    let scale = T::one() / (tau * T::of(b as f64));
    let mut ds = probs.to_vec();
    ds.par_chunks_mut(m)
        .zip(labels.par_iter())
        .for_each(|(row, &label)| {
            row[label as usize] -= T::one();
            row.iter_mut().for_each(|g| *g *= scale);
        });
    matmul::dy_w(&ds, khat, dq, b, m, dim, false);
    dk.fill(T::zero());
    matmul::dyt_x(&ds, qhat, dk, b, m, dim);
    normalize_rows_backward(dq, qhat, qnorm, dim);
    normalize_rows_backward(dk, khat, knorm, dim);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, rng, uniform};

    struct Saved<T> {
        qhat: Vec<T>,
        qnorm: Vec<T>,
        khat: Vec<T>,
        knorm: Vec<T>,
        probs: Vec<T>,
        loss: f64,
    }

    fn run<T: Real>(q: &[T], k: &[T], labels: &[u32], dim: usize, tau: T) -> Saved<T> {
        let (b, m) = (labels.len(), k.len() / dim);
        let nan = T::nan();
        let mut s = Saved {
            qhat: vec![nan; b * dim],
            qnorm: vec![nan; b],
            khat: vec![nan; m * dim],
            knorm: vec![nan; m],
            probs: vec![nan; b * m],
            loss: 0.0,
        };
        s.loss = forward(
            q,
            k,
            labels,
            dim,
            tau,
            &mut s.qhat,
            &mut s.qnorm,
            &mut s.khat,
            &mut s.knorm,
            &mut s.probs,
        );
        s
    }

    /// Cosine similarities by the definition, then −log softmax at the label, averaged; f64.
    fn naive(q: &[f64], k: &[f64], labels: &[u32], dim: usize, tau: f64) -> (f64, Vec<f64>) {
        let b = labels.len();
        let m = k.len() / dim;
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut probs = vec![0.0; b * m];
        let mut loss = 0.0;
        for i in 0..b {
            let qi = &q[i * dim..(i + 1) * dim];
            let s: Vec<f64> = (0..m)
                .map(|j| {
                    let kj = &k[j * dim..(j + 1) * dim];
                    let dot: f64 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    dot / (norm(qi) * norm(kj)) / tau
                })
                .collect();
            let z: f64 = s.iter().map(|v| v.exp()).sum();
            for j in 0..m {
                probs[i * m + j] = s[j].exp() / z;
            }
            loss -= (s[labels[i] as usize].exp() / z).ln();
        }
        (loss / b as f64, probs)
    }

    #[test]
    fn forward_matches_naive_f32() {
        let mut r = rng(21);
        let (b, m, dim) = (13, 29, 67);
        let q: Vec<f32> = uniform(&mut r, b * dim, 1.0);
        let k: Vec<f32> = uniform(&mut r, m * dim, 1.0);
        let labels: Vec<u32> = (0..b as u32).map(|i| (i * 7 + 3) % m as u32).collect();
        let s = run(&q, &k, &labels, dim, 0.05);
        let q64: Vec<f64> = q.iter().map(|&v| v as f64).collect();
        let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
        let (loss, probs) = naive(&q64, &k64, &labels, dim, 0.05);
        assert!(
            (s.loss - loss).abs() < 1e-5 * loss.abs(),
            "{} vs {loss}",
            s.loss
        );
        let want: Vec<f32> = probs.iter().map(|&v| v as f32).collect();
        assert_close("infonce probs", &s.probs, &want, 1e-5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rng(22);
        // M > B: in-batch positives plus hard negatives; dim odd.
        let (b, m, dim) = (5, 11, 7);
        let q: Vec<f64> = uniform(&mut r, b * dim, 1.0);
        let k: Vec<f64> = uniform(&mut r, m * dim, 1.0);
        let labels = [3u32, 0, 10, 3, 6];
        let tau = 0.2;
        let s = run(&q, &k, &labels, dim, tau);
        let mut dq = vec![f64::NAN; b * dim];
        let mut dk = vec![f64::NAN; m * dim];
        backward(
            &s.probs, &labels, &s.qhat, &s.qnorm, &s.khat, &s.knorm, dim, tau, &mut dq, &mut dk,
        );
        check_grad(
            "infonce dq",
            |q| run(q, &k, &labels, dim, tau).loss,
            &q,
            &dq,
            100,
        );
        check_grad(
            "infonce dk",
            |k| run(&q, k, &labels, dim, tau).loss,
            &k,
            &dk,
            100,
        );
    }

    #[test]
    fn identical_positives_and_orthogonal_negatives_give_near_zero_loss() {
        // Queries are scaled basis vectors; keys are basis vectors in another
        // order, so each query's positive points its way and every other key
        // is orthogonal to it: S = 1/τ at the label, 0 elsewhere.
        let (b, dim) = (4, 6);
        let m = dim;
        let mut q = vec![0.0f64; b * dim];
        let mut k = vec![0.0f64; m * dim];
        let perm = [2usize, 5, 0, 1, 4, 3];
        for i in 0..b {
            q[i * dim + i] = 1.0 + i as f64;
        }
        for (j, &axis) in perm.iter().enumerate() {
            k[j * dim + axis] = 0.5;
        }
        let labels: Vec<u32> = (0..b)
            .map(|i| perm.iter().position(|&a| a == i).unwrap() as u32)
            .collect();
        // At τ = 0.05 the loss is ln(1 + 5e⁻²⁰) ≈ 1e-8: still representable next
        // to the log-sum-exp of 20, so the exact value is checkable.
        let tau = 0.05;
        let s = run(&q, &k, &labels, dim, tau);
        let exact = (m as f64 - 1.0) * (-1.0 / tau).exp();
        assert!(s.loss < 1e-7, "loss {}", s.loss);
        assert!(
            (s.loss - exact).abs() <= 1e-4 * exact,
            "{} vs {exact}",
            s.loss
        );
    }

    #[test]
    fn zero_rows_are_clamped_not_nan() {
        let (b, m, dim) = (2, 3, 4);
        let mut q: Vec<f64> = uniform(&mut rng(23), b * dim, 1.0);
        q[..dim].fill(0.0);
        let k: Vec<f64> = uniform(&mut rng(24), m * dim, 1.0);
        let labels = [1u32, 2];
        let s = run(&q, &k, &labels, dim, 0.1);
        assert!(s.loss.is_finite());
        // A zero query scores 0 against every key: a uniform softmax.
        assert_close("zero-row probs", &s.probs[..m], &[1.0 / 3.0; 3], 1e-15);
        let mut dq = vec![f64::NAN; b * dim];
        let mut dk = vec![f64::NAN; m * dim];
        backward(
            &s.probs, &labels, &s.qhat, &s.qnorm, &s.khat, &s.knorm, dim, 0.1, &mut dq, &mut dk,
        );
        assert!(dq.iter().chain(&dk).all(|g| g.is_finite()));
    }
}
