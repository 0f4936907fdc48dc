//! InfoNCE contrastive loss over cosine similarities (SimCSE; supervised with
//! hard negatives when keys outnumber queries). Kernels: `cpu/infonce.rs`.
//!
//! On CUDA the loss runs on host copies of q and k (`cuda/infonce.rs` says
//! why: B·D is tiny), so both backends share one kernel.
//!
//! Labels are host indices (`&[u32]`): they are built by the batcher on the
//! host and validated here, before any kernel runs.

use crate::{DType, Device, Result, Tensor, TensorError, cpu, cuda};

const OP: &str = "infonce";

/// What forward returns: the loss and the state backward needs.
#[derive(Debug, Clone)]
pub struct InfoNceOut {
    /// Mean cross-entropy over the queries.
    pub loss: f32,
    /// Normalised queries: [B, D].
    pub qhat: Tensor,
    /// Query norms before normalisation: [B].
    pub qnorm: Tensor,
    /// Normalised keys: [M, D].
    pub khat: Tensor,
    /// Key norms before normalisation: [M].
    pub knorm: Tensor,
    /// softmax(q̂·k̂ᵀ/τ) per query: [B, M].
    pub probs: Tensor,
    /// The dtype q and k had, which backward gives dq and dk (the saved
    /// state above is f32 on every device).
    pub grad_dtype: DType,
}

/// Gradients of the loss with respect to the raw queries and keys.
#[derive(Debug, Clone)]
pub struct InfoNceGrads {
    /// dq: [B, D].
    pub dq: Tensor,
    /// dk: [M, D].
    pub dk: Tensor,
}

fn check_args(labels: &[u32], m: usize, temperature: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(TensorError::invalid(
            OP,
            format!("temperature must be finite and > 0, got {temperature}"),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= m) {
        return Err(TensorError::invalid(
            OP,
            format!("labels[{i}] = {l} is not a key index (M = {m})"),
        ));
    }
    Ok(())
}

/// loss = mean_b −log softmax(q̂_b·k̂ᵀ/τ)[labels_b]. q: [B, D]; k: [M, D]; labels: [B];
/// f32 (f32 or bf16 on CUDA, q and k alike).
pub fn forward(q: &Tensor, k: &Tensor, labels: &[u32], temperature: f32) -> Result<InfoNceOut> {
    let (b, d) = q.dims2(OP, "q")?;
    let (m, dk) = k.dims2(OP, "k")?;
    if b == 0 || d == 0 {
        return Err(TensorError::shape(OP, "q", "[B >= 1, D >= 1]", q.shape()));
    }
    if m == 0 || dk != d {
        return Err(TensorError::shape(
            OP,
            "k",
            format!("[M >= 1, {d}]"),
            k.shape(),
        ));
    }
    if labels.len() != b {
        return Err(TensorError::shape(
            OP,
            "labels",
            format!("[{b}] (one per query)"),
            &[labels.len()],
        ));
    }
    check_args(labels, m, temperature)?;
    crate::ops::same_device(OP, &[q, k])?;
    match q.device() {
        Device::Cpu => {
            let dt = q.dtype();
            let mut qhat = Tensor::zeros(&[b, d], dt, Device::Cpu);
            let mut qnorm = Tensor::zeros(&[b], dt, Device::Cpu);
            let mut khat = Tensor::zeros(&[m, d], dt, Device::Cpu);
            let mut knorm = Tensor::zeros(&[m], dt, Device::Cpu);
            let mut probs = Tensor::zeros(&[b, m], dt, Device::Cpu);
            let loss = cpu::infonce::forward(
                q.f32s(OP, "q")?,
                k.f32s(OP, "k")?,
                labels,
                d,
                temperature,
                qhat.f32s_mut(OP, "qhat")?,
                qnorm.f32s_mut(OP, "qnorm")?,
                khat.f32s_mut(OP, "khat")?,
                knorm.f32s_mut(OP, "knorm")?,
                probs.f32s_mut(OP, "probs")?,
            );
            Ok(InfoNceOut {
                loss: loss as f32,
                qhat,
                qnorm,
                khat,
                knorm,
                probs,
                grad_dtype: dt,
            })
        }
        Device::Cuda(_) => cuda::infonce::forward(q, k, labels, temperature),
    }
}

/// dq and dk of forward's mean loss (fresh tensors), from its saved state and the same labels and τ.
pub fn backward(saved: &InfoNceOut, labels: &[u32], temperature: f32) -> Result<InfoNceGrads> {
    let (b, d) = saved.qhat.dims2(OP, "qhat")?;
    let (m, _) = saved.khat.dims2(OP, "khat")?;
    saved.khat.expect_shape(OP, "khat", &[m, d])?;
    saved.qnorm.expect_shape(OP, "qnorm", &[b])?;
    saved.knorm.expect_shape(OP, "knorm", &[m])?;
    saved.probs.expect_shape(OP, "probs", &[b, m])?;
    if labels.len() != b {
        return Err(TensorError::shape(
            OP,
            "labels",
            format!("[{b}] (one per query)"),
            &[labels.len()],
        ));
    }
    check_args(labels, m, temperature)?;
    crate::ops::same_device(
        OP,
        &[
            &saved.qhat,
            &saved.qnorm,
            &saved.khat,
            &saved.knorm,
            &saved.probs,
        ],
    )?;
    match saved.qhat.device() {
        Device::Cpu => {
            let dt = saved.qhat.dtype();
            let mut dq = Tensor::zeros(&[b, d], dt, Device::Cpu);
            let mut dk = Tensor::zeros(&[m, d], dt, Device::Cpu);
            cpu::infonce::backward(
                saved.probs.f32s(OP, "probs")?,
                labels,
                saved.qhat.f32s(OP, "qhat")?,
                saved.qnorm.f32s(OP, "qnorm")?,
                saved.khat.f32s(OP, "khat")?,
                saved.knorm.f32s(OP, "knorm")?,
                d,
                temperature,
                dq.f32s_mut(OP, "dq")?,
                dk.f32s_mut(OP, "dk")?,
            );
            Ok(InfoNceGrads { dq, dk })
        }
        Device::Cuda(_) => cuda::infonce::backward(saved, labels, temperature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|i| (i as f32 * 0.37).sin()).collect(), shape).unwrap()
    }

    #[test]
    fn rejects_bad_temperature() {
        let (q, k) = (t(&[2, 3]), t(&[4, 3]));
        for tau in [0.0, -0.1, f32::NAN, f32::INFINITY] {
            let err = forward(&q, &k, &[0, 1], tau).unwrap_err().to_string();
            assert!(
                err.contains("infonce") && err.contains("temperature"),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_bad_labels() {
        let (q, k) = (t(&[2, 3]), t(&[4, 3]));
        let err = forward(&q, &k, &[0, 4], 0.05).unwrap_err().to_string();
        assert!(err.contains("labels[1] = 4"), "{err}");
        let err = forward(&q, &k, &[0], 0.05).unwrap_err().to_string();
        assert!(err.contains("labels"), "{err}");
        let out = forward(&q, &k, &[0, 3], 0.05).unwrap();
        assert!(backward(&out, &[0, 9], 0.05).is_err());
    }

    #[test]
    fn rejects_mismatched_shapes_and_dtypes() {
        let err = forward(&t(&[2, 3]), &t(&[4, 5]), &[0, 1], 0.05)
            .unwrap_err()
            .to_string();
        assert!(err.contains("k") && err.contains("[4, 5]"), "{err}");
        assert!(forward(&t(&[0, 3]), &t(&[4, 3]), &[], 0.05).is_err());
        let kb = t(&[4, 3]).to_dtype(DType::BF16);
        let err = forward(&t(&[2, 3]), &kb, &[0, 1], 0.05)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BF16"), "{err}");
    }

    #[test]
    fn forward_then_backward_runs_and_grads_are_finite() {
        let (q, k) = (t(&[3, 8]), t(&[6, 8]));
        let out = forward(&q, &k, &[0, 1, 5], 0.05).unwrap();
        assert!(out.loss.is_finite() && out.loss > 0.0);
        let g = backward(&out, &[0, 1, 5], 0.05).unwrap();
        assert_eq!(g.dq.shape(), &[3, 8]);
        assert_eq!(g.dk.shape(), &[6, 8]);
        assert!(g.dq.to_vec_f32().iter().all(|v| v.is_finite()));
    }
}
