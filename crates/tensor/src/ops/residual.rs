//! Residual connections: out = a + b. Kernels: `cpu/residual.rs`, `cuda/residual.rs`.
//!
//! The CPU takes f32 only. CUDA takes f32 or bf16: one dtype throughout for
//! forward/backward, any mix for `add_into` (its launcher checks).

use crate::{DType, Device, Result, Tensor, cpu, cuda};

const OP: &str = "residual";

/// Checks `b` matches `a` in shape and device, and both are f32 on the CPU.
fn check_pair(a: &Tensor, what_a: &'static str, b: &Tensor, what_b: &'static str) -> Result<()> {
    if a.device() == Device::Cpu {
        a.expect_dtype(OP, what_a, DType::F32)?;
        b.expect_dtype(OP, what_b, DType::F32)?;
    }
    b.expect_shape(OP, what_b, a.shape())?;
    crate::ops::same_device(OP, &[a, b])
}

/// out = a + b; a and b have the same shape and dtype.
pub fn forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair(a, "a", b, "b")?;
    match a.device() {
        Device::Cpu => {
            let mut out = Tensor::zeros(a.shape(), a.dtype(), Device::Cpu);
            cpu::residual::forward(a.f32s(OP, "a")?, b.f32s(OP, "b")?, out.f32s_mut(OP, "out")?);
            Ok(out)
        }
        Device::Cuda(_) => cuda::residual::forward(a, b),
    }
}

/// Returns (da, db) = (dout, dout).
pub fn backward(dout: &Tensor) -> Result<(Tensor, Tensor)> {
    match dout.device() {
        Device::Cpu => {
            dout.expect_dtype(OP, "dout", DType::F32)?;
            let mut da = Tensor::zeros(dout.shape(), dout.dtype(), Device::Cpu);
            let mut db = Tensor::zeros(dout.shape(), dout.dtype(), Device::Cpu);
            cpu::residual::backward(
                dout.f32s(OP, "dout")?,
                da.f32s_mut(OP, "da")?,
                db.f32s_mut(OP, "db")?,
            );
            Ok((da, db))
        }
        Device::Cuda(_) => cuda::residual::backward(dout),
    }
}

/// acc += x in place (accumulating a residual stream or its gradient); same shape.
pub fn add_into(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    check_pair(acc, "acc", x, "x")?;
    match acc.device() {
        Device::Cpu => {
            cpu::residual::add_into(acc.f32s_mut(OP, "acc")?, x.f32s(OP, "x")?);
            Ok(())
        }
        Device::Cuda(_) => cuda::residual::add_into(acc, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    #[test]
    fn rejects_mismatched_shapes_and_dtypes() {
        let e = forward(&t(&[2, 3]), &t(&[3, 2])).unwrap_err().to_string();
        assert!(
            e.contains("residual") && e.contains("b") && e.contains("[2, 3]"),
            "{e}"
        );
        let e = add_into(&mut t(&[4]), &t(&[5])).unwrap_err().to_string();
        assert!(e.contains("x") && e.contains("[4]"), "{e}");
        let bf = Tensor::zeros(&[4], DType::BF16, Device::Cpu);
        let e = add_into(&mut t(&[4]), &bf).unwrap_err().to_string();
        assert!(e.contains("x") && e.contains("BF16"), "{e}");
        let e = backward(&bf).unwrap_err().to_string();
        assert!(e.contains("dout") && e.contains("BF16"), "{e}");
    }

    #[test]
    fn values_through_tensors() {
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]).unwrap();
        let b = Tensor::from_vec(vec![0.5f32, -2.0, 4.0], &[1, 3]).unwrap();
        let out = forward(&a, &b).unwrap();
        assert_eq!(out.shape(), &[1, 3]);
        assert_eq!(out.to_vec_f32(), vec![1.5, 0.0, 7.0]);
        let (da, db) = backward(&b).unwrap();
        assert_eq!(
            (da.to_vec_f32(), db.to_vec_f32()),
            (b.to_vec_f32(), b.to_vec_f32())
        );
        let mut acc = a.clone();
        add_into(&mut acc, &b).unwrap();
        assert_eq!(acc, out);
    }
}
