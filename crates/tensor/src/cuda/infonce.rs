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

use crate::ops::infonce::{InfoNceGrads, InfoNceOut};
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
    let out = crate::ops::infonce::forward(&host_f32(q)?, &host_f32(k)?, labels, temperature)?;
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
    let g = crate::ops::infonce::backward(&host, labels, temperature)?;
    let back = |t: Tensor| t.try_to_dtype(saved.grad_dtype)?.to_device(dev);
    Ok(InfoNceGrads {
        dq: back(g.dq)?,
        dk: back(g.dk)?,
    })
}
