//! Multinomial logistic regression with an L2 penalty, fitted to
//! convergence by Nesterov's accelerated gradient descent.
//!
//! The objective is scikit-learn's `LogisticRegression(C)` divided by C·n:
//! mean cross-entropy + ½λ‖W‖² with λ = 1/(C·n), the bias unpenalised. It is
//! smooth and strongly convex, so a fixed step 1/L with the momentum
//! (√κ − 1)/(√κ + 1) converges linearly and deterministically (no line
//! search, no L-BFGS memory). L bounds the Hessian: the softmax Jacobian's
//! eigenvalues are at most ½, so L = ½·λmax(X̃ᵀX̃/n) + λ, with λmax from a
//! power iteration (padded 10 %: power iteration approaches from below).

use crate::{EvalError, Result};

/// Settings of [`LogisticRegression::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRegOptions {
    /// Inverse regularisation strength (scikit-learn's C).
    pub c: f64,
    /// Most gradient steps.
    pub max_iter: usize,
    /// Stop when every gradient entry is below this.
    pub tol: f64,
}

impl Default for LogRegOptions {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-5,
        }
    }
}

/// A fitted model: weights [D + 1][C], the last row the bias.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegression {
    /// Weights, row-major [(D + 1) × C].
    pub w: Vec<f32>,
    /// Feature count D.
    pub dim: usize,
    /// Class count C.
    pub classes: usize,
    /// Gradient steps taken.
    pub iterations: usize,
}

/// Logits [n × C] of rows `x` under weights `w` [(D+1) × C].
fn logits(x: &[Vec<f32>], w: &[f32], classes: usize) -> Vec<f32> {
    let dim = w.len() / classes - 1;
    let bias = &w[dim * classes..];
    let mut z = Vec::with_capacity(x.len() * classes);
    for r in x {
        let start = z.len();
        z.extend_from_slice(bias);
        let zr = &mut z[start..];
        for (d, &v) in r.iter().enumerate() {
            // An axpy over classes: contiguous, so it vectorises.
            for (a, &b) in zr.iter_mut().zip(&w[d * classes..(d + 1) * classes]) {
                *a += v * b;
            }
        }
    }
    z
}

/// Row-wise softmax in place.
fn softmax_rows(z: &mut [f32], classes: usize) {
    for row in z.chunks_mut(classes) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for a in row.iter_mut() {
            *a = (*a - m).exp();
            s += *a;
        }
        row.iter_mut().for_each(|a| *a /= s);
    }
}

/// The objective and its gradient at `w`.
pub fn objective(
    x: &[Vec<f32>],
    y: &[usize],
    w: &[f32],
    classes: usize,
    lambda: f64,
) -> (f64, Vec<f32>) {
    let n = x.len();
    let dim = w.len() / classes - 1;
    let mut p = logits(x, w, classes);
    let mut loss = 0.0f64;
    for (row, &t) in p.chunks(classes).zip(y) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&a| (a as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[t] as f64;
    }
    softmax_rows(&mut p, classes);
    for (row, &t) in p.chunks_mut(classes).zip(y) {
        row[t] -= 1.0;
        row.iter_mut().for_each(|a| *a /= n as f32);
    }
    let mut g = vec![0.0f32; w.len()];
    for (r, resid) in x.iter().zip(p.chunks(classes)) {
        for (d, &v) in r.iter().enumerate() {
            for (a, &b) in g[d * classes..(d + 1) * classes].iter_mut().zip(resid) {
                *a += v * b;
            }
        }
        for (a, &b) in g[dim * classes..].iter_mut().zip(resid) {
            *a += b;
        }
    }
    let mut penalty = 0.0f64;
    for (a, &b) in g[..dim * classes].iter_mut().zip(&w[..dim * classes]) {
        *a += (lambda * b as f64) as f32;
        penalty += (b as f64).powi(2);
    }
    (loss / n as f64 + 0.5 * lambda * penalty, g)
}

/// Largest eigenvalue of X̃ᵀX̃/n (X̃ = [X, 1]) by power iteration.
fn gram_top_eigenvalue(x: &[Vec<f32>], dim: usize) -> f64 {
    let mut v = vec![1.0f64; dim + 1];
    let mut lam = 0.0;
    for _ in 0..50 {
        let mut out = vec![0.0f64; dim + 1];
        for r in x {
            let dot: f64 = r.iter().zip(&v).map(|(&a, &b)| a as f64 * b).sum::<f64>() + v[dim];
            for (o, &a) in out.iter_mut().zip(r) {
                *o += dot * a as f64;
            }
            out[dim] += dot;
        }
        let norm = out.iter().map(|a| a * a).sum::<f64>().sqrt() / x.len() as f64;
        lam = norm / v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        v = out.iter().map(|a| a / (norm * x.len() as f64)).collect();
    }
    lam
}

impl LogisticRegression {
    /// Fits on rows `x` with labels `y` in 0..classes.
    pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, opts: &LogRegOptions) -> Result<Self> {
        const OP: &str = "LogisticRegression::fit";
        if x.is_empty() || x.len() != y.len() {
            return Err(EvalError::shape(
                OP,
                "rows and labels of one non-zero length",
                format!("{} and {}", x.len(), y.len()),
            ));
        }
        let dim = x[0].len();
        if let Some(r) = x.iter().find(|r| r.len() != dim) {
            return Err(EvalError::shape(OP, format!("rows of {dim}"), r.len()));
        }
        if let Some(&bad) = y.iter().find(|&&l| l >= classes) {
            return Err(EvalError::shape(OP, format!("labels below {classes}"), bad));
        }
        if opts.c.is_nan() || opts.c <= 0.0 {
            return Err(EvalError::shape(OP, "C > 0", opts.c));
        }
        let lambda = 1.0 / (opts.c * x.len() as f64);
        let l = 0.5 * gram_top_eigenvalue(x, dim) * 1.1 + lambda;
        let step = (1.0 / l) as f32;
        let sqrt_kappa = (l / lambda).sqrt();
        let momentum = ((sqrt_kappa - 1.0) / (sqrt_kappa + 1.0)) as f32;
        let mut w = vec![0.0f32; (dim + 1) * classes];
        let mut look = w.clone();
        let mut iterations = 0;
        for it in 0..opts.max_iter {
            iterations = it + 1;
            let (_, g) = objective(x, y, &look, classes, lambda);
            if g.iter().all(|a| (a.abs() as f64) < opts.tol) {
                w.clone_from(&look);
                break;
            }
            let next: Vec<f32> = look.iter().zip(&g).map(|(a, b)| a - step * b).collect();
            look = next
                .iter()
                .zip(&w)
                .map(|(n, o)| n + momentum * (n - o))
                .collect();
            w = next;
        }
        Ok(Self {
            w,
            dim,
            classes,
            iterations,
        })
    }

    /// The most probable class of each row.
    pub fn predict(&self, x: &[Vec<f32>]) -> Result<Vec<usize>> {
        if let Some(r) = x.iter().find(|r| r.len() != self.dim) {
            return Err(EvalError::shape(
                "LogisticRegression::predict",
                format!("rows of {}", self.dim),
                r.len(),
            ));
        }
        let z = logits(x, &self.w, self.classes);
        Ok(z.chunks(self.classes)
            .map(|row| {
                (0..self.classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                    .expect("classes >= 1")
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_two_points_by_hand() {
        // x = +1 (class 1), x = -1 (class 0), n = 2, C = 5: lambda = 0.1. By symmetry the
        // bias is 0 and w1 = -w0 = a, logit gap 2a; the objective is
        // ln(1 + e^{-2a}) + 0.1 a², stationary where 2·sigmoid(-2a) = 0.2 a.
        let x = vec![vec![1.0f32], vec![-1.0]];
        let m = LogisticRegression::fit(
            &x,
            &[1, 0],
            2,
            &LogRegOptions {
                c: 5.0,
                max_iter: 5000,
                tol: 1e-7,
            },
        )
        .unwrap();
        let (mut lo, mut hi) = (0.0f64, 10.0f64);
        for _ in 0..100 {
            let a = 0.5 * (lo + hi);
            let f = 2.0 / (1.0 + (2.0 * a).exp()) - 0.2 * a;
            if f > 0.0 { lo = a } else { hi = a }
        }
        let a = 0.5 * (lo + hi);
        assert!(
            (m.w[1] as f64 - a).abs() < 1e-4 && (m.w[0] as f64 + a).abs() < 1e-4,
            "{:?} vs {a}",
            m.w
        );
        assert!(
            m.w[2].abs() < 1e-5 && m.w[3].abs() < 1e-5,
            "bias {:?}",
            &m.w[2..]
        );
        assert_eq!(m.predict(&[vec![0.3], vec![-2.0]]).unwrap(), vec![1, 0]);
    }

    #[test]
    fn gradient_matches_central_differences() {
        let x = vec![
            vec![0.5f32, -1.0],
            vec![1.5, 0.2],
            vec![-0.7, 0.9],
            vec![0.1, 0.1],
        ];
        let y = [0, 2, 1, 2];
        let w: Vec<f32> = (0..9).map(|i| (i as f32 * 0.37).sin()).collect();
        let (_, g) = objective(&x, &y, &w, 3, 0.3);
        for i in 0..w.len() {
            let h = 1e-2f32;
            let mut p = w.clone();
            p[i] += h;
            let mut q = w.clone();
            q[i] -= h;
            let fd = (objective(&x, &y, &p, 3, 0.3).0 - objective(&x, &y, &q, 3, 0.3).0)
                / (2.0 * h as f64);
            assert!((fd - g[i] as f64).abs() < 1e-3, "{i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn separates_three_blobs() {
        let centres = [[3.0f32, 0.0], [-3.0, 0.0], [0.0, 3.0]];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for (c, m) in centres.iter().enumerate() {
            for j in 0..5 {
                let t = j as f32 * 1.3;
                x.push(vec![m[0] + 0.5 * t.sin(), m[1] + 0.5 * t.cos()]);
                y.push(c);
            }
        }
        let m = LogisticRegression::fit(&x, &y, 3, &LogRegOptions::default()).unwrap();
        assert!(m.iterations < 1000, "did not converge");
        assert_eq!(m.predict(&x).unwrap(), y);
        assert_eq!(
            m.predict(&[vec![2.5, 0.4], vec![-0.2, 2.0]]).unwrap(),
            vec![0, 2]
        );
        assert!(LogisticRegression::fit(&x, &y, 2, &LogRegOptions::default()).is_err());
        assert!(m.predict(&[vec![1.0]]).is_err());
    }
}
