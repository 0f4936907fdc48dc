//! The op families, each with `forward` and `backward` on [`Tensor`]s.
//!
//! Each file validates shapes, dtypes and devices, then dispatches to the
//! backend of the same name (`cpu/<family>.rs` or `cuda/<family>.rs`, by the
//! tensors' device). Callers never see the backend.
//!
//! Gradient convention (as llm.c): activation gradients are returned fresh;
//! parameter gradients are *added* into a caller-owned buffer passed as
//! `Option<&mut Tensor>`, `None` for frozen weights.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod grad_clip;
pub mod infonce;
pub mod linear_kl;
pub mod linear_xent;
pub mod matmul;
pub mod pooling;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use crate::{Result, Tensor, TensorError};

/// Errors unless every tensor lives on the first one's device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let Some(first) = ts.first() else {
        return Ok(());
    };
    for t in ts {
        if t.device() != first.device() {
            return Err(TensorError::Device {
                op,
                expected: first.device(),
                found: t.device(),
            });
        }
    }
    Ok(())
}
