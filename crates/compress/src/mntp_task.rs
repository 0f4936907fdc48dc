//! MNTP as a `llm2comp-train` [`Task`]: the same corpus, data order,
//! checkpoints and resume as the compression task, each micro-batch's
//! passages corrupted by (seed, sample number) and run through
//! [`Mntp::step`] with adapter dropout seeded by (seed, step, micro).

use std::path::Path;

use llm2comp_backbone::Param;
use llm2comp_train::{DataPosition, MicroStats, Task, TrainError};
use serde_json::{Map, Value, json};

use crate::mntp::{MaskConfig, mask_batch};
use crate::seeds::{self, Stream};
use crate::{Corpus, Exporter, Mntp, Objective};

/// The MNTP model, its corpus, the masking and the batch settings.
pub struct MntpTask {
    step: Mntp,
    corpus: Corpus,
    mask: MaskConfig,
    bos: u32,
    seed: u64,
    batch_size: usize,
    grad_accum: usize,
    info: Map<String, Value>,
    exporter: Option<Exporter>,
    position: DataPosition,
}

impl std::fmt::Debug for MntpTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MntpTask")
            .field("step", &self.step)
            .field("corpus", &self.corpus.len())
            .field("mask", &self.mask)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl MntpTask {
    /// A task drawing `batch_size` passages (text ids; a corpus built for
    /// `rc` with no memory tokens) per micro-batch, `grad_accum` micro-batches
    /// per step.
    pub fn new(
        step: Mntp,
        corpus: Corpus,
        mask: MaskConfig,
        bos: u32,
        seed: u64,
        batch_size: usize,
        grad_accum: usize,
    ) -> Self {
        Self {
            step,
            corpus,
            mask,
            bos,
            seed,
            batch_size,
            grad_accum,
            info: Map::new(),
            exporter: None,
            position: DataPosition::new(seed, batch_size, grad_accum),
        }
    }

    /// Records `key = value` in the checkpointed configuration.
    pub fn with_info(mut self, key: &str, value: Value) -> Self {
        self.info.insert(key.to_string(), value);
        self
    }

    /// Sets what [`Task::export`] writes (a LoRA-only adapter).
    pub fn with_exporter(mut self, exporter: Exporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// The step (model and gradients).
    pub fn mntp(&self) -> &Mntp {
        &self.step
    }

    /// Optimiser steps in `epochs` passes over the corpus.
    pub fn steps_for_epochs(&self, epochs: f64) -> u64 {
        self.position.steps_for_epochs(epochs, self.corpus.len())
    }
}

impl Task for MntpTask {
    fn micro_step(
        &mut self,
        step: u64,
        micro: usize,
        grad_scale: f32,
    ) -> Result<MicroStats, TrainError> {
        let samples = self
            .corpus
            .draw(
                self.seed,
                step,
                micro,
                self.grad_accum,
                self.batch_size,
                Objective::Rc,
            )
            .map_err(TrainError::task)?;
        // Sample numbers as `seeds::draw_indices` counts them: a passage's
        // corruption depends on its place in the data stream alone.
        let first = (step * self.grad_accum as u64 + micro as u64) * self.batch_size as u64;
        let slots: Vec<u64> = (first..first + samples.len() as u64).collect();
        let texts: Vec<&[u32]> = samples.iter().map(|s| s.ids.as_slice()).collect();
        let b = mask_batch(&texts, &slots, self.bos, &self.mask, self.seed)
            .map_err(TrainError::task)?;
        self.position.drew(step);
        let dropout = seeds::derive(self.seed, Stream::Dropout, step, micro as u64);
        let loss = self
            .step
            .step(&b, Some(dropout), grad_scale)
            .map_err(TrainError::task)?;
        let mut extra = Map::new();
        extra.insert("predicted".into(), json!(b.rows.len()));
        Ok(MicroStats {
            loss,
            tokens: b.text_tokens as u64,
            extra,
        })
    }

    fn params(&mut self) -> Vec<Param<'_>> {
        self.step.params()
    }

    fn zero_grads(&mut self) {
        self.step.zero_grads();
    }

    fn config(&self) -> Value {
        let stats = self.corpus.stats();
        let mut v = json!({
            "objective": "mntp",
            "memory_tokens": 0,
            "mask_rate": self.mask.rate,
            "mask_id": self.mask.mask_id,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "corpus": { "passages": stats.kept, "tokens": stats.tokens },
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.info.clone());
        }
        v
    }

    fn task_state(&self) -> Value {
        self.position.to_json(self.corpus.len())
    }

    fn restore_task_state(&mut self, state: &Value) -> Result<(), TrainError> {
        self.position.restore(state, "data order and masks")
    }

    fn export(&mut self, dir: &Path) -> Result<(), TrainError> {
        match self.exporter.as_mut() {
            Some(e) => e(self.step.model(), dir),
            None => Ok(()),
        }
    }
}
