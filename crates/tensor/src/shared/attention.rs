//! Attention's options and results, shared by both backends.

use crate::Tensor;
use crate::shared::dropout::DropoutMask;

/// How to attend.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOpts {
    /// Whether query i sees only keys j ≤ i of its own sequence.
    pub causal: bool,
    /// Softmax scale, usually 1/√head_dim; finite and > 0.
    pub scale: f32,
    /// Dropout on the attention probabilities (training only).
    pub dropout: Option<DropoutMask>,
}

impl AttentionOpts {
    /// Scale 1/√head_dim, no dropout.
    pub fn new(head_dim: usize, causal: bool) -> Self {
        Self {
            causal,
            scale: 1.0 / (head_dim as f32).sqrt(),
            dropout: None,
        }
    }
}

/// Which CUDA kernel set runs attention (ignored on CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The tensor-core kernels where they apply (bf16, head_dim 64 or 128:
    /// `Wgmma`'s forward on Hopper, `Mma` elsewhere), else the simple ones;
    /// always simple when the environment has `LLM2COMP_ATTN_SIMPLE=1`.
    Auto,
    /// The tensor-core kernels (the current version, v3); an error where they
    /// do not apply.
    Mma,
    /// The first tensor-core version (v1), kept so a benchmark can measure
    /// each tuning step against it in the same run; same constraints as `Mma`.
    MmaV1,
    /// The second version (v2), kept for the same comparison.
    MmaV2,
    /// The Hopper forward (v5: wgmma with the softmax overlapping P·V,
    /// `kernels/attention_sm90a.cu`), with v3's backward; an error off compute
    /// capability 9.x or where `Mma` is.
    Wgmma,
    /// The first Hopper forward (v4: wgmma, one step after the other), kept
    /// for the same-run comparison; same constraints as `Wgmma`.
    WgmmaV4,
    /// The warp-per-row f32-math kernels (bf16 or f32, head_dim <= 256): slow,
    /// and simple enough to trust when checking the tensor-core ones.
    Simple,
}

/// What forward returns: the output and the row log-sum-exp backward needs.
#[derive(Debug, Clone)]
pub struct AttentionOut {
    /// o: [T, Hq, D].
    pub o: Tensor,
    /// Log-sum-exp of each query row's scaled scores: [Hq, T], f32.
    pub lse: Tensor,
}

/// Gradients of q, k and v (activations: fresh tensors).
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    /// [T, Hq, D].
    pub dq: Tensor,
    /// [T, Hkv, D].
    pub dk: Tensor,
    /// [T, Hkv, D].
    pub dv: Tensor,
}
