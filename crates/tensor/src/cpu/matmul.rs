//! Matrix products on the CPU through the `gemm` crate (packed, SIMD,
//! multithreaded on the rayon pool): the three layouts a transformer's linear
//! layers need, plus a strided entry point for ops that multiply sub-blocks
//! (attention tiles, vocabulary tiles of the fused losses).
//!
//! Weights are stored as PyTorch stores `nn.Linear`: W is [out, in]. Hence
//! forward is x·Wᵀ, the input gradient dy·W and the weight gradient dyᵀ·x.
//! Transposes cost nothing: they are strides handed to `gemm`.

use crate::Real;

/// A read-only strided view of an `rows × cols` matrix inside a slice.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Row-major `rows × cols` matrix stored densely.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// The transpose of a dense row-major `cols × rows` matrix, viewed as `rows × cols`.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, 1, rows)
    }

    /// Arbitrary strides; panics if any element would fall outside `data`.
    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "MatRef: {rows}x{cols} with strides ({rs}, {cs}) needs {} elements, slice has {}",
                last + 1,
                data.len()
            );
        }
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
}

/// Below this many multiply-adds a GEMM runs on the calling thread: forking
/// the pool costs more than it saves, and callers inside a parallel loop
/// (attention tiles) must not fan out again.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// dst[m×n] (row stride `dst_rs`) = beta·dst + a·b, or = a·b when `beta` is 0.
/// `threads` caps the parallelism (1 = serial).
pub fn gemm_into<T: Real>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    dst: &mut [T],
    dst_rs: usize,
    beta: T,
    threads: usize,
) {
    gemm_scaled_into(a, b, dst, dst_rs, beta, T::one(), threads)
}

/// dst = beta·dst + alpha·a·b: [`gemm_into`] with the product scaled inside
/// the kernel, which saves callers a pass over dst (attention's softmax scale).
pub fn gemm_scaled_into<T: Real>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    dst: &mut [T],
    dst_rs: usize,
    beta: T,
    alpha: T,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm_into: inner dimensions {k} vs {}", b.rows);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_rs >= n,
        "gemm_into: dst row stride {dst_rs} < {n} columns"
    );
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "gemm_into: dst has {} elements, needs {}",
        dst.len(),
        (m - 1) * dst_rs + n
    );
    if k == 0 {
        for row in dst.chunks_mut(dst_rs).take(m) {
            row[..n].iter_mut().for_each(|d| *d *= beta);
        }
        return;
    }
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let read_dst = beta != T::zero();
    // SAFETY: every index gemm touches was bounds-checked above (MatRef::strided
    // for the operands, the dst assertion for the output); T is f32 or f64,
    // both supported by gemm; dst does not alias the operands (&mut vs &).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            read_dst,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

fn threads() -> usize {
    crate::pool::num_threads()
}

/// y[m×n] = x[m×k] · w[n×k]ᵀ (a linear layer's forward); `accumulate` adds into y.
pub fn x_wt<T: Real>(
    x: &[T],
    w: &[T],
    y: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let beta = if accumulate { T::one() } else { T::zero() };
    gemm_into(
        MatRef::row_major(x, m, k),
        MatRef::transposed(w, k, n),
        y,
        n,
        beta,
        threads(),
    );
}

/// dx[m×k] = dy[m×n] · w[n×k] (a linear layer's input gradient); `accumulate` adds into dx.
pub fn dy_w<T: Real>(
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let beta = if accumulate { T::one() } else { T::zero() };
    gemm_into(
        MatRef::row_major(dy, m, n),
        MatRef::row_major(w, n, k),
        dx,
        k,
        beta,
        threads(),
    );
}

/// dw[n×k] += dy[m×n]ᵀ · x[m×k] (a linear layer's weight gradient, always accumulated).
pub fn dyt_x<T: Real>(dy: &[T], x: &[T], dw: &mut [T], m: usize, n: usize, k: usize) {
    gemm_into(
        MatRef::transposed(dy, n, m),
        MatRef::row_major(x, m, k),
        dw,
        k,
        T::one(),
        threads(),
    );
}

/// y[r, :] += bias for every row r of y (row-major, `bias.len()` columns).
pub fn add_bias<T: Real>(y: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        return;
    }
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};

    /// c[m×n] = a[m×k]·b[k×n], all row-major, by the definition.
    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols * rows)
            .map(|i| a[(i % rows) * cols + i / rows])
            .collect()
    }

    #[test]
    fn three_layouts_match_naive_at_odd_and_parallel_sizes() {
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (33, 64, 17), (130, 257, 129)] {
            let mut r = rng((m * k * n) as u64);
            let x: Vec<f64> = uniform(&mut r, m * k, 1.0);
            let w: Vec<f64> = uniform(&mut r, n * k, 1.0);
            let dy: Vec<f64> = uniform(&mut r, m * n, 1.0);
            let mut y = vec![f64::NAN; m * n];
            x_wt(&x, &w, &mut y, m, k, n, false);
            assert_close("x_wt", &y, &naive(&x, &transpose(&w, n, k), m, k, n), 1e-12);
            let mut dx = vec![f64::NAN; m * k];
            dy_w(&dy, &w, &mut dx, m, n, k, false);
            assert_close("dy_w", &dx, &naive(&dy, &w, m, n, k), 1e-12);
            let mut dw = vec![1.0; n * k];
            dyt_x(&dy, &x, &mut dw, m, n, k);
            let want: Vec<f64> = naive(&transpose(&dy, m, n), &x, n, m, k)
                .iter()
                .map(|v| v + 1.0)
                .collect();
            assert_close("dyt_x accumulates", &dw, &want, 1e-12);
        }
    }

    #[test]
    fn f32_matches_f64_reference() {
        let (m, k, n) = (64, 576, 96);
        let mut r = rng(9);
        let x: Vec<f32> = uniform(&mut r, m * k, 1.0);
        let w: Vec<f32> = uniform(&mut r, n * k, 1.0);
        let mut y = vec![f32::NAN; m * n];
        x_wt(&x, &w, &mut y, m, k, n, false);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let want: Vec<f32> = naive(&x64, &transpose(&w64, n, k), m, k, n)
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close("x_wt f32", &y, &want, 1e-6);
    }

    #[test]
    fn linear_backward_matches_finite_differences() {
        let (m, k, n) = (5, 7, 3);
        let mut r = rng(11);
        let x: Vec<f64> = uniform(&mut r, m * k, 1.0);
        let w: Vec<f64> = uniform(&mut r, n * k, 1.0);
        let g: Vec<f64> = uniform(&mut r, m * n, 1.0);
        let f = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; m * n];
            x_wt(x, w, &mut y, m, k, n, false);
            dot(&y, &g)
        };
        let mut dx = vec![0.0; m * k];
        dy_w(&g, &w, &mut dx, m, n, k, false);
        let mut dw = vec![0.0; n * k];
        dyt_x(&g, &x, &mut dw, m, n, k);
        check_grad("linear dx", |x| f(x, &w), &x, &dx, 100);
        check_grad("linear dw", |w| f(&x, w), &w, &dw, 100);
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn out_of_bounds_view_is_refused() {
        let d = [0.0f32; 5];
        let _ = MatRef::strided(&d, 2, 3, 3, 1);
    }

    #[test]
    fn add_bias_adds_to_every_row() {
        let mut y = vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        add_bias(&mut y, &[0.5, -1.0, 2.0]);
        assert_eq!(y, [1.5, 1.0, 5.0, 4.5, 4.0, 8.0]);
    }
}
