//! RMSNorm (Llama's pre-norm). Kernels: `cpu/rmsnorm.rs`, `cuda/rmsnorm.rs`.
//!
//! On the CPU everything is f32. On CUDA x (and dy, dx, y) may be f32 or bf16,
//! the weight and dweight independently f32 or bf16; rstd is f32 on both.

use crate::{Device, Result, Tensor, cpu, cuda};

const OP: &str = "rmsnorm";

/// What forward returns: the output and the per-row reciprocal rms backward needs.
#[derive(Debug, Clone)]
pub struct RmsNormOut {
    /// y: same shape as x.
    pub y: Tensor,
    /// 1/rms per row: [rows].
    pub rstd: Tensor,
}

fn rows_dim(x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let dim = *x
        .shape()
        .last()
        .ok_or_else(|| crate::TensorError::shape(OP, "x", "rank >= 1", x.shape()))?;
    weight.expect_shape(OP, "weight", &[dim])?;
    crate::ops::same_device(OP, &[x, weight])?;
    Ok((x.numel() / dim.max(1), dim))
}

/// y = x / sqrt(mean(x², last dim) + eps) · weight. x: [.., dim]; weight: [dim].
pub fn forward(x: &Tensor, weight: &Tensor, eps: f32) -> Result<RmsNormOut> {
    let (rows, dim) = rows_dim(x, weight)?;
    match x.device() {
        Device::Cpu => {
            let mut y = Tensor::zeros(x.shape(), x.dtype(), Device::Cpu);
            let mut rstd = Tensor::zeros(&[rows], x.dtype(), Device::Cpu);
            cpu::rmsnorm::forward(
                x.f32s(OP, "x")?,
                weight.f32s(OP, "weight")?,
                eps,
                y.f32s_mut(OP, "y")?,
                rstd.f32s_mut(OP, "rstd")?,
            );
            Ok(RmsNormOut { y, rstd })
        }
        Device::Cuda(_) => {
            let (y, rstd) = cuda::rmsnorm::forward(x, weight, eps, rows, dim)?;
            Ok(RmsNormOut { y, rstd })
        }
    }
}

/// Returns dx; adds the weight gradient into `dweight` when given (frozen weights pass `None`).
pub fn backward(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    dweight: Option<&mut Tensor>,
) -> Result<Tensor> {
    let (rows, dim) = rows_dim(x, weight)?;
    dy.expect_shape(OP, "dy", x.shape())?;
    rstd.expect_shape(OP, "rstd", &[rows])?;
    crate::ops::same_device(OP, &[x, dy, rstd])?;
    if let Some(dw) = &dweight {
        dw.expect_shape(OP, "dweight", &[dim])?;
        crate::ops::same_device(OP, &[x, dw])?;
    }
    match x.device() {
        Device::Cpu => {
            let mut dx = Tensor::zeros(x.shape(), x.dtype(), Device::Cpu);
            let dw = match dweight {
                Some(t) => Some(t.f32s_mut(OP, "dweight")?),
                None => None,
            };
            cpu::rmsnorm::backward(
                dy.f32s(OP, "dy")?,
                x.f32s(OP, "x")?,
                weight.f32s(OP, "weight")?,
                rstd.f32s(OP, "rstd")?,
                dx.f32s_mut(OP, "dx")?,
                dw,
            );
            Ok(dx)
        }
        Device::Cuda(_) => cuda::rmsnorm::backward(dy, x, weight, rstd, dweight, rows, dim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_mismatched_weight() {
        let x = Tensor::zeros(&[3, 4], crate::DType::F32, Device::Cpu);
        let w = Tensor::zeros(&[5], crate::DType::F32, Device::Cpu);
        let err = forward(&x, &w, 1e-5).unwrap_err().to_string();
        assert!(err.contains("rmsnorm") && err.contains("weight"), "{err}");
    }
}
