//! Dropout with a reproducible counter-based mask. Kernels: `cpu/dropout.rs`,
//! `cuda/dropout.rs` (the same hash: both backends drop the same elements).
//! f32 on the CPU; f32 or bf16 on CUDA.

use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

const OP: &str = "dropout";

/// Identifies one dropout mask: the same (seed, offset) always drops the same elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    /// Drop probability in [0, 1).
    pub p: f32,
    /// Stream seed (per layer, per step: the caller derives it).
    pub seed: u64,
    /// Stream index of element 0.
    pub offset: u64,
}

fn check(mask: &DropoutMask) -> Result<()> {
    if !(0.0..1.0).contains(&mask.p) {
        return Err(TensorError::invalid(
            OP,
            format!("drop probability must be in [0, 1), got {}", mask.p),
        ));
    }
    Ok(())
}

/// y = x · mask / (1 − p).
pub fn forward(x: &Tensor, mask: DropoutMask) -> Result<Tensor> {
    check(&mask)?;
    match x.device() {
        Device::Cpu => {
            let mut y = Tensor::zeros(x.shape(), x.dtype(), Device::Cpu);
            cpu::dropout::forward(
                x.f32s(OP, "x")?,
                mask.p,
                mask.seed,
                mask.offset,
                y.f32s_mut(OP, "y")?,
            );
            Ok(y)
        }
        Device::Cuda(_) => cuda::dropout::apply(x, mask.p, mask.seed, mask.offset, "x"),
    }
}

/// dx = dy · mask / (1 − p), with forward's mask regenerated, not stored.
pub fn backward(dy: &Tensor, mask: DropoutMask) -> Result<Tensor> {
    check(&mask)?;
    match dy.device() {
        Device::Cpu => {
            let mut dx = Tensor::zeros(dy.shape(), dy.dtype(), Device::Cpu);
            cpu::dropout::backward(
                dy.f32s(OP, "dy")?,
                mask.p,
                mask.seed,
                mask.offset,
                dx.f32s_mut(OP, "dx")?,
            );
            Ok(dx)
        }
        Device::Cuda(_) => cuda::dropout::apply(dy, mask.p, mask.seed, mask.offset, "dy"),
    }
}
