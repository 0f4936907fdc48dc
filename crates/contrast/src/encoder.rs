//! The embedding model of the contrastive stages and one contrastive step.
//!
//! A text is embedded as `[BOS] text m_1..m_k` (built by
//! `llm2comp_compress::encoder_input`, the layout stage 1 trained), run
//! bidirectionally with the adapters, and mean-pooled over its k memory
//! positions (`Pooling::LastK`), or over all of `[BOS] text` for a model
//! with no memory tokens (the MNTP baseline's adapter, pooled as LLM2Vec does). Backward goes from d[B, H] through the
//! pooling into the adapters and the memory rows.
//!
//! Texts are packed into forward calls of at most a mini-batch each. Each
//! text's dropout masks (attention, hidden, LoRA input) are keyed by its own
//! seed (`Pass::with_dropout_keys`): they depend on that seed and the text's
//! own positions, not on the call it shares, so they are the same however
//! the batch is split. That is what makes GradCache exact (its re-run sees
//! the masks of its first pass) while keeping the GEMMs large: one call per
//! text was 1.35× slower on SmolLM2 (103.7 vs 76.7 s for 3 SimCSE steps of
//! 64 texts, 2 cores; docs/benchmarks.md).
//!
//! GradCache (Gao et al., 2021): the contrastive loss couples every pair of
//! the batch, but its gradient w.r.t. the parameters factors through the
//! embeddings. So (a) embed the whole batch without activations (`infer`),
//! (b) take the loss and dL/d embeddings over the full batch, (c) re-run
//! each mini-batch with activations and backpropagate its rows of dL/demb.
//! Activation memory is one mini-batch's; the gradient is the full batch's.
//!
//! An encoder is built on the CPU in f32 and may move to CUDA
//! ([`Encoder::to_device`], as `Compressor::to_device` does for stage 1):
//! frozen weights in bf16, adapters and memory rows as f32 masters with f32
//! gradient buffers on the device. Embeddings and dL/demb stay f32 on the
//! model's device; the hidden states and their gradients take the model's
//! dtype. The step is the same code on both devices; only the InfoNCE op
//! reads its small [N, H] inputs on the host (`ops::infonce` says why).

use std::ops::Range;

use llm2comp_backbone::{
    Input, LoraTarget, Param, Pass, Pooling, Trainable, Transformer, TransformerCache,
    TransformerGrads, pooling::PoolingCache,
};
use llm2comp_compress::encoder_input::{memory_ids, push_encoder_input};
use llm2comp_tensor::ops::grad_clip;
use llm2comp_tensor::{DType, Device, Tensor};

use crate::{ContrastBatch, ContrastError, Result, loss};

/// How the contrastive stages embed and score.
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastConfig {
    /// InfoNCE temperature τ.
    pub temperature: f32,
    /// Attention-probability dropout in training (SimCSE: 0.2).
    pub attn_dropout: f32,
    /// Dropout on each block's attention and MLP outputs in training
    /// (BERT's hidden dropout; 0 by default: the LLM was trained without it).
    pub hidden_dropout: f32,
    /// GradCache mini-batch (texts per forward with activations); `None`
    /// embeds the whole batch with activations at once.
    pub mini_batch: Option<usize>,
    /// Recompute each block in backward instead of keeping its activations.
    pub checkpoint: bool,
}

impl ContrastConfig {
    /// Stage 2 (SimCSE): τ 0.05, attention dropout 0.2.
    pub fn simcse() -> Self {
        Self {
            temperature: 0.05,
            attn_dropout: 0.2,
            hidden_dropout: 0.0,
            mini_batch: None,
            checkpoint: false,
        }
    }

    /// Stage 3 (supervised): τ 0.05, no dropout.
    pub fn supervised() -> Self {
        Self {
            attn_dropout: 0.0,
            hidden_dropout: 0.0,
            ..Self::simcse()
        }
    }
}

/// The encoder: base + adapters + k memory rows, and its gradient buffers.
#[derive(Debug)]
pub struct Encoder {
    model: Transformer,
    grads: TransformerGrads,
    bos: u32,
    memory: Vec<u32>,
    cfg: ContrastConfig,
}

/// What [`Encoder::backward`] needs: per forward call, its rows and caches.
#[derive(Debug)]
pub struct EmbedCache {
    units: Vec<(Range<usize>, TransformerCache, PoolingCache)>,
    rows: usize,
}

impl Encoder {
    /// Wraps a model that carries its adapters and k ≥ 1 memory rows: an f32
    /// model on the CPU, or one moved to CUDA by `Transformer::to_device`
    /// (its adapters and memory rows f32, whatever the compute dtype).
    pub fn new(model: Transformer, bos: u32, cfg: ContrastConfig) -> Result<Self> {
        if model.device() == Device::Cpu && model.dtype() != DType::F32 {
            return Err(ContrastError::Config(format!(
                "contrastive training on the CPU runs in f32; the model is {}",
                model.dtype()
            )));
        }
        let k = model.embedding().extra().map_or(0, |e| e.shape()[0]);
        let has_lora = model.blocks().iter().any(|b| {
            LoraTarget::ALL
                .into_iter()
                .any(|t| b.linear(t).lora().is_some())
        });
        // k = 0 is a LoRA-only model (the MNTP baseline's), pooled by the mean.
        if k == 0 && !has_lora {
            return Err(ContrastError::Config(
                "the model has neither memory rows nor adapters: load a stage-1 adapter first"
                    .into(),
            ));
        }
        // The optimiser updates these in place: bf16 masters would lose
        // every update smaller than 1/256 of the weight.
        let rows_f32 = model
            .embedding()
            .extra()
            .is_none_or(|e| e.dtype() == DType::F32);
        let loras_f32 = model.blocks().iter().all(|b| {
            LoraTarget::ALL.into_iter().all(|t| {
                b.linear(t)
                    .lora()
                    .is_none_or(|l| l.a.dtype() == DType::F32 && l.b.dtype() == DType::F32)
            })
        });
        if !(rows_f32 && loras_f32) {
            return Err(ContrastError::Config(
                "the adapters and memory rows must be f32 (the trained masters); move the \
                 model with Transformer::to_device, which keeps them f32"
                    .into(),
            ));
        }
        if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
            return Err(ContrastError::Config(format!(
                "temperature must be > 0, got {}",
                cfg.temperature
            )));
        }
        if !(0.0..1.0).contains(&cfg.attn_dropout)
            || !(0.0..1.0).contains(&cfg.hidden_dropout)
            || cfg.mini_batch == Some(0)
        {
            return Err(ContrastError::Config(format!(
                "need attention and hidden dropout in [0, 1) and a mini-batch >= 1; got {}, {} \
                 and {:?}",
                cfg.attn_dropout, cfg.hidden_dropout, cfg.mini_batch
            )));
        }
        let vocab = model.embedding().base_vocab();
        if bos as usize >= vocab {
            return Err(ContrastError::Config(format!(
                "BOS id {bos} is outside the vocabulary of {vocab}"
            )));
        }
        let grads = model.zero_grads(&Trainable {
            lora: true,
            extra_rows: k > 0,
            final_norm: false,
            embedding: false,
        });
        Ok(Self {
            memory: memory_ids(vocab, k),
            model,
            grads,
            bos,
            cfg,
        })
    }

    /// This encoder on `device` computing in `dtype` (frozen weights; the
    /// adapters and memory rows stay f32), with fresh zero gradient buffers
    /// there. Errors name the device when it is missing.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<Self> {
        let model = self.model.to_device(device, dtype)?;
        Self::new(model, self.bos, self.cfg.clone())
    }

    /// The device holding the model, its gradients and every tensor a step makes.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The model.
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// Consumes the encoder, returning the model.
    pub fn into_model(self) -> Transformer {
        self.model
    }

    /// The configuration.
    pub fn config(&self) -> &ContrastConfig {
        &self.cfg
    }

    /// The configuration, mutably (e.g. to switch GradCache on).
    pub fn config_mut(&mut self) -> &mut ContrastConfig {
        &mut self.cfg
    }

    /// How a text's states become its embedding: the mean over its k memory
    /// positions, or, with no memory tokens (an MNTP adapter, as LLM2Vec
    /// pools), the mean over `[BOS] text`.
    pub fn pooling(&self) -> Pooling {
        match self.memory_tokens() {
            0 => Pooling::Mean,
            k => Pooling::LastK(k),
        }
    }

    /// The memory tokens k.
    pub fn memory_tokens(&self) -> usize {
        self.memory.len()
    }

    /// Whether a training pass drops anything (attention, hidden or LoRA dropout).
    pub fn uses_dropout(&self) -> bool {
        let lora = self.model.blocks().iter().any(|b| {
            LoraTarget::ALL
                .into_iter()
                .any(|t| b.linear(t).lora().is_some_and(|l| l.dropout > 0.0))
        });
        lora || self.cfg.attn_dropout > 0.0 || self.cfg.hidden_dropout > 0.0
    }

    /// The trainable tensors (adapters, memory rows) paired with their gradients.
    pub fn params(&mut self) -> Vec<Param<'_>> {
        self.model.params(&mut self.grads)
    }

    /// Zeroes every gradient buffer.
    pub fn zero_grads(&mut self) {
        self.grads.zero();
    }

    /// The pass of a call over texts with dropout seeds `keys` (`None`: no dropout).
    fn pass(&self, keys: Option<&[u64]>) -> Pass {
        let p = Pass::bidirectional().with_checkpoint(self.cfg.checkpoint);
        match keys {
            // The masks' randomness is all in the per-text keys.
            Some(k) => p
                .with_dropout(0, self.cfg.attn_dropout)
                .with_hidden_dropout(self.cfg.hidden_dropout)
                .with_dropout_keys(k),
            None => p,
        }
    }

    /// The forward calls for `n` texts: packed, a mini-batch at most each.
    fn units(&self, n: usize) -> impl Iterator<Item = Range<usize>> {
        let per = self.cfg.mini_batch.unwrap_or(n).max(1);
        (0..n).step_by(per).map(move |s| s..(s + per).min(n))
    }

    fn check(texts: &[Vec<u32>], dropout: Option<&[u64]>) -> Result<()> {
        if texts.is_empty() {
            return Err(ContrastError::Config("no texts to embed".into()));
        }
        if let Some(s) = dropout.filter(|s| s.len() != texts.len()) {
            return Err(ContrastError::Config(format!(
                "{} dropout seeds for {} texts",
                s.len(),
                texts.len()
            )));
        }
        Ok(())
    }

    fn pack(&self, texts: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>) {
        let (mut ids, mut cu) = (Vec::new(), vec![0u32]);
        for t in texts {
            push_encoder_input(&mut ids, &mut cu, self.bos, t, &self.memory);
        }
        (ids, cu)
    }

    /// Embeddings [N, H] of `texts` without activations (`dropout`: one seed per text).
    pub fn embed(&self, texts: &[Vec<u32>], dropout: Option<&[u64]>) -> Result<Tensor> {
        Self::check(texts, dropout)?;
        let h = self.model.config().hidden_size;
        let mut out = Tensor::try_zeros(&[texts.len(), h], DType::F32, self.device())?;
        let pool = self.pooling();
        for rows in self.units(texts.len()) {
            let (ids, cu) = self.pack(&texts[rows.clone()]);
            let pass = self.pass(dropout.map(|s| &s[rows.clone()]));
            let hidden = self.model.infer(Input::Ids(&ids), &cu, &pass)?;
            let (e, _) = pool.forward(&hidden, &cu)?;
            out.copy_rows(rows.start, &f32_rows(e)?, 0, rows.len())?;
        }
        Ok(out)
    }

    /// Embeddings [N, H] with what backward needs.
    pub fn forward(
        &self,
        texts: &[Vec<u32>],
        dropout: Option<&[u64]>,
    ) -> Result<(Tensor, EmbedCache)> {
        Self::check(texts, dropout)?;
        let h = self.model.config().hidden_size;
        let mut out = Tensor::try_zeros(&[texts.len(), h], DType::F32, self.device())?;
        let pool = self.pooling();
        let mut units = Vec::new();
        for rows in self.units(texts.len()) {
            let (ids, cu) = self.pack(&texts[rows.clone()]);
            let pass = self.pass(dropout.map(|s| &s[rows.clone()]));
            let (hidden, tc) = self.model.forward(Input::Ids(&ids), &cu, &pass)?;
            let (e, pc) = pool.forward(&hidden, &cu)?;
            out.copy_rows(rows.start, &f32_rows(e)?, 0, rows.len())?;
            units.push((rows, tc, pc));
        }
        Ok((
            out,
            EmbedCache {
                units,
                rows: texts.len(),
            },
        ))
    }

    /// Adds the gradient of d[N, H] (the loss's gradient w.r.t. forward's
    /// embeddings, f32 on the model's device) into the adapters' and memory
    /// rows' buffers.
    pub fn backward(&mut self, demb: &Tensor, cache: &EmbedCache) -> Result<()> {
        let h = self.model.config().hidden_size;
        demb.expect_shape("Encoder::backward", "demb", &[cache.rows, h])?;
        demb.expect_dtype("Encoder::backward", "demb", DType::F32)?;
        for (rows, tc, pc) in &cache.units {
            let mut d = Tensor::try_zeros(&[rows.len(), h], DType::F32, demb.device())?;
            d.copy_rows(0, demb, rows.start, rows.len())?;
            // The blocks' backward takes the activations' dtype (bf16 on CUDA).
            if d.dtype() != self.model.dtype() {
                d = d.try_to_dtype(self.model.dtype())?;
            }
            let dhidden = pc.backward(&d)?;
            self.model.backward(&dhidden, tc, Some(&mut self.grads))?;
        }
        Ok(())
    }

    /// The batch's contrastive loss without gradients (with its dropout masks).
    pub fn loss(&self, b: &ContrastBatch) -> Result<f64> {
        let emb = self.embed(&b.texts, b.dropout.as_deref())?;
        loss::value(&emb, &b.pairing, self.cfg.temperature)
    }

    /// Forward and backward of batch `b`: adds `grad_scale` × the loss's
    /// gradient into the buffers and returns the (unscaled) loss. Uses
    /// GradCache when the configuration sets a mini-batch smaller than the
    /// batch (one that holds the batch would only add a forward pass).
    pub fn step(&mut self, b: &ContrastBatch, grad_scale: f32) -> Result<f64> {
        let tau = self.cfg.temperature;
        let seeds = b.dropout.as_deref();
        let n = b.texts.len();
        let Some(mb) = self.cfg.mini_batch.filter(|&mb| mb < n) else {
            let (emb, cache) = self.forward(&b.texts, seeds)?;
            let (l, d) = loss::value_and_grad(&emb, &b.pairing, tau)?;
            if l.is_finite() {
                self.backward(&scaled(d, grad_scale)?, &cache)?;
            }
            return Ok(l);
        };
        // (a) every embedding, no activations kept.
        let emb = self.embed(&b.texts, seeds)?;
        // (b) the loss and dL/demb over the whole batch.
        let (l, d) = loss::value_and_grad(&emb, &b.pairing, tau)?;
        if !l.is_finite() {
            return Ok(l);
        }
        let d = scaled(d, grad_scale)?;
        // (c) each mini-batch again with activations, backpropagating its rows.
        let h = self.model.config().hidden_size;
        for start in (0..n).step_by(mb) {
            let end = (start + mb).min(n);
            let (_, cache) = self.forward(&b.texts[start..end], seeds.map(|s| &s[start..end]))?;
            let mut dm = Tensor::try_zeros(&[end - start, h], DType::F32, d.device())?;
            dm.copy_rows(0, &d, start, end - start)?;
            self.backward(&dm, &cache)?;
        }
        Ok(l)
    }
}

/// `t` × `s` in place on its device (dL/demb by the accumulation's scale).
fn scaled(mut t: Tensor, s: f32) -> Result<Tensor> {
    if s != 1.0 {
        grad_clip::scale(&mut [&mut t], s)?;
    }
    Ok(t)
}

/// Pooled rows in f32, the embedding buffer's dtype: the loss, its gradient
/// and the scale then run in f32 (on a bf16 model the mean itself was
/// rounded to bf16 like every hidden state). A no-op on an f32 model.
fn f32_rows(e: Tensor) -> Result<Tensor> {
    Ok(if e.dtype() == DType::F32 {
        e
    } else {
        e.try_to_dtype(DType::F32)?
    })
}

#[cfg(test)]
#[path = "encoder_tests.rs"]
pub(crate) mod tests;
