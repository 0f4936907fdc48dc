//! Stage chaining (METHOD.md): each stage starts from the previous stage's
//! model with its LoRA folded into the weights, plus a fresh LoRA of the
//! same shape; the memory rows carry over and stay trainable. Merging in
//! memory keeps one frozen copy of the (now stage-adapted) base and trains
//! a new low-rank update on top, exactly as merging and reloading would.

use std::path::Path;

use llm2comp_backbone::{AdapterMeta, LoraConfig, Transformer, load_adapter};
use llm2comp_compress::seeds::{self, Stream};

use crate::Result;

/// Loads the adapter in `dir` onto `model` (a freshly loaded base), merges
/// its LoRA into the weights and attaches a fresh LoRA of the same rank,
/// alpha and targets with `lora_dropout`, seeded from `seed`. Returns the
/// previous stage's metadata and the new adapters' configuration.
pub fn chain_stage(
    model: &mut Transformer,
    dir: &Path,
    lora_dropout: f32,
    seed: u64,
) -> Result<(AdapterMeta, LoraConfig)> {
    let meta = load_adapter(dir, model)?;
    let mut cfg = meta.lora_config(dir)?;
    cfg.dropout = lora_dropout;
    cfg.validate()?;
    model.merge_lora()?;
    model.add_lora(&cfg, seeds::derive(seed, Stream::LoraInit, 0, 0))?;
    Ok((meta, cfg))
}
