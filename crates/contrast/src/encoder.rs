//! The embedding model of the contrastive stages and one contrastive step.
//!
//! A text is embedded as `[BOS] text m_1..m_k` (built by
//! `llm2comp_compress::encoder_input`, the layout stage 1 trained), run
//! bidirectionally with the adapters, and mean-pooled over its k memory
//! positions (`Pooling::LastK`). Backward goes from d[B, H] through the
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

use std::ops::Range;

use llm2comp_backbone::{
    Input, LoraTarget, Param, Pass, Pooling, Trainable, Transformer, TransformerCache,
    TransformerGrads, pooling::PoolingCache,
};
use llm2comp_compress::encoder_input::{memory_ids, push_encoder_input};
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
    /// Wraps a CPU f32 model that carries its adapters and k ≥ 1 memory rows.
    pub fn new(model: Transformer, bos: u32, cfg: ContrastConfig) -> Result<Self> {
        if model.device() != Device::Cpu || model.dtype() != DType::F32 {
            return Err(ContrastError::Config(format!(
                "contrastive training runs in f32 on the CPU for now; the model is {:?} on {}",
                model.dtype(),
                model.device()
            )));
        }
        let k = model.embedding().extra().map_or(0, |e| e.shape()[0]);
        if k == 0 {
            return Err(ContrastError::Config(
                "the model has no memory rows: load a stage-1 adapter first".into(),
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
            extra_rows: true,
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
        let mut out = Tensor::try_zeros(&[texts.len(), h], DType::F32, Device::Cpu)?;
        let pool = Pooling::LastK(self.memory_tokens());
        for rows in self.units(texts.len()) {
            let (ids, cu) = self.pack(&texts[rows.clone()]);
            let pass = self.pass(dropout.map(|s| &s[rows.clone()]));
            let hidden = self.model.infer(Input::Ids(&ids), &cu, &pass)?;
            let (e, _) = pool.forward(&hidden, &cu)?;
            out.copy_rows(rows.start, &e, 0, rows.len())?;
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
        let mut out = Tensor::try_zeros(&[texts.len(), h], DType::F32, Device::Cpu)?;
        let pool = Pooling::LastK(self.memory_tokens());
        let mut units = Vec::new();
        for rows in self.units(texts.len()) {
            let (ids, cu) = self.pack(&texts[rows.clone()]);
            let pass = self.pass(dropout.map(|s| &s[rows.clone()]));
            let (hidden, tc) = self.model.forward(Input::Ids(&ids), &cu, &pass)?;
            let (e, pc) = pool.forward(&hidden, &cu)?;
            out.copy_rows(rows.start, &e, 0, rows.len())?;
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
    /// embeddings) into the adapters' and memory rows' buffers.
    pub fn backward(&mut self, demb: &Tensor, cache: &EmbedCache) -> Result<()> {
        let h = self.model.config().hidden_size;
        demb.expect_shape("Encoder::backward", "demb", &[cache.rows, h])?;
        for (rows, tc, pc) in &cache.units {
            let mut d = Tensor::try_zeros(&[rows.len(), h], DType::F32, Device::Cpu)?;
            d.copy_rows(0, demb, rows.start, rows.len())?;
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
            let mut dm = Tensor::try_zeros(&[end - start, h], DType::F32, Device::Cpu)?;
            dm.copy_rows(0, &d, start, end - start)?;
            self.backward(&dm, &cache)?;
        }
        Ok(l)
    }
}

fn scaled(mut t: Tensor, s: f32) -> Result<Tensor> {
    if s != 1.0 {
        t.f32s_mut("Encoder::step", "demb")?
            .iter_mut()
            .for_each(|x| *x *= s);
    }
    Ok(t)
}

#[cfg(test)]
#[path = "encoder_tests.rs"]
pub(crate) mod tests;
