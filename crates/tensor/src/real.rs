//! The scalar type CPU kernels are generic over. Kernels run in f32 in
//! production and in f64 inside gradient checks, so a finite-difference test
//! exercises the very code that ships rather than a second implementation.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// f32 or f64.
pub trait Real:
    num_traits::Float
    + num_traits::FloatConst
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Widens to f64.
    fn f64(self) -> f64;
    /// xs[i] = e^(xs[i] − m), returning the sum: the softmax inner loop.
    /// f32 uses the vectorised `fast_exp` (≤ 2 ulp); f64, which only the
    /// gradient checks run, uses libm.
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self {
        crate::fast_exp::exp_sub_sum_f32(xs, m)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self {
        xs.iter_mut()
            .map(|x| {
                *x = (*x - m).exp();
                *x
            })
            .sum()
    }
}
