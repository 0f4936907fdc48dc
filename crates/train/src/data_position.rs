//! The data position a task records in its checkpoints. Tasks draw every
//! micro-batch from (seed, step, micro) with counter-based randomness, so the
//! position is a function of the steps drawn; it is stored for the record
//! (samples, epoch, place in the epoch) and a resume checks the seed agrees.

use serde_json::{Value, json};

use crate::TrainError;

/// Where a counter-based task is in its data: steps drawn so far, at
/// `batch_size` × `grad_accum` samples a step, from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPosition {
    /// The run's seed (data order and every random draw derive from it).
    pub seed: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Steps whose micro-batches have been drawn.
    pub steps_drawn: u64,
}

impl DataPosition {
    /// A position at the start of the data.
    pub fn new(seed: u64, batch_size: usize, grad_accum: usize) -> Self {
        Self {
            seed,
            batch_size,
            grad_accum,
            steps_drawn: 0,
        }
    }

    /// Records that step `step` (0-based) has been drawn.
    pub fn drew(&mut self, step: u64) {
        self.steps_drawn = step + 1;
    }

    fn per_step(&self) -> u64 {
        (self.grad_accum * self.batch_size) as u64
    }

    /// Optimiser steps in `epochs` passes over `len` items (at least one;
    /// the last step may reach into the next epoch to fill its batch).
    pub fn steps_for_epochs(&self, epochs: f64, len: usize) -> u64 {
        ((epochs * len as f64) / self.per_step().max(1) as f64)
            .ceil()
            .max(1.0) as u64
    }

    /// The checkpoint record for a data set of `len` items.
    pub fn to_json(&self, len: usize) -> Value {
        let samples = self.steps_drawn * self.per_step();
        let n = len.max(1) as u64;
        json!({
            "samples_drawn": samples,
            "epoch": samples / n,
            "position_in_epoch": samples % n,
            "rng": { "kind": "counter-based (seed, step, micro)", "seed": self.seed },
        })
    }

    /// Restores from a record of [`DataPosition::to_json`], refusing one made
    /// from another seed; `what` names what the seed drives, for the message.
    pub fn restore(&mut self, state: &Value, what: &str) -> Result<(), TrainError> {
        let seed = state["rng"]["seed"].as_u64();
        if let Some(s) = seed.filter(|&s| s != self.seed) {
            return Err(TrainError::Config(format!(
                "the checkpoint's {what} come from seed {s}, this run's --seed is {}",
                self.seed
            )));
        }
        self.steps_drawn = state["samples_drawn"].as_u64().unwrap_or(0) / self.per_step().max(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_another_seed() {
        let mut p = DataPosition::new(7, 4, 2);
        p.drew(4);
        let v = p.to_json(12);
        assert_eq!(v["samples_drawn"], 40);
        assert_eq!(
            (v["epoch"].as_u64(), v["position_in_epoch"].as_u64()),
            (Some(3), Some(4))
        );
        let mut q = DataPosition::new(7, 4, 2);
        q.restore(&v, "draws").unwrap();
        assert_eq!(q, p);
        let e = DataPosition::new(8, 4, 2).restore(&v, "draws").unwrap_err();
        assert!(
            e.to_string().contains("seed 7") && e.to_string().contains("--seed is 8"),
            "{e}"
        );
    }
}
