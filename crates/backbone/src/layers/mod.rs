//! The model layers, each with an explicit forward (returning the cache its
//! backward needs) and backward. No autograd tape: a layer's caller keeps the
//! layer's *input* (llm.c style) and hands it back to backward, so an
//! activation shared by several consumers (the normed x feeding q, k and v)
//! is stored once.
//!
//! Gradient convention: activation gradients are returned fresh; trainable
//! tensors (LoRA A/B, memory-token rows, optionally the final norm and the
//! embeddings) get gradients *added* into caller-owned buffers, `None` where
//! frozen. Base weights are frozen and held in `Arc`s, so an encoder (LoRA,
//! bidirectional) and a decoder / teacher (no LoRA, causal) share one copy;
//! whether LoRA and which mask apply is chosen per call by [`Pass`].
//!
//! Devices: a model lives on one device ([`Transformer::to_device`]); every
//! step of inference goes through tensor ops (the bias broadcast is
//! `matmul::add_bias`, the memory-row gather `Tensor::copy_rows`), so a CUDA
//! model runs on CUDA end to end, in f32 or bf16 (norm weights stay f32).
//! Backward runs on CUDA too (the compression and contrastive steps train
//! there: bf16 frozen weights, f32 LoRA and memory-row masters cast per use;
//! a trained embedding table keeps an f32 master beside its bf16 copy and
//! gets its gradient scattered on the device).
//!
//! [`Transformer::to_device`]: transformer::Transformer::to_device

use std::sync::Arc;

use llm2comp_tensor::ops::dropout::SeqKeys;

pub mod attention;
pub mod block;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod rmsnorm;
pub mod to_device;
pub mod transformer;
pub mod weights;

#[cfg(test)]
pub(crate) mod grad_check;

/// How one forward call runs: the mask, whether LoRA side paths apply, and
/// dropout (training passes only).
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    /// Causal (decoder, teacher) or bidirectional (the compression encoder).
    pub causal: bool,
    /// Whether LoRA side paths are added (the encoder) or skipped (decoder / teacher).
    pub lora: bool,
    /// Seed of this pass's dropout masks; `None` disables all dropout (evaluation).
    pub dropout_seed: Option<u64>,
    /// One key per packed sequence: each sequence's masks then derive from
    /// (seed, layer, key) and its own positions only, so a text is dropped
    /// the same whether it shares the call with others or runs alone (what
    /// packed GradCache needs). `None`: one stream per call.
    pub dropout_keys: Option<Arc<[u64]>>,
    /// Dropout probability on attention probabilities, applied only with a seed.
    pub attn_dropout: f32,
    /// Dropout probability on each residual branch's output (the attention
    /// and MLP outputs before they are added to the stream; BERT's and
    /// SimCSE's "hidden dropout"), applied only with a seed.
    pub hidden_dropout: f32,
    /// Keep only each block's input and recompute the block in backward
    /// (gradient checkpointing: memory O(layers·tokens·hidden) instead of all activations).
    pub checkpoint: bool,
}

impl Pass {
    /// A causal evaluation pass without LoRA (the frozen decoder / teacher).
    pub fn causal() -> Self {
        Self {
            causal: true,
            lora: false,
            dropout_seed: None,
            dropout_keys: None,
            attn_dropout: 0.0,
            hidden_dropout: 0.0,
            checkpoint: false,
        }
    }

    /// A bidirectional evaluation pass with LoRA (the encoder).
    pub fn bidirectional() -> Self {
        Self {
            causal: false,
            lora: true,
            ..Self::causal()
        }
    }

    /// This pass with LoRA switched on or off.
    pub fn with_lora(self, lora: bool) -> Self {
        Self { lora, ..self }
    }

    /// This pass as a training pass whose dropout masks derive from `seed`.
    pub fn with_dropout(self, seed: u64, attn_dropout: f32) -> Self {
        Self {
            dropout_seed: Some(seed),
            attn_dropout,
            ..self
        }
    }

    /// This pass with one dropout stream per packed sequence (`keys[s]` for
    /// sequence s; the forward call errors unless there is one per sequence).
    pub fn with_dropout_keys(self, keys: &[u64]) -> Self {
        Self {
            dropout_keys: Some(keys.into()),
            ..self
        }
    }

    /// The per-sequence streams of a call over `cu_seqlens`, when keyed.
    pub(crate) fn seq_keys(&self, cu_seqlens: &[u32]) -> llm2comp_tensor::Result<Option<SeqKeys>> {
        match (&self.dropout_keys, self.dropout_seed) {
            (Some(k), Some(_)) => SeqKeys::new(cu_seqlens, k).map(Some),
            _ => Ok(None),
        }
    }

    /// This pass with residual-branch dropout `p` (it acts only with a seed).
    pub fn with_hidden_dropout(self, hidden_dropout: f32) -> Self {
        Self {
            hidden_dropout,
            ..self
        }
    }

    /// This pass with gradient checkpointing on or off.
    pub fn with_checkpoint(self, checkpoint: bool) -> Self {
        Self { checkpoint, ..self }
    }
}

/// `t` in `dtype`: borrowed when it already is (the CPU's f32), else a cast
/// on its device (an f32 trainable tensor beside bf16 activations).
pub(crate) fn in_dtype(
    t: &llm2comp_tensor::Tensor,
    dtype: llm2comp_tensor::DType,
) -> llm2comp_tensor::Result<std::borrow::Cow<'_, llm2comp_tensor::Tensor>> {
    Ok(if t.dtype() == dtype {
        std::borrow::Cow::Borrowed(t)
    } else {
        std::borrow::Cow::Owned(t.try_to_dtype(dtype)?)
    })
}

/// Errors unless `t` is a weight the layers compute with: f32 anywhere, or
/// bf16 on a CUDA device (the CPU kernels are f32 only).
pub(crate) fn check_weight(
    op: &'static str,
    what: &'static str,
    t: &llm2comp_tensor::Tensor,
) -> llm2comp_tensor::Result<()> {
    use llm2comp_tensor::DType;
    match (t.device(), t.dtype()) {
        (_, DType::F32) | (llm2comp_tensor::Device::Cuda(_), DType::BF16) => Ok(()),
        _ => t.expect_dtype(op, what, DType::F32),
    }
}

/// SplitMix64's finaliser: decorrelates seeds derived from one another.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for sub-stream `slot` of layer `layer` under `seed` (dropout masks, LoRA init).
pub(crate) fn sub_seed(seed: u64, layer: usize, slot: u64) -> u64 {
    mix(mix(seed ^ mix(layer as u64)) ^ slot)
}

/// `n` values uniform in [−bound, bound) from a counter-based stream: the same
/// (seed, n) always gives the same values, whatever RNG crate version is linked.
pub(crate) fn uniform_from_seed(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = (mix(seed ^ mix(i)) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * bound
        })
        .collect()
}
