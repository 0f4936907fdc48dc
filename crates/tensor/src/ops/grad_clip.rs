//! Global-norm gradient clipping over a model's gradient tensors
//! (PyTorch's `clip_grad_norm_` with `error_if_nonfinite=True`).
//! Kernels: `cpu/grad_clip.rs`, `cuda/grad_clip.rs`.
//!
//! A non-finite norm is an error, not a scale factor: NaN or infinite
//! gradients mean the step is already broken, and scaling them (to NaN, or to
//! zero for an infinite norm) would hide that from the training loop.

use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

const OP: &str = "clip_grad_norm";

fn non_finite(norm: f64) -> TensorError {
    TensorError::invalid(
        OP,
        format!("the global gradient norm is {norm}: gradients contain NaN or Inf"),
    )
}

/// The global L2 norm over all `grads` (f32; f32 or bf16 on CUDA), accumulated in f64;
/// 0 for an empty list.
pub fn global_norm(grads: &[&Tensor]) -> Result<f64> {
    crate::ops::same_device(OP, grads)?;
    let Some(first) = grads.first() else {
        return Ok(0.0);
    };
    match first.device() {
        Device::Cpu => {
            let views = grads
                .iter()
                .map(|g| g.f32s(OP, "grad"))
                .collect::<Result<Vec<_>>>()?;
            Ok(cpu::grad_clip::global_norm(&views))
        }
        Device::Cuda(_) => cuda::grad_clip::global_norm(grads),
    }
}

/// Scales all `grads` by max_norm/(norm + 1e-6) when that is below 1 and returns the pre-clip
/// norm. Errors (leaving the grads untouched) if the norm is NaN or infinite.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(TensorError::invalid(
            OP,
            format!("max_norm must be finite and > 0, got {max_norm}"),
        ));
    }
    {
        let all: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
        crate::ops::same_device(OP, &all)?;
    }
    let Some(device) = grads.first().map(|g| g.device()) else {
        return Ok(0.0);
    };
    let norm = match device {
        Device::Cpu => {
            let mut views = grads
                .iter_mut()
                .map(|g| g.f32s_mut(OP, "grad"))
                .collect::<Result<Vec<_>>>()?;
            cpu::grad_clip::clip_grad_norm(&mut views, max_norm)
        }
        Device::Cuda(_) => cuda::grad_clip::clip_grad_norm(grads, max_norm)?,
    };
    if norm.is_finite() {
        Ok(norm)
    } else {
        Err(non_finite(norm))
    }
}

/// Multiplies every element of every tensor by `factor` in place (f32; f32
/// or bf16 on CUDA): clipping's rescale, public so a caller can scale a
/// gradient on its device (e.g. by an accumulation factor) without a host copy.
pub fn scale(xs: &mut [&mut Tensor], factor: f32) -> Result<()> {
    {
        let all: Vec<&Tensor> = xs.iter().map(|g| &**g).collect();
        crate::ops::same_device("scale", &all)?;
    }
    match xs.first().map(|g| g.device()) {
        None => Ok(()),
        Some(Device::Cpu) => {
            for x in xs.iter_mut() {
                x.f32s_mut("scale", "x")?
                    .iter_mut()
                    .for_each(|v| *v *= factor);
            }
            Ok(())
        }
        Some(Device::Cuda(_)) => cuda::grad_clip::scale(xs, factor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn t(v: Vec<f32>) -> Tensor {
        let n = v.len();
        Tensor::from_vec(v, &[n]).unwrap()
    }

    #[test]
    fn clips_to_max_norm_across_tensors() {
        let (mut a, mut b) = (t(vec![3.0, 0.0]), t(vec![0.0, 4.0]));
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let after = global_norm(&[&a, &b]).unwrap();
        assert!((after - 1.0).abs() < 1e-6, "{after}");
        assert!((a.to_vec_f32()[0] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn scale_multiplies_in_place_and_refuses_bf16_on_the_cpu() {
        let (mut a, mut b) = (t(vec![3.0, -1.5]), t(vec![0.25]));
        scale(&mut [&mut a, &mut b], -2.0).unwrap();
        assert_eq!(a.to_vec_f32(), [-6.0, 3.0]);
        assert_eq!(b.to_vec_f32(), [-0.5]);
        let mut c = Tensor::zeros(&[2], DType::BF16, Device::Cpu);
        assert!(scale(&mut [&mut c], 2.0).is_err());
        scale(&mut [], 2.0).unwrap();
    }

    #[test]
    fn nan_gradient_is_an_error_and_grads_stay() {
        let (mut a, mut b) = (t(vec![3.0, f32::NAN]), t(vec![100.0]));
        let err = clip_grad_norm(&mut [&mut a, &mut b], 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clip_grad_norm") && err.contains("NaN"),
            "{err}"
        );
        assert_eq!(b.to_vec_f32(), [100.0]);
        let mut c = t(vec![f32::INFINITY]);
        assert!(clip_grad_norm(&mut [&mut c], 1.0).is_err());
        assert_eq!(c.to_vec_f32(), [f32::INFINITY]);
    }

    #[test]
    fn rejects_bad_max_norm_and_dtype_and_accepts_empty() {
        let mut a = t(vec![1.0]);
        assert!(clip_grad_norm(&mut [&mut a], 0.0).is_err());
        assert!(clip_grad_norm(&mut [&mut a], f64::NAN).is_err());
        let mut b = Tensor::zeros(&[2], DType::BF16, Device::Cpu);
        let err = clip_grad_norm(&mut [&mut a, &mut b], 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BF16"), "{err}");
        assert_eq!(clip_grad_norm(&mut [], 1.0).unwrap(), 0.0);
        assert_eq!(global_norm(&[]).unwrap(), 0.0);
    }
}
