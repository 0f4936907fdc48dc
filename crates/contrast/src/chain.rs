//! Stage chaining (METHOD.md): each stage starts from the previous stage's
//! model with its LoRA folded into the weights, plus a fresh LoRA of the
//! same shape; the memory rows carry over and stay trainable. Merging in
//! memory keeps one frozen copy of the (now stage-adapted) base and trains
//! a new low-rank update on top, exactly as merging and reloading would.
//!
//! The sum of two low-rank updates is itself low-rank, so a stage's result
//! is saved as one adapter over the original base: the previous adapter's
//! factors stacked with the new ones (`Transformer::stack_loras`, rank r₁ +
//! r₂). Every stage's output thus loads alone, in `embed`, `merge` or PEFT,
//! with no chain of directories to follow.

use std::path::Path;

use llm2comp_backbone::{
    AdapterMeta, Lora, LoraConfig, LoraTarget, Transformer, load_adapter, save_adapter,
};
use llm2comp_compress::seeds::{self, Stream};

use crate::Result;

/// What [`chain_stage`] loaded and attached.
#[derive(Debug, Clone)]
pub struct ChainedStage {
    /// The previous stage's `llm2comp.json`.
    pub meta: AdapterMeta,
    /// The fresh adapters' configuration (the previous rank, alpha and
    /// targets, with the new dropout).
    pub lora: LoraConfig,
    /// The previous stage's adapters as loaded (before merging), to stack
    /// under the new ones when this stage is saved.
    pub earlier: Vec<(usize, LoraTarget, Lora)>,
}

impl ChainedStage {
    /// The LoRA settings of the stacked adapter this stage saves: rank
    /// r_prev + r, and alpha giving the new adapters' scale alpha / r.
    pub fn stacked_lora(&self) -> LoraConfig {
        let prev = self.earlier.first().map_or(0, |(_, _, l)| l.rank());
        let r = prev + self.lora.r;
        LoraConfig {
            r,
            alpha: self.lora.alpha / self.lora.r as f32 * r as f32,
            ..self.lora.clone()
        }
    }
}

impl ChainedStage {
    /// Saves this stage's `model` into `dir` as one adapter over the
    /// original base: its adapters stacked on the earlier ones, the memory
    /// rows (and the loaded table when the parent trained all embeddings),
    /// and an `llm2comp.json` naming `stage`, `objective` and `parent`.
    pub fn save(
        &self,
        dir: &Path,
        model: &Transformer,
        stage: &str,
        objective: &str,
        parent: &str,
    ) -> Result<()> {
        let mut stacked = model.clone();
        stacked.stack_loras(&self.earlier)?;
        let mut meta = AdapterMeta::new(
            self.meta.base_model.clone(),
            &stacked,
            self.meta.memory_tokens,
            &self.stacked_lora(),
            self.meta.train_embeddings,
        );
        meta.lora.stage_r = Some(self.lora.r);
        meta.max_length = self.meta.max_length;
        meta.stage = Some(stage.to_string());
        meta.objective = Some(objective.to_string());
        meta.parent = Some(parent.to_string());
        save_adapter(dir, &stacked, &meta)?;
        Ok(())
    }
}

/// Loads the adapter in `dir` onto `model` (a freshly loaded base), merges
/// its LoRA into the weights and attaches a fresh LoRA of the same rank,
/// alpha and targets with `lora_dropout`, seeded from `seed`.
pub fn chain_stage(
    model: &mut Transformer,
    dir: &Path,
    lora_dropout: f32,
    seed: u64,
) -> Result<ChainedStage> {
    let meta = load_adapter(dir, model)?;
    let mut cfg = meta.lora_config(dir)?;
    // A stacked adapter (an earlier chained stage) has rank r_1 + r_2 + ..;
    // the fresh one takes the rank of one stage, which its meta records.
    if let Some(r) = meta.lora.stage_r.filter(|&r| r > 0 && r < cfg.r) {
        cfg.alpha = cfg.alpha / cfg.r as f32 * r as f32;
        cfg.r = r;
    }
    cfg.dropout = lora_dropout;
    cfg.validate()?;
    let earlier = model.loras();
    model.merge_lora()?;
    model.add_lora(&cfg, seeds::derive(seed, Stream::LoraInit, 0, 0))?;
    Ok(ChainedStage {
        meta,
        lora: cfg,
        earlier,
    })
}
