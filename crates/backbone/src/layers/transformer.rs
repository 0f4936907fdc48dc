//! The decoder-only backbone: embedding → blocks → final norm, returning
//! hidden states. The LM head is not applied here: it is handed out as a
//! weight ([`Transformer::lm_head`]) to the fused losses, which never build
//! [tokens × vocab] logits.
//!
//! Input is token ids (extra ids ≥ V read the trainable extra rows) or ready
//! input embeddings (`inputs_embeds`, how the compression decoder receives
//! the encoder's memory states); backward always returns the gradient w.r.t.
//! the input embeddings, which is the residual stream's gradient at the bottom.
//!
//! Positions restart at 0 in every packed sequence and are derived from
//! `cu_seqlens`. RoPE tables are built on demand for the longest sequence seen
//! and shared by clones (a model configured for 128k positions should not
//! allocate 128k rows to embed 512-token passages).

use std::sync::{Arc, RwLock};

use llm2comp_tensor::ops::rope::RopeTable;
use llm2comp_tensor::{DType, Device, Result, Tensor, TensorError};

use super::block::{Block, BlockCache, BlockCall, BlockGrads};
use super::embedding::TokenEmbedding;
use super::lora::{Lora, LoraConfig, LoraTarget};
use super::rmsnorm::{RmsNorm, RmsNormCache};
use super::{Pass, sub_seed};
use crate::ModelConfig;

const OP: &str = "Transformer";

/// What a forward pass reads.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Token ids; ids ≥ the base vocabulary read the extra rows.
    Ids(&'a [u32]),
    /// Input embeddings [T, H] in the model's dtype and on its device, used as they are.
    Embeds(&'a Tensor),
}

/// Which tensors get gradient buffers (all others are frozen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trainable {
    /// Every LoRA adapter present.
    pub lora: bool,
    /// The extra embedding rows (memory tokens).
    pub extra_rows: bool,
    /// The final norm's weight.
    pub final_norm: bool,
    /// The base embedding table (dense [V, H] gradient; with tied embeddings
    /// this is also the LM head's gradient buffer for the fused losses).
    pub embedding: bool,
}

/// Gradient buffers of the trainable tensors, added into by backward.
#[derive(Debug, Clone)]
pub struct TransformerGrads {
    /// Per block: adapter gradients.
    pub blocks: Vec<BlockGrads>,
    /// The extra embedding rows' gradient [k, H].
    pub extra_rows: Option<Tensor>,
    /// The final norm weight's gradient [H].
    pub final_norm: Option<Tensor>,
    /// The embedding table's gradient [V, H].
    pub embedding: Option<Tensor>,
}

/// A trainable tensor and its gradient buffer, named as in the checkpoint.
#[derive(Debug)]
pub struct Param<'a> {
    /// Hugging Face-style name (`model.layers.3.self_attn.q_proj.lora_A.weight`, ...).
    pub name: String,
    /// The tensor, updated in place by an optimiser.
    pub value: &'a mut Tensor,
    /// Its gradient buffer.
    pub grad: &'a mut Tensor,
}

/// What [`Transformer::backward`] needs.
#[derive(Debug)]
pub struct TransformerCache {
    ids: Option<Vec<u32>>,
    cu_seqlens: Vec<u32>,
    positions: Vec<u32>,
    pass: Pass,
    rope: Arc<RopeTable>,
    /// Input of every block, then the final norm's input.
    inputs: Vec<Tensor>,
    /// Block activations (empty when the pass checkpoints).
    blocks: Vec<BlockCache>,
    norm: RmsNormCache,
}

impl TransformerCache {
    /// The token offsets of the packed batch.
    pub fn cu_seqlens(&self) -> &[u32] {
        &self.cu_seqlens
    }
}

/// Embedding, blocks, final norm and the LM head weight, over shared base weights.
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    embedding: TokenEmbedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Arc<Tensor>>,
    rope: RwLock<Option<Arc<RopeTable>>>,
}

impl Clone for Transformer {
    /// Shares every base weight (and the RoPE tables); adapters and extra rows are copied.
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            embedding: self.embedding.clone(),
            blocks: self.blocks.clone(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            rope: RwLock::new(self.rope.read().map(|r| r.clone()).unwrap_or(None)),
        }
    }
}

/// Positions 0..len of every sequence, after checking `cu_seqlens` covers `tokens`.
fn positions(cu_seqlens: &[u32], tokens: usize) -> Result<Vec<u32>> {
    if cu_seqlens.first() != Some(&0) || cu_seqlens.last().map(|&t| t as usize) != Some(tokens) {
        return Err(TensorError::invalid(
            OP,
            format!(
                "cu_seqlens must run from 0 to the {tokens} tokens, got {:?}..{:?}",
                cu_seqlens.first(),
                cu_seqlens.last()
            ),
        ));
    }
    let mut pos = Vec::with_capacity(tokens);
    for (i, w) in cu_seqlens.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(TensorError::invalid(
                OP,
                format!("cu_seqlens decreases at {}: {} after {}", i + 1, w[1], w[0]),
            ));
        }
        pos.extend(0..w[1] - w[0]);
    }
    Ok(pos)
}

impl Transformer {
    /// Assembles a model from its parts, checking them against `config`.
    pub fn from_parts(
        config: ModelConfig,
        embedding: Arc<Tensor>,
        blocks: Vec<Block>,
        final_norm: RmsNorm,
        lm_head: Option<Arc<Tensor>>,
    ) -> Result<Self> {
        let (v, h) = (config.vocab_size, config.hidden_size);
        embedding.expect_shape(OP, "embedding", &[v, h])?;
        if let Some(w) = &lm_head {
            w.expect_shape(OP, "lm_head", &[v, h])?;
            super::check_weight(OP, "lm_head", w)?;
        }
        final_norm.weight().expect_shape(OP, "final norm", &[h])?;
        if blocks.len() != config.num_layers {
            return Err(TensorError::invalid(
                OP,
                format!("{} blocks for {} layers", blocks.len(), config.num_layers),
            ));
        }
        Ok(Self {
            config,
            embedding: TokenEmbedding::new(embedding)?,
            blocks,
            norm: final_norm,
            lm_head,
            rope: RwLock::new(None),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device holding the weights (all on one).
    pub fn device(&self) -> Device {
        self.embedding.table().device()
    }

    /// The activations' dtype: the embedding table's (f32, or bf16 on CUDA).
    pub fn dtype(&self) -> DType {
        self.embedding.table().dtype()
    }

    /// The token embedding (base table and extra rows).
    pub fn embedding(&self) -> &TokenEmbedding {
        &self.embedding
    }

    /// The token embedding, mutably.
    pub fn embedding_mut(&mut self) -> &mut TokenEmbedding {
        &mut self.embedding
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks, mutably (adapters are attached per projection).
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// The final norm.
    pub fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// The final norm, mutably.
    pub fn final_norm_mut(&mut self) -> &mut RmsNorm {
        &mut self.norm
    }

    /// The LM head [V, H]: `lm_head.weight`, or the embedding table when tied.
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head
            .as_deref()
            .unwrap_or_else(|| self.embedding.table())
    }

    /// The LM head as a shared handle: a frozen copy that stays the original
    /// even when the embedding table is later trained (copy-on-write).
    pub fn lm_head_shared(&self) -> Arc<Tensor> {
        self.lm_head
            .clone()
            .unwrap_or_else(|| self.embedding.table().clone())
    }

    /// Whether the LM head is the embedding table.
    pub fn is_tied(&self) -> bool {
        self.lm_head.is_none()
    }

    /// Sets (or removes) the extra embedding rows [k, H] read for ids V..V+k.
    pub fn set_extra_rows(&mut self, rows: Option<Tensor>) -> Result<()> {
        self.embedding.set_extra(rows)
    }

    /// Attaches a fresh adapter to every targeted projection of every block,
    /// seeded per (layer, projection) from `seed`.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        for (l, block) in self.blocks.iter_mut().enumerate() {
            for &t in &cfg.targets {
                block
                    .linear_mut(t)
                    .add_lora(cfg, sub_seed(seed, l, t.slot()))?;
            }
        }
        Ok(())
    }

    /// A copy of every adapter, by layer and projection.
    pub fn loras(&self) -> Vec<(usize, LoraTarget, Lora)> {
        let mut out = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            for t in LoraTarget::ALL {
                if let Some(lo) = block.linear(t).lora() {
                    out.push((l, t, lo.clone()));
                }
            }
        }
        out
    }

    /// Replaces each adapter by `earlier`'s adapter of the same layer and
    /// projection stacked before it ([`Lora::stack`]), so that on the base
    /// weights the model computes what it computes with `earlier` merged
    /// into them. Both must cover the same projections.
    pub fn stack_loras(&mut self, earlier: &[(usize, LoraTarget, Lora)]) -> Result<()> {
        let mine = self.loras();
        let key = |v: &[(usize, LoraTarget, Lora)]| -> Vec<(usize, LoraTarget)> {
            v.iter().map(|(l, t, _)| (*l, *t)).collect()
        };
        if key(&mine) != key(earlier) {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "cannot stack adapters on different projections ({} earlier, {} current)",
                    earlier.len(),
                    mine.len()
                ),
            ));
        }
        for ((l, t, cur), (_, _, old)) in mine.iter().zip(earlier) {
            self.blocks[*l]
                .linear_mut(*t)
                .set_lora(Lora::stack(&[old, cur])?)?;
        }
        Ok(())
    }

    /// Merges every adapter into its base weight (copying weights shared with
    /// other models) and removes the adapters.
    pub fn merge_lora(&mut self) -> Result<()> {
        for block in &mut self.blocks {
            for t in LoraTarget::ALL {
                block.linear_mut(t).merge_lora()?;
            }
        }
        Ok(())
    }

    /// RoPE tables covering positions 0..needed, grown (to a power of two) when too short.
    fn rope(&self, needed: usize) -> Result<Arc<RopeTable>> {
        let poisoned = || TensorError::invalid(OP, "RoPE table lock poisoned");
        if let Some(t) = self.rope.read().map_err(|_| poisoned())?.as_ref()
            && t.max_positions() >= needed
        {
            return Ok(t.clone());
        }
        let mut slot = self.rope.write().map_err(|_| poisoned())?;
        let have = slot.as_ref().map_or(0, |t| t.max_positions());
        if have >= needed {
            return Ok(slot.clone().expect("have > 0"));
        }
        let size = needed.next_power_of_two().max(64);
        let t = Arc::new(RopeTable::new(&self.config.rope, size, self.device())?);
        *slot = Some(t.clone());
        Ok(t)
    }

    fn embed_input(&self, input: Input) -> Result<(Tensor, Option<Vec<u32>>)> {
        match input {
            Input::Ids(ids) => Ok((self.embedding.forward(ids)?, Some(ids.to_vec()))),
            Input::Embeds(x) => {
                x.expect_dtype(OP, "inputs_embeds", self.dtype())?;
                if x.device() != self.device() {
                    return Err(TensorError::Device {
                        op: OP,
                        expected: self.device(),
                        found: x.device(),
                    });
                }
                let t = x.dims2(OP, "inputs_embeds")?.0;
                x.expect_shape(OP, "inputs_embeds", &[t, self.config.hidden_size])?;
                Ok((x.try_clone()?, None))
            }
        }
    }

    /// Hidden states [T, H] after the final norm, and what backward needs.
    pub fn forward(
        &self,
        input: Input,
        cu_seqlens: &[u32],
        pass: &Pass,
    ) -> Result<(Tensor, TransformerCache)> {
        let (x, ids) = self.embed_input(input)?;
        let positions = positions(cu_seqlens, x.shape()[0])?;
        let longest = cu_seqlens
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        let rope = self.rope(longest as usize)?;
        let keys = pass.seq_keys(cu_seqlens)?;
        let mut inputs = Vec::with_capacity(self.blocks.len() + 1);
        let mut caches = Vec::new();
        let mut x = x;
        for (layer, block) in self.blocks.iter().enumerate() {
            let call = BlockCall {
                pass,
                keys: keys.as_ref(),
                layer,
                positions: &positions,
                cu_seqlens,
                rope: &rope,
            };
            let (y, cache) = block.forward(&x, &call)?;
            if !pass.checkpoint {
                caches.push(cache);
            }
            inputs.push(std::mem::replace(&mut x, y));
        }
        let (hidden, norm) = self.norm.forward(&x)?;
        inputs.push(x);
        Ok((
            hidden,
            TransformerCache {
                ids,
                cu_seqlens: cu_seqlens.to_vec(),
                positions,
                pass: pass.clone(),
                rope,
                inputs,
                blocks: caches,
                norm,
            },
        ))
    }

    /// Hidden states [T, H] without keeping activations (embedding, evaluation).
    pub fn infer(&self, input: Input, cu_seqlens: &[u32], pass: &Pass) -> Result<Tensor> {
        let (mut x, _) = self.embed_input(input)?;
        let positions = positions(cu_seqlens, x.shape()[0])?;
        let longest = cu_seqlens
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        let rope = self.rope(longest as usize)?;
        let keys = pass.seq_keys(cu_seqlens)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let call = BlockCall {
                pass,
                keys: keys.as_ref(),
                layer,
                positions: &positions,
                cu_seqlens,
                rope: &rope,
            };
            x = block.infer(x, &call)?;
        }
        Ok(self.norm.forward(&x)?.0)
    }

    /// The gradient w.r.t. the input embeddings [T, H] for dhidden = dL/d(hidden states).
    /// Adds into `grads` where it holds buffers (adapters, final norm, and, for
    /// id input, the embedding table and extra rows).
    pub fn backward(
        &self,
        dhidden: &Tensor,
        cache: &TransformerCache,
        mut grads: Option<&mut TransformerGrads>,
    ) -> Result<Tensor> {
        let last = cache
            .inputs
            .last()
            .ok_or_else(|| TensorError::invalid(OP, "the cache holds no activations"))?;
        dhidden.expect_shape(OP, "dhidden", last.shape())?;
        if let Some(g) = &grads
            && g.blocks.len() != self.blocks.len()
        {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "gradients for {} blocks, model has {}",
                    g.blocks.len(),
                    self.blocks.len()
                ),
            ));
        }
        let dnorm = grads.as_deref_mut().and_then(|g| g.final_norm.as_mut());
        let mut dx = self.norm.backward(dhidden, last, &cache.norm, dnorm)?;
        let keys = cache.pass.seq_keys(&cache.cu_seqlens)?;
        for (layer, block) in self.blocks.iter().enumerate().rev() {
            let call = BlockCall {
                pass: &cache.pass,
                keys: keys.as_ref(),
                layer,
                positions: &cache.positions,
                cu_seqlens: &cache.cu_seqlens,
                rope: &cache.rope,
            };
            let x = &cache.inputs[layer];
            let recomputed;
            let bc = if cache.pass.checkpoint {
                recomputed = block.forward(x, &call)?.1;
                &recomputed
            } else {
                &cache.blocks[layer]
            };
            let bg = grads.as_deref_mut().map(|g| &mut g.blocks[layer]);
            dx = block.backward(&dx, x, bc, &call, bg)?;
        }
        if let (Some(ids), Some(g)) = (&cache.ids, grads) {
            self.embedding
                .backward(ids, &dx, g.embedding.as_mut(), g.extra_rows.as_mut())?;
        }
        Ok(dx)
    }

    /// Zeroed gradient buffers for the tensors `trainable` selects.
    pub fn zero_grads(&self, trainable: &Trainable) -> TransformerGrads {
        // f32 buffers beside each tensor, on its device.
        let z = |t: &Tensor| Tensor::zeros(t.shape(), DType::F32, t.device());
        TransformerGrads {
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    let mut g = BlockGrads::default();
                    if trainable.lora {
                        for t in LoraTarget::ALL {
                            *g.get_mut(t) = b.linear(t).lora().map(|l| l.zero_grads());
                        }
                    }
                    g
                })
                .collect(),
            extra_rows: self
                .embedding
                .extra()
                .filter(|_| trainable.extra_rows)
                .map(z),
            final_norm: trainable.final_norm.then(|| z(self.norm.weight())),
            embedding: trainable.embedding.then(|| z(self.embedding.table())),
        }
    }

    /// Every tensor with a gradient buffer in `grads`, paired with it, for an optimiser.
    /// Training the final norm or the embedding table copies it first if another
    /// model shares it, so a decoder holding the originals is unaffected.
    pub fn params<'a>(&'a mut self, grads: &'a mut TransformerGrads) -> Vec<Param<'a>> {
        let mut out = Vec::new();
        for (l, (block, bg)) in self.blocks.iter_mut().zip(&mut grads.blocks).enumerate() {
            let BlockGrads { attn, mlp } = bg;
            let slots = [
                (LoraTarget::Q, &mut attn.q),
                (LoraTarget::K, &mut attn.k),
                (LoraTarget::V, &mut attn.v),
                (LoraTarget::O, &mut attn.o),
                (LoraTarget::Gate, &mut mlp.gate),
                (LoraTarget::Up, &mut mlp.up),
                (LoraTarget::Down, &mut mlp.down),
            ];
            let super::attention::Attention { q, k, v, o, .. } = &mut block.attn;
            let super::mlp::Mlp { gate, up, down } = &mut block.mlp;
            let linears = [q, k, v, o, gate, up, down];
            for ((t, g), lin) in slots.into_iter().zip(linears) {
                let kind = if matches!(t, LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down) {
                    "mlp"
                } else {
                    "self_attn"
                };
                if let (Some(g), Some(lora)) = (g.as_mut(), lin.lora_mut()) {
                    let base = format!("model.layers.{l}.{kind}.{}", t.module_name());
                    out.push(Param {
                        name: format!("{base}.lora_A.weight"),
                        value: &mut lora.a,
                        grad: &mut g.a,
                    });
                    out.push(Param {
                        name: format!("{base}.lora_B.weight"),
                        value: &mut lora.b,
                        grad: &mut g.b,
                    });
                }
            }
        }
        let (table, extra) = self.embedding.parts_mut(grads.embedding.is_some());
        if let (Some(g), Some(rows)) = (grads.extra_rows.as_mut(), extra) {
            out.push(Param {
                name: "model.embed_tokens.extra_rows".into(),
                value: rows,
                grad: g,
            });
        }
        if let Some(g) = grads.final_norm.as_mut() {
            out.push(Param {
                name: "model.norm.weight".into(),
                value: self.norm.weight_mut(),
                grad: g,
            });
        }
        if let (Some(g), Some(table)) = (grads.embedding.as_mut(), table) {
            out.push(Param {
                name: "model.embed_tokens.weight".into(),
                value: table,
                grad: g,
            });
        }
        out
    }
}

impl TransformerGrads {
    /// Sets every buffer to zero (before accumulating a new step).
    pub fn zero(&mut self) {
        let z = |t: &mut Tensor| *t = Tensor::zeros(t.shape(), DType::F32, t.device());
        for b in &mut self.blocks {
            for t in LoraTarget::ALL {
                if let Some(g) = b.get_mut(t) {
                    g.zero();
                }
            }
        }
        for t in [
            &mut self.extra_rows,
            &mut self.final_norm,
            &mut self.embedding,
        ]
        .into_iter()
        .flatten()
        {
            z(t);
        }
    }
}

#[cfg(test)]
#[path = "transformer_tests.rs"]
pub(crate) mod tests;
