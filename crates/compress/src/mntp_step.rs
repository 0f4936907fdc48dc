//! One MNTP training step (see [`crate::mntp`]): the model with its
//! adapters reads the corrupted passages bidirectionally; the rows before
//! the chosen positions go through the LM head into the fused linear
//! cross-entropy (mean over the chosen tokens), and the gradient flows back
//! into the adapters. No memory tokens and no frozen decoder: this is the
//! baseline LLM2Comp's pretext is compared with at equal compute.

use std::sync::Arc;

use llm2comp_backbone::{Input, LoraConfig, Param, Pass, Trainable, Transformer, TransformerGrads};
use llm2comp_tensor::ops::embedding;
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::{DType, Tensor};

use crate::mntp::MntpBatch;
use crate::seeds::{self, Stream};
use crate::{CompressError, Result};

/// The model (base + adapters) trained by MNTP, and its gradient buffers.
#[derive(Debug)]
pub struct Mntp {
    model: Transformer,
    head: Arc<Tensor>,
    grads: TransformerGrads,
    checkpoint: bool,
}

impl Mntp {
    /// Attaches fresh adapters (initialised from `seed`) to a base f32 CPU model.
    pub fn new(
        mut model: Transformer,
        lora: &LoraConfig,
        checkpoint: bool,
        seed: u64,
    ) -> Result<Self> {
        model.add_lora(lora, seeds::derive(seed, Stream::LoraInit, 0, 0))?;
        Self::with_adapters(model, checkpoint)
    }

    /// Wraps a model that already carries its adapters.
    pub fn with_adapters(model: Transformer, checkpoint: bool) -> Result<Self> {
        if model.device().is_cuda() || model.dtype() != DType::F32 {
            return Err(CompressError::Config(format!(
                "MNTP trains an f32 model on the CPU; the model is {:?} on {}",
                model.dtype(),
                model.device()
            )));
        }
        let head = model.lm_head_shared();
        let grads = model.zero_grads(&Trainable {
            lora: true,
            extra_rows: false,
            final_norm: false,
            embedding: false,
        });
        Ok(Self {
            model,
            head,
            grads,
            checkpoint,
        })
    }

    /// The model.
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// Consumes the step, returning the model.
    pub fn into_model(self) -> Transformer {
        self.model
    }

    /// The adapters paired with their gradient buffers.
    pub fn params(&mut self) -> Vec<Param<'_>> {
        self.model.params(&mut self.grads)
    }

    /// Zeroes every gradient buffer.
    pub fn zero_grads(&mut self) {
        self.grads.zero();
    }

    /// Bidirectional with adapters; adapter dropout from `dropout_seed`.
    fn pass(&self, dropout_seed: Option<u64>) -> Pass {
        let p = Pass::bidirectional().with_checkpoint(self.checkpoint);
        match dropout_seed {
            Some(s) => p.with_dropout(s, 0.0),
            None => p,
        }
    }

    fn check(&self, b: &MntpBatch) -> Result<()> {
        let vocab = self.model.embedding().base_vocab();
        let t = b.ids.len();
        if b.rows.is_empty() || b.rows.len() != b.targets.len() || b.rows.iter().any(|&r| r >= t) {
            return Err(CompressError::Config(format!(
                "MNTP batch of {t} tokens with {} rows and {} targets",
                b.rows.len(),
                b.targets.len()
            )));
        }
        if let Some(bad) = b.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(CompressError::Config(format!(
                "MNTP batch: id {bad} outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// Rows `b.rows` of the hidden states: the positions that predict.
    fn gather(h: &Tensor, b: &MntpBatch) -> Result<Tensor> {
        let ids: Vec<u32> = b.rows.iter().map(|&r| r as u32).collect();
        Ok(embedding::forward(&ids, h)?)
    }

    /// The batch's loss without gradients.
    pub fn loss(&self, b: &MntpBatch, dropout_seed: Option<u64>) -> Result<f64> {
        self.check(b)?;
        let h = self
            .model
            .infer(Input::Ids(&b.ids), &b.cu, &self.pass(dropout_seed))?;
        let x = Self::gather(&h, b)?;
        let w = vec![1.0 / b.rows.len() as f32; b.rows.len()];
        let o = LinearXentOptions::for_device(x.device());
        Ok(linear_xent::forward(&x, &self.head, &b.targets, Some(&w), &o)?.loss)
    }

    /// Forward and backward: adds `grad_scale` × the gradient of the mean
    /// cross-entropy over the chosen tokens into the adapters' buffers and
    /// returns the (unscaled) loss.
    pub fn step(
        &mut self,
        b: &MntpBatch,
        dropout_seed: Option<u64>,
        grad_scale: f32,
    ) -> Result<f64> {
        self.check(b)?;
        let (h, cache) = self
            .model
            .forward(Input::Ids(&b.ids), &b.cu, &self.pass(dropout_seed))?;
        let x = Self::gather(&h, b)?;
        // The gradient scale rides on the row weights, as in the compression step.
        let w = vec![grad_scale / b.rows.len() as f32; b.rows.len()];
        let o = LinearXentOptions::for_device(x.device());
        let (out, dx) =
            linear_xent::forward_backward(&x, &self.head, &b.targets, Some(&w), None, &o)?;
        let loss = if grad_scale != 0.0 {
            out.loss / grad_scale as f64
        } else {
            f64::NAN
        };
        if !loss.is_finite() {
            return Ok(loss);
        }
        let h = self.model.config().hidden_size;
        let mut dh = Tensor::try_zeros(&[b.ids.len(), h], DType::F32, x.device())?;
        let ids: Vec<u32> = b.rows.iter().map(|&r| r as u32).collect();
        embedding::backward(&ids, &dx, &mut dh)?;
        self.model.backward(&dh, &cache, Some(&mut self.grads))?;
        Ok(loss)
    }
}
