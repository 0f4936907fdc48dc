//! The contrastive stages as a `llm2comp-train` [`Task`]: each micro-batch's
//! items are drawn by (seed, step, micro) exactly as the compression corpus
//! draws passages (`seeds::draw_indices`), and every text's dropout seed by
//! (seed, step, micro, role, index); nothing else carries state between
//! steps, so a resumed run is bit-identical to an uninterrupted one.

use std::path::Path;

use llm2comp_backbone::Param;
use llm2comp_compress::Exporter;
use llm2comp_compress::seeds;
use llm2comp_train::{DataPosition, MicroStats, Task, TrainError};
use serde_json::{Map, Value, json};

use crate::data::Triple;
use crate::{ContrastBatch, ContrastData, Encoder, batch};

/// The encoder, its data and the batch settings.
pub struct ContrastTask {
    enc: Encoder,
    data: ContrastData,
    seed: u64,
    batch_size: usize,
    grad_accum: usize,
    info: Map<String, Value>,
    exporter: Option<Exporter>,
    position: DataPosition,
}

impl std::fmt::Debug for ContrastTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContrastTask")
            .field("enc", &self.enc)
            .field("data", &self.data.len())
            .field("seed", &self.seed)
            .field("batch_size", &self.batch_size)
            .field("grad_accum", &self.grad_accum)
            .finish_non_exhaustive()
    }
}

impl ContrastTask {
    /// A task drawing `batch_size` items per micro-batch, `grad_accum`
    /// micro-batches per step, everything random derived from `seed`.
    pub fn new(
        enc: Encoder,
        data: ContrastData,
        seed: u64,
        batch_size: usize,
        grad_accum: usize,
    ) -> Self {
        Self {
            enc,
            data,
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

    /// Sets what [`Task::export`] writes (adapters).
    pub fn with_exporter(mut self, exporter: Exporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.enc
    }

    /// Consumes the task, returning the encoder.
    pub fn into_encoder(self) -> Encoder {
        self.enc
    }

    /// The micro-batch `micro` of step `step`.
    pub fn batch(&self, step: u64, micro: usize) -> crate::Result<ContrastBatch> {
        let idx = seeds::draw_indices(
            self.seed,
            step,
            micro,
            self.grad_accum,
            self.batch_size,
            self.data.len(),
        );
        let at = self.enc.uses_dropout().then_some((self.seed, step, micro));
        match &self.data {
            ContrastData::Unsupervised(p) => {
                let refs: Vec<&[u32]> = idx.iter().map(|&(_, i)| p[i].as_slice()).collect();
                batch::simcse(&refs, at)
            }
            ContrastData::Supervised(t) => {
                let refs: Vec<&Triple> = idx.iter().map(|&(_, i)| &t[i]).collect();
                batch::supervised(&refs, at)
            }
        }
    }
}

impl Task for ContrastTask {
    fn micro_step(
        &mut self,
        step: u64,
        micro: usize,
        grad_scale: f32,
    ) -> Result<MicroStats, TrainError> {
        let b = self.batch(step, micro).map_err(TrainError::task)?;
        self.position.drew(step);
        let loss = self.enc.step(&b, grad_scale).map_err(TrainError::task)?;
        let tokens: usize = b.texts.iter().map(Vec::len).sum();
        let mut extra = Map::new();
        extra.insert("texts".into(), json!(b.texts.len()));
        Ok(MicroStats {
            loss,
            tokens: tokens as u64,
            extra,
        })
    }

    fn params(&mut self) -> Vec<Param<'_>> {
        self.enc.params()
    }

    fn zero_grads(&mut self) {
        self.enc.zero_grads();
    }

    fn config(&self) -> Value {
        let c = self.enc.config();
        let mut v = json!({
            "mode": self.data.mode(),
            "temperature": c.temperature,
            "attn_dropout": c.attn_dropout,
            "hidden_dropout": c.hidden_dropout,
            "mini_batch": c.mini_batch,
            "memory_tokens": self.enc.memory_tokens(),
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "examples": self.data.len(),
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.info.clone());
        }
        v
    }

    /// The data position (a function of the step) and the seed, for the record.
    fn task_state(&self) -> Value {
        self.position.to_json(self.data.len())
    }

    fn restore_task_state(&mut self, state: &Value) -> Result<(), TrainError> {
        self.position.restore(state, "data order and dropout")
    }

    fn export(&mut self, dir: &Path) -> Result<(), TrainError> {
        match self.exporter.as_mut() {
            Some(e) => e(self.enc.model(), dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
