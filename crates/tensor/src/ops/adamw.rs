//! The AdamW optimiser step (PyTorch's `torch.optim.AdamW` semantics).
//! Kernels: `cpu/adamw.rs`, `cuda/adamw.rs` (bit-identical to the CPU's step).
//!
//! An optimiser has no backward. The moment buffers m and v are owned by the
//! caller (one pair per parameter tensor, zero-initialised), so the
//! optimiser state can be checkpointed like any other tensor.

use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::shared::adamw::AdamWConfig;

const OP: &str = "adamw";

/// One AdamW step at `t` (1-based, the count of steps including this one):
/// updates `params`, `m` and `v` in place from `grads`. All four: same shape, f32.
pub fn step(
    params: &mut Tensor,
    grads: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    cfg: &AdamWConfig,
    t: u64,
) -> Result<()> {
    cfg.validate()?;
    if t == 0 {
        return Err(TensorError::invalid(
            OP,
            "step t is 1-based (bias correction divides by 1 − β^t); got 0",
        ));
    }
    let shape = params.shape().to_vec();
    grads.expect_shape(OP, "grads", &shape)?;
    m.expect_shape(OP, "m", &shape)?;
    v.expect_shape(OP, "v", &shape)?;
    crate::ops::same_device(OP, &[params, grads, m, v])?;
    match params.device() {
        Device::Cpu => {
            cpu::adamw::step(
                params.f32s_mut(OP, "params")?,
                grads.f32s(OP, "grads")?,
                m.f32s_mut(OP, "m")?,
                v.f32s_mut(OP, "v")?,
                cfg,
                t,
            );
            Ok(())
        }
        Device::Cuda(_) => cuda::adamw::step(params, grads, m, v, cfg, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn z(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    #[test]
    fn rejects_step_zero() {
        let (mut p, g, mut m, mut v) = (z(&[3]), z(&[3]), z(&[3]), z(&[3]));
        let err = step(&mut p, &g, &mut m, &mut v, &AdamWConfig::default(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adamw") && err.contains("1-based"), "{err}");
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let (mut p, g, mut m, mut v) = (z(&[3]), z(&[4]), z(&[3]), z(&[3]));
        let err = step(&mut p, &g, &mut m, &mut v, &AdamWConfig::default(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grads") && err.contains("[3]"), "{err}");
        let (g, mut v) = (z(&[3]), z(&[2, 2]));
        let err = step(&mut p, &g, &mut m, &mut v, &AdamWConfig::default(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("v"), "{err}");
    }

    #[test]
    fn rejects_bad_hyper_parameters_and_dtypes() {
        let (mut p, g, mut m, mut v) = (z(&[3]), z(&[3]), z(&[3]), z(&[3]));
        for cfg in [
            AdamWConfig {
                lr: -1.0,
                ..Default::default()
            },
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            AdamWConfig {
                beta2: f64::NAN,
                ..Default::default()
            },
            AdamWConfig {
                eps: 0.0,
                ..Default::default()
            },
            AdamWConfig {
                weight_decay: -0.1,
                ..Default::default()
            },
        ] {
            assert!(
                step(&mut p, &g, &mut m, &mut v, &cfg, 1).is_err(),
                "{cfg:?}"
            );
        }
        let gb = g.to_dtype(DType::BF16);
        let err = step(&mut p, &gb, &mut m, &mut v, &AdamWConfig::default(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BF16"), "{err}");
    }

    #[test]
    fn step_updates_in_place() {
        let mut p = Tensor::from_vec(vec![1.0f32, -1.0], &[2]).unwrap();
        let g = Tensor::from_vec(vec![0.5f32, -0.5], &[2]).unwrap();
        let (mut m, mut v) = (z(&[2]), z(&[2]));
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        };
        step(&mut p, &g, &mut m, &mut v, &cfg, 1).unwrap();
        // First step moves each coordinate by lr against the gradient's sign.
        let got = p.to_vec_f32();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 0.9).abs() < 1e-6,
            "{got:?}"
        );
        assert!(m.to_vec_f32()[0] > 0.0 && v.to_vec_f32()[1] > 0.0);
    }
}
