//! The compression pretext as a `llm2comp-train` [`Task`]: each micro-batch
//! is drawn from the corpus by (seed, step, micro), packed, and run through
//! [`Compressor::step`] with adapter dropout seeded the same way. Nothing
//! else carries state between steps, which is what makes a resumed run
//! bit-identical to an uninterrupted one.

use std::path::Path;

use llm2comp_backbone::{Param, Transformer};
use llm2comp_train::{DataPosition, MicroStats, Task, TrainError};
use serde_json::{Map, Value, json};

use crate::batch::pack;
use crate::seeds::{self, Stream};
use crate::{Compressor, Corpus};

/// Writes the user-facing outputs (adapters) of a model into a directory.
pub type Exporter = Box<dyn FnMut(&Transformer, &Path) -> Result<(), TrainError>>;

/// The compression model, its corpus and the batch settings.
pub struct CompressionTask {
    comp: Compressor,
    corpus: Corpus,
    seed: u64,
    batch_size: usize,
    grad_accum: usize,
    /// Extra settings recorded in checkpoints (model path, data file, ...).
    info: Map<String, Value>,
    exporter: Option<Exporter>,
    batch_log: Option<(std::path::PathBuf, std::io::BufWriter<std::fs::File>)>,
    /// Steps drawn so far (the data position) and the seed they come from.
    position: DataPosition,
}

impl std::fmt::Debug for CompressionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressionTask")
            .field("comp", &self.comp)
            .field("corpus", &self.corpus.len())
            .field("seed", &self.seed)
            .field("batch_size", &self.batch_size)
            .field("grad_accum", &self.grad_accum)
            .finish_non_exhaustive()
    }
}

impl CompressionTask {
    /// A task drawing `batch_size` passages per micro-batch, `grad_accum`
    /// micro-batches per step, everything random derived from `seed`.
    pub fn new(
        comp: Compressor,
        corpus: Corpus,
        seed: u64,
        batch_size: usize,
        grad_accum: usize,
    ) -> Self {
        Self {
            comp,
            corpus,
            seed,
            batch_size,
            grad_accum,
            info: Map::new(),
            exporter: None,
            batch_log: None,
            position: DataPosition::new(seed, batch_size, grad_accum),
        }
    }

    /// Records `key = value` in the checkpointed configuration (a resume
    /// with a different value is refused).
    pub fn with_info(mut self, key: &str, value: Value) -> Self {
        self.info.insert(key.to_string(), value);
        self
    }

    /// Sets what [`Task::export`] writes (adapters in PEFT layout, say).
    pub fn with_exporter(mut self, exporter: Exporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// Appends every micro-batch's passages (ids and split) to `path` as a
    /// JSON line, so another implementation can replay exactly the same
    /// batches (the PyTorch reference step of `scripts/bench-pretrain.sh`).
    pub fn with_batch_log(mut self, path: &Path) -> Result<Self, TrainError> {
        let f = std::fs::File::create(path).map_err(|e| TrainError::io("create", path, e))?;
        self.batch_log = Some((path.to_path_buf(), std::io::BufWriter::new(f)));
        Ok(self)
    }

    /// The compressor.
    pub fn compressor(&self) -> &Compressor {
        &self.comp
    }

    /// The compressor, mutably.
    pub fn compressor_mut(&mut self) -> &mut Compressor {
        &mut self.comp
    }

    /// Consumes the task, returning the compressor.
    pub fn into_compressor(self) -> Compressor {
        self.comp
    }

    /// Optimiser steps in `epochs` passes over the corpus (the last step may
    /// reach into the next epoch to fill its batch).
    pub fn steps_for_epochs(&self, epochs: f64) -> u64 {
        self.position.steps_for_epochs(epochs, self.corpus.len())
    }
}

impl Task for CompressionTask {
    fn micro_step(
        &mut self,
        step: u64,
        micro: usize,
        grad_scale: f32,
    ) -> Result<MicroStats, TrainError> {
        let cfg = self.comp.config();
        let (objective, k) = (cfg.objective, cfg.memory_tokens);
        let samples = self
            .corpus
            .draw(
                self.seed,
                step,
                micro,
                self.grad_accum,
                self.batch_size,
                objective,
            )
            .map_err(TrainError::task)?;
        let b = pack(
            &samples,
            objective,
            self.comp.bos(),
            k,
            self.comp.base_vocab(),
        )
        .map_err(TrainError::task)?;
        if let Some((path, w)) = self.batch_log.as_mut() {
            use std::io::Write as _;
            let line = json!({
                "step": step,
                "micro": micro,
                "bos": self.comp.bos(),
                "k": k,
                "objective": objective.name(),
                "passages": samples
                    .iter()
                    .map(|s| json!({ "ids": s.ids, "split": s.split }))
                    .collect::<Vec<_>>(),
            });
            writeln!(w, "{line}")
                .and_then(|()| w.flush())
                .map_err(|e| TrainError::io("write", path.clone(), e))?;
        }
        self.position.drew(step);
        let dropout = seeds::derive(self.seed, Stream::Dropout, step, micro as u64);
        let s = self
            .comp
            .step(&b, Some(dropout), grad_scale)
            .map_err(TrainError::task)?;
        let mut extra = Map::new();
        extra.insert("forward_tokens".into(), json!(s.forward_tokens));
        Ok(MicroStats {
            loss: s.loss,
            tokens: s.text_tokens as u64,
            extra,
        })
    }

    fn params(&mut self) -> Vec<Param<'_>> {
        self.comp.params()
    }

    fn zero_grads(&mut self) {
        self.comp.zero_grads();
    }

    fn config(&self) -> Value {
        let c = self.comp.config();
        let stats = self.corpus.stats();
        let mut v = json!({
            "objective": c.objective.name(),
            "memory_tokens": c.memory_tokens,
            "lora": {
                "r": c.lora.r,
                "alpha": c.lora.alpha,
                "dropout": c.lora.dropout,
                "targets": c.lora.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
            },
            "train_embeddings": c.train_embeddings.name(),
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

    /// The data position and the random state, for the record: both are
    /// functions of (seed, step) — every draw is counter-based — so a resume
    /// needs only the step, and restoring checks the seed agrees.
    fn task_state(&self) -> Value {
        self.position.to_json(self.corpus.len())
    }

    fn restore_task_state(&mut self, state: &Value) -> Result<(), TrainError> {
        self.position.restore(state, "data order and random draws")
    }

    fn export(&mut self, dir: &Path) -> Result<(), TrainError> {
        match self.exporter.as_mut() {
            Some(e) => e(self.comp.model(), dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
