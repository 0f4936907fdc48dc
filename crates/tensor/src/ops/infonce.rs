//! InfoNCE contrastive loss over cosine similarities (SimCSE; supervised with
//! hard negatives when keys outnumber queries). Kernels: `cpu/infonce.rs`.
//!
//! On CUDA the loss runs on host copies of q and k (`on_host` below says
//! why: B·D is tiny), so both backends share one kernel.
//!
//! Labels are host indices (`&[u32]`): they are built by the batcher on the
//! host and validated here, before any kernel runs.

use crate::{Device, Result, Tensor, TensorError, cpu};

pub use crate::shared::infonce::{InfoNceGrads, InfoNceOut};

const OP: &str = "infonce";

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
        Device::Cuda(_) => on_host::forward(q, k, labels, temperature),
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
        Device::Cuda(_) => on_host::backward(saved, labels, temperature),
    }
}

mod on_host {
    //! InfoNCE on a CUDA device, computed on the host on purpose.
    //!
    //! q and k are the pooled embeddings of one batch, [B, D] and [M, D] with B
    //! and M in the tens to hundreds: a few hundred KiB to a few MiB. Copying them
    //! to the host, running the CPU kernel (already tested against a naive
    //! reference and finite differences) and uploading the small saved state costs
    //! well under a millisecond next to the encoder pass that produced them, and
    //! spares a second, GPU-only implementation of normalisation, GEMM, softmax
    //! and their backward that could disagree with the CPU's. The saved state
    //! (q̂, k̂, norms, probs) goes back to the device in f32; dq and dk come back
    //! in the dtype q and k had.

    use super::{InfoNceGrads, InfoNceOut};
    use crate::{DType, Device, Result, Tensor, TensorError};

    const OP: &str = "infonce";

    /// A host f32 copy of a CUDA tensor.
    fn host_f32(t: &Tensor) -> Result<Tensor> {
        t.to_device(Device::Cpu)?.try_to_dtype(DType::F32)
    }

    /// The CPU forward on host copies of q and k (F32 or BF16, same dtype); its saved
    /// state goes back to q's device in f32.
    pub fn forward(q: &Tensor, k: &Tensor, labels: &[u32], temperature: f32) -> Result<InfoNceOut> {
        for (t, what) in [(q, "q"), (k, "k")] {
            if !matches!(t.dtype(), DType::F32 | DType::BF16) {
                return Err(TensorError::invalid(
                    OP,
                    format!("{what} is {}; the CUDA kernels take f32 or bf16", t.dtype()),
                ));
            }
        }
        k.expect_dtype(OP, "k (must match q)", q.dtype())?;
        let dev = q.device();
        let out = super::forward(&host_f32(q)?, &host_f32(k)?, labels, temperature)?;
        Ok(InfoNceOut {
            loss: out.loss,
            qhat: out.qhat.to_device(dev)?,
            qnorm: out.qnorm.to_device(dev)?,
            khat: out.khat.to_device(dev)?,
            knorm: out.knorm.to_device(dev)?,
            probs: out.probs.to_device(dev)?,
            grad_dtype: q.dtype(),
        })
    }

    /// The CPU backward on host copies of the saved state; dq and dk come back on its
    /// device in `saved.grad_dtype`.
    pub fn backward(saved: &InfoNceOut, labels: &[u32], temperature: f32) -> Result<InfoNceGrads> {
        let dev = saved.qhat.device();
        let host = InfoNceOut {
            loss: saved.loss,
            qhat: host_f32(&saved.qhat)?,
            qnorm: host_f32(&saved.qnorm)?,
            khat: host_f32(&saved.khat)?,
            knorm: host_f32(&saved.knorm)?,
            probs: host_f32(&saved.probs)?,
            grad_dtype: DType::F32,
        };
        let g = super::backward(&host, labels, temperature)?;
        let back = |t: Tensor| t.try_to_dtype(saved.grad_dtype)?.to_device(dev);
        Ok(InfoNceGrads {
            dq: back(g.dq)?,
            dk: back(g.dk)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

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
