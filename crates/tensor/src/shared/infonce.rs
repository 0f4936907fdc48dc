//! What InfoNCE's forward saves and backward returns.

use crate::{DType, Tensor};

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
