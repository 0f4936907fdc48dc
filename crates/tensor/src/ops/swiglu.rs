//! SwiGLU, Llama's MLP activation: silu(gate) · up. Kernels: `cpu/swiglu.rs`,
//! `cuda/swiglu.rs`.
//!
//! Gate and up are two tensors (two projections' outputs), not one fused
//! [.., 2I] tensor, so LoRA adapters on either projection stay separate.

use crate::{DType, Device, Result, Tensor, cpu, cuda};

const OP: &str = "swiglu";

/// Checks gate and up have one shape on one device, and are f32 on the CPU
/// (CUDA takes f32 or bf16, one dtype for all; its launcher checks that).
fn check(gate: &Tensor, up: &Tensor) -> Result<()> {
    if gate.device() == Device::Cpu {
        gate.expect_dtype(OP, "gate", DType::F32)?;
        up.expect_dtype(OP, "up", DType::F32)?;
    }
    up.expect_shape(OP, "up", gate.shape())?;
    crate::ops::same_device(OP, &[gate, up])
}

/// out = silu(gate) · up. gate, up: [.., I], same shape and dtype.
pub fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check(gate, up)?;
    match gate.device() {
        Device::Cpu => {
            let mut out = Tensor::zeros(gate.shape(), gate.dtype(), Device::Cpu);
            cpu::swiglu::forward(
                gate.f32s(OP, "gate")?,
                up.f32s(OP, "up")?,
                out.f32s_mut(OP, "out")?,
            );
            Ok(out)
        }
        Device::Cuda(_) => cuda::swiglu::forward(gate, up),
    }
}

/// Returns (dgate, dup) for the forward inputs `gate`, `up` and output gradient `dout`.
pub fn backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    check(gate, up)?;
    if gate.device() == Device::Cpu {
        dout.expect_dtype(OP, "dout", DType::F32)?;
    }
    dout.expect_shape(OP, "dout", gate.shape())?;
    crate::ops::same_device(OP, &[dout, gate])?;
    match gate.device() {
        Device::Cpu => {
            let mut dgate = Tensor::zeros(gate.shape(), gate.dtype(), Device::Cpu);
            let mut dup = Tensor::zeros(gate.shape(), gate.dtype(), Device::Cpu);
            cpu::swiglu::backward(
                dout.f32s(OP, "dout")?,
                gate.f32s(OP, "gate")?,
                up.f32s(OP, "up")?,
                dgate.f32s_mut(OP, "dgate")?,
                dup.f32s_mut(OP, "dup")?,
            );
            Ok((dgate, dup))
        }
        Device::Cuda(_) => cuda::swiglu::backward(dout, gate, up),
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
        let e = forward(&t(&[2, 8]), &t(&[2, 7])).unwrap_err().to_string();
        assert!(
            e.contains("swiglu") && e.contains("up") && e.contains("[2, 8]"),
            "{e}"
        );
        let bf = Tensor::zeros(&[2, 8], DType::BF16, Device::Cpu);
        let e = forward(&bf, &t(&[2, 8])).unwrap_err().to_string();
        assert!(e.contains("gate") && e.contains("BF16"), "{e}");
        let e = backward(&t(&[8, 2]), &t(&[2, 8]), &t(&[2, 8]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dout") && e.contains("[2, 8]"), "{e}");
    }

    #[test]
    fn values_through_tensors() {
        let gate = Tensor::from_vec(vec![0.0f32, 1.0, -2.0], &[1, 3]).unwrap();
        let up = Tensor::from_vec(vec![5.0f32, 2.0, 1.0], &[1, 3]).unwrap();
        let out = forward(&gate, &up).unwrap().to_vec_f32();
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 * silu(1.0)).abs() < 1e-6 && (out[2] - silu(-2.0)).abs() < 1e-6);
        let dout = Tensor::from_vec(vec![1.0f32; 3], &[1, 3]).unwrap();
        let (dgate, dup) = backward(&dout, &gate, &up).unwrap();
        // silu'(0) = 1/2, so dgate[0] = up[0] / 2.
        assert!((dgate.to_vec_f32()[0] - 2.5).abs() < 1e-6);
        assert_eq!(dup.to_vec_f32()[0], 0.0);
    }
}
