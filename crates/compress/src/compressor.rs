//! The compression model and one training step: the LoRA encoder squeezes
//! `[BOS] text` into k memory states, the frozen causal decoder predicts the
//! target from them, and the loss gradient flows back through the decoder
//! into the memory states and on into the encoder's adapters and memory rows.
//!
//! One set of base weights serves all three roles. The encoder is the
//! [`Transformer`] with adapters on and bidirectional attention; the decoder
//! and the KL teacher are the same blocks with adapters off and the causal
//! mask (chosen per call by [`Pass`]). Decoder and teacher read their token
//! rows from `base_table`, a handle to the original embedding table taken
//! before training: with `--train-embeddings all` the encoder's table is
//! copied on first write (after `to_device`, the encoder trains an f32
//! master of it instead), and the decoder must keep the original rows (and,
//! for a tied model, the original LM head). The losses are the fused linear
//! cross-entropy / KL, which never build [tokens × vocab] logits.
//!
//! A compressor is built on the CPU in f32 ([`Compressor::new`]) and may then
//! move to CUDA ([`Compressor::to_device`]): frozen weights in the compute
//! dtype (bf16), adapters and memory rows as f32 masters with f32 gradient
//! buffers on the device, cast where used (mixed precision). The step is the
//! same code on both devices.

use std::sync::Arc;

use llm2comp_backbone::{Input, LoraConfig, Param, Pass, Trainable, Transformer, TransformerGrads};
use llm2comp_tensor::ops::embedding;
use llm2comp_tensor::ops::linear_kl::{self, LinearKlOptions};
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::{DType, Device, Tensor};

use crate::batch::PackedBatch;
use crate::memory::{self, TrainEmbeddings};
use crate::seeds::{self, Stream};
use crate::{CompressError, Objective, Result};

/// How the compression model is built and trained.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressConfig {
    /// The pretext objective.
    pub objective: Objective,
    /// Memory tokens k.
    pub memory_tokens: usize,
    /// The encoder's adapters.
    pub lora: LoraConfig,
    /// Which embedding rows the encoder trains.
    pub train_embeddings: TrainEmbeddings,
    /// Recompute each block in backward instead of keeping its activations.
    pub checkpoint: bool,
}

impl CompressConfig {
    /// The paper's settings for `objective`: k = 8, LoRA r 16 / alpha 32 /
    /// dropout 0.05 on q, v, o, gate, up, down, memory rows trained.
    pub fn llm2comp(objective: Objective) -> Self {
        Self {
            objective,
            memory_tokens: 8,
            lora: LoraConfig::llm2comp(),
            train_embeddings: TrainEmbeddings::Memory,
            checkpoint: false,
        }
    }
}

/// What one forward (and backward) of a micro-batch measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The objective's loss on the micro-batch (unscaled).
    pub loss: f64,
    /// Text tokens in the micro-batch.
    pub text_tokens: usize,
    /// Tokens through any forward pass (encoder + decoder + teacher).
    pub forward_tokens: usize,
}

/// The encoder (base + adapters + memory rows) over shared frozen base weights.
#[derive(Debug)]
pub struct Compressor {
    model: Transformer,
    base_table: Arc<Tensor>,
    head: Arc<Tensor>,
    grads: TransformerGrads,
    cfg: CompressConfig,
    bos: u32,
}

/// What the decoder side of a forward pass leaves for backward.
struct Forward {
    enc_cache: llm2comp_backbone::TransformerCache,
    dec_cache: llm2comp_backbone::TransformerCache,
    student: Tensor,
    teacher: Option<Tensor>,
}

impl Compressor {
    /// Wraps a freshly loaded base `model` (no adapters, no extra rows):
    /// attaches the adapters and k memory rows, initialised from `seed`.
    pub fn new(mut model: Transformer, bos: u32, cfg: CompressConfig, seed: u64) -> Result<Self> {
        if model.device().is_cuda() || model.dtype() != DType::F32 {
            return Err(CompressError::Config(format!(
                "a compressor is built from an f32 model on the CPU (then moved with \
                 Compressor::to_device); the model is {:?} on {}",
                model.dtype(),
                model.device()
            )));
        }
        if model.embedding().extra().is_some() {
            return Err(CompressError::Config(
                "the base model already has extra embedding rows".into(),
            ));
        }
        let vocab = model.embedding().base_vocab();
        if bos as usize >= vocab {
            return Err(CompressError::Config(format!(
                "BOS id {bos} is outside the vocabulary of {vocab}"
            )));
        }
        model.add_lora(&cfg.lora, seeds::derive(seed, Stream::LoraInit, 0, 0))?;
        let rows = memory::init_rows(model.embedding().table(), cfg.memory_tokens, seed)?;
        model.set_extra_rows(Some(rows))?;
        Ok(Self::assemble(model, bos, cfg))
    }

    /// Wraps a model that already carries its adapters and k memory rows
    /// (loaded from an adapter directory), e.g. to evaluate it.
    pub fn with_adapters(model: Transformer, bos: u32, cfg: CompressConfig) -> Result<Self> {
        let k = model.embedding().extra().map_or(0, |e| e.shape()[0]);
        if k != cfg.memory_tokens {
            return Err(CompressError::Config(format!(
                "the model has {k} memory rows, the configuration says {}",
                cfg.memory_tokens
            )));
        }
        Ok(Self::assemble(model, bos, cfg))
    }

    /// This compressor on `device` in `dtype` (frozen weights; adapters and
    /// memory rows stay f32), with fresh zero gradient buffers there. With
    /// `--train-embeddings all` the encoder reads and trains an f32 master
    /// of the table (`TokenEmbedding::set_master`), its gradient scattered
    /// on the device, while the table in `dtype` stays the original the
    /// decoder, the teacher and a tied head read.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<Self> {
        let mut model = self.model.to_device(device, dtype)?;
        if self.cfg.train_embeddings == TrainEmbeddings::All && model.embedding().master().is_none()
        {
            let table = self.model.embedding().trained_table();
            let master = table.to_device(device)?.try_to_dtype(DType::F32)?;
            model.embedding_mut().set_master(Some(master))?;
        }
        Ok(Self::assemble(model, self.bos, self.cfg.clone()))
    }

    fn assemble(model: Transformer, bos: u32, cfg: CompressConfig) -> Self {
        // Taken before any update: copy-on-write keeps these the originals.
        let base_table = model.embedding().table().clone();
        let head = model.lm_head_shared();
        let grads = model.zero_grads(&Trainable {
            lora: true,
            extra_rows: true,
            final_norm: false,
            embedding: cfg.train_embeddings == TrainEmbeddings::All,
        });
        Self {
            model,
            base_table,
            head,
            grads,
            cfg,
            bos,
        }
    }

    /// The encoder model (adapters and memory rows attached).
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The encoder model, mutably.
    pub fn model_mut(&mut self) -> &mut Transformer {
        &mut self.model
    }

    /// Consumes the compressor, returning the encoder model.
    pub fn into_model(self) -> Transformer {
        self.model
    }

    /// The configuration.
    pub fn config(&self) -> &CompressConfig {
        &self.cfg
    }

    /// The BOS id every sequence starts with.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// The original embedding table the decoder and teacher read.
    pub fn base_table(&self) -> &Tensor {
        &self.base_table
    }

    /// The trainable tensors paired with their gradient buffers.
    pub fn params(&mut self) -> Vec<Param<'_>> {
        self.model.params(&mut self.grads)
    }

    /// The gradient buffers.
    pub fn grads(&self) -> &TransformerGrads {
        &self.grads
    }

    /// Zeroes every gradient buffer.
    pub fn zero_grads(&mut self) {
        self.grads.zero();
    }

    /// The base vocabulary size V (memory ids are V..V+k).
    pub fn base_vocab(&self) -> usize {
        self.model.embedding().base_vocab()
    }

    /// The encoder pass: bidirectional with adapters; adapter dropout from
    /// `dropout_seed` (none without one). No attention dropout in the pretext.
    fn encoder_pass(&self, dropout_seed: Option<u64>) -> Pass {
        let p = Pass::bidirectional().with_checkpoint(self.cfg.checkpoint);
        match dropout_seed {
            Some(s) => p.with_dropout(s, 0.0),
            None => p,
        }
    }

    /// Rows of the original table for `ids` (decoder and teacher inputs).
    fn base_rows(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(embedding::forward(ids, &self.base_table)?)
    }

    /// Encoder, decoder (and teacher) forward; `grad` keeps the caches.
    fn forward(&self, b: &PackedBatch, dropout_seed: Option<u64>) -> Result<Forward> {
        self.check_batch(b)?;
        let k = b.k;
        let (enc_h, enc_cache) = self.model.forward(
            Input::Ids(&b.enc_ids),
            &b.enc_cu,
            &self.encoder_pass(dropout_seed),
        )?;
        let mut dec_in = self.base_rows(&b.dec_ids)?;
        for (&d, &e) in b.dec_mem.iter().zip(&b.enc_mem) {
            dec_in.copy_rows(d, &enc_h, e, k)?;
        }
        let dec_pass = Pass::causal().with_checkpoint(self.cfg.checkpoint);
        let (dec_h, dec_cache) =
            self.model
                .forward(Input::Embeds(&dec_in), &b.dec_cu, &dec_pass)?;
        let student = gather(&dec_h, &b.student_rows)?;
        let teacher = match &b.teacher {
            Some(t) => {
                let x = self.base_rows(&t.ids)?;
                let h = self
                    .model
                    .infer(Input::Embeds(&x), &t.cu, &Pass::causal())?;
                Some(gather(&h, &t.rows)?)
            }
            None => None,
        };
        Ok(Forward {
            enc_cache,
            dec_cache,
            student,
            teacher,
        })
    }

    fn check_batch(&self, b: &PackedBatch) -> Result<()> {
        if b.k != self.cfg.memory_tokens {
            return Err(CompressError::Config(format!(
                "batch packed for {} memory tokens, the model has {}",
                b.k, self.cfg.memory_tokens
            )));
        }
        if b.teacher.is_some() != (self.cfg.objective == Objective::Kl) {
            return Err(CompressError::Config(format!(
                "batch packed for another objective than {}",
                self.cfg.objective
            )));
        }
        Ok(())
    }

    /// The loss of micro-batch `b` without gradients (gradient checks, evaluation).
    pub fn loss(&self, b: &PackedBatch, dropout_seed: Option<u64>) -> Result<f64> {
        let f = self.forward(b, dropout_seed)?;
        let dev = f.student.device();
        Ok(match &f.teacher {
            Some(t) => {
                let o = LinearKlOptions::for_device(dev);
                linear_kl::forward(t, &f.student, &self.head, Some(&b.row_weights), &o)?.loss
            }
            None => {
                let o = LinearXentOptions::for_device(dev);
                linear_xent::forward(&f.student, &self.head, &b.targets, Some(&b.row_weights), &o)?
                    .loss
            }
        })
    }

    /// Forward and backward of micro-batch `b`: adds `grad_scale` × the
    /// loss's gradient into the trainable tensors' buffers.
    pub fn step(
        &mut self,
        b: &PackedBatch,
        dropout_seed: Option<u64>,
        grad_scale: f32,
    ) -> Result<StepStats> {
        let f = self.forward(b, dropout_seed)?;
        let dev = f.student.device();
        // The gradient scale rides on the row weights: one multiply per row
        // instead of a pass over [rows, H]; the loss is unscaled after.
        let weights: Vec<f32> = b.row_weights.iter().map(|w| w * grad_scale).collect();
        let (loss, dstudent) = match &f.teacher {
            Some(t) => {
                let o = LinearKlOptions::for_device(dev);
                let (out, ds) =
                    linear_kl::forward_backward(t, &f.student, &self.head, Some(&weights), &o)?;
                (out.loss, ds)
            }
            None => {
                let o = LinearXentOptions::for_device(dev);
                let (out, ds) = linear_xent::forward_backward(
                    &f.student,
                    &self.head,
                    &b.targets,
                    Some(&weights),
                    None,
                    &o,
                )?;
                (out.loss, ds)
            }
        };
        let loss = if grad_scale != 0.0 {
            loss / grad_scale as f64
        } else {
            f64::NAN
        };
        let stats = StepStats {
            loss,
            text_tokens: b.text_tokens,
            forward_tokens: b.forward_tokens(),
        };
        if !loss.is_finite() {
            // No backward through a non-finite loss: the trainer stops on it.
            return Ok(stats);
        }
        let h = self.model.config().hidden_size;
        // The scatter adds into f32 (the embedding op's gradient dtype); the
        // decoder's backward takes the model's dtype.
        let mut ddec = Tensor::try_zeros(&[b.dec_ids.len(), h], DType::F32, dev)?;
        scatter_add(&mut ddec, &b.student_rows, &dstudent)?;
        if ddec.dtype() != self.model.dtype() {
            ddec = ddec.try_to_dtype(self.model.dtype())?;
        }
        let ddec_in = self.model.backward(&ddec, &f.dec_cache, None)?;
        let mut denc = Tensor::try_zeros(&[b.enc_ids.len(), h], ddec_in.dtype(), dev)?;
        for (&d, &e) in b.dec_mem.iter().zip(&b.enc_mem) {
            denc.copy_rows(e, &ddec_in, d, b.k)?;
        }
        self.model
            .backward(&denc, &f.enc_cache, Some(&mut self.grads))?;
        Ok(stats)
    }
}

/// Rows `rows` of `x` [T, H] as [rows.len(), H] (an embedding lookup into `x`).
fn gather(x: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(embedding::forward(&ids, x)?)
}

/// dx[rows[i]] += dy[i] (the gather's backward).
fn scatter_add(dx: &mut Tensor, rows: &[usize], dy: &Tensor) -> Result<()> {
    let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(embedding::backward(&ids, dy, dx)?)
}

#[cfg(test)]
#[path = "compressor_tests.rs"]
mod tests;
