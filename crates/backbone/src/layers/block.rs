//! One pre-norm transformer block: x1 = x + attn(norm1(x)); y = x1 + mlp(norm2(x1)).
//!
//! The residual stream's gradient passes straight through both additions, so
//! backward starts dx as dy and adds each branch's input gradient into it.
//! Dropout seeds are derived here per (layer, projection) from the pass seed,
//! so every mask in the model is distinct yet reproducible in backward.
//! Hidden dropout masks each branch's output before its residual addition;
//! backward applies the same mask to the branch's share of the gradient.

use llm2comp_tensor::ops::dropout::{self, DropoutMask, SeqKeys};
use llm2comp_tensor::ops::residual;
use llm2comp_tensor::ops::rope::RopeTable;
use llm2comp_tensor::{Result, Tensor};

use super::attention::{Attention, AttentionCache, AttentionCall, AttentionGrads};
use super::linear::{Linear, LinearCall};
use super::lora::{LoraGrads, LoraTarget};
use super::mlp::{Mlp, MlpCache, MlpCall, MlpGrads};
use super::rmsnorm::{RmsNorm, RmsNormCache};
use super::{Pass, sub_seed};

/// Attention and MLP with their pre-norms.
#[derive(Debug, Clone)]
pub struct Block {
    /// input_layernorm.
    pub attn_norm: RmsNorm,
    /// self_attn.
    pub attn: Attention,
    /// post_attention_layernorm.
    pub mlp_norm: RmsNorm,
    /// mlp.
    pub mlp: Mlp,
}

/// The batch-level inputs every block of one pass shares.
#[derive(Debug, Clone)]
pub struct BlockCall<'a> {
    /// The pass's mask, LoRA switch and dropout seed.
    pub pass: &'a Pass,
    /// The pass's per-sequence dropout streams over this call (`Pass::seq_keys`).
    pub keys: Option<&'a SeqKeys>,
    /// This block's index (for distinct dropout masks).
    pub layer: usize,
    /// Each token's position.
    pub positions: &'a [u32],
    /// B + 1 token offsets.
    pub cu_seqlens: &'a [u32],
    /// The model's RoPE tables.
    pub rope: &'a RopeTable,
}

/// Activations of one block (its input x is kept by the caller).
#[derive(Debug, Clone)]
pub struct BlockCache {
    n1: Tensor,
    norm1: RmsNormCache,
    attn: AttentionCache,
    x1: Tensor,
    n2: Tensor,
    norm2: RmsNormCache,
    mlp: MlpCache,
}

/// Adapter gradients of one block.
#[derive(Debug, Clone, Default)]
pub struct BlockGrads {
    /// Attention projections' adapters.
    pub attn: AttentionGrads,
    /// MLP projections' adapters.
    pub mlp: MlpGrads,
}

impl BlockGrads {
    /// The adapter-gradient buffer of projection `target`.
    pub fn get_mut(&mut self, target: LoraTarget) -> &mut Option<LoraGrads> {
        use LoraTarget::*;
        match target {
            Q => &mut self.attn.q,
            K => &mut self.attn.k,
            V => &mut self.attn.v,
            O => &mut self.attn.o,
            Gate => &mut self.mlp.gate,
            Up => &mut self.mlp.up,
            Down => &mut self.mlp.down,
        }
    }
}

/// Slot of the attention-probability mask among a layer's seeds (targets use 0..7).
const ATTN_DROPOUT_SLOT: u64 = 100;
/// Slots of the hidden-dropout masks on the attention and MLP outputs.
const ATTN_OUT_DROPOUT_SLOT: u64 = 101;
const MLP_OUT_DROPOUT_SLOT: u64 = 102;

impl BlockCall<'_> {
    fn linear(&self, target: LoraTarget) -> LinearCall<'_> {
        LinearCall {
            lora: self.pass.lora,
            dropout_keys: self.keys,
            dropout_seed: self
                .pass
                .dropout_seed
                .map(|s| sub_seed(s, self.layer, target.slot())),
        }
    }

    fn attention(&self) -> AttentionCall<'_> {
        use LoraTarget::*;
        let dropout = match self.pass.dropout_seed {
            Some(s) if self.pass.attn_dropout > 0.0 => Some(self.mask(
                self.pass.attn_dropout,
                sub_seed(s, self.layer, ATTN_DROPOUT_SLOT),
            )),
            _ => None,
        };
        AttentionCall {
            positions: self.positions,
            cu_seqlens: self.cu_seqlens,
            rope: self.rope,
            causal: self.pass.causal,
            dropout,
            proj: [
                self.linear(Q),
                self.linear(K),
                self.linear(V),
                self.linear(O),
            ],
        }
    }

    /// The hidden-dropout mask of the branch in `slot`, when there is one.
    fn hidden_mask(&self, slot: u64) -> Option<DropoutMask> {
        match self.pass.dropout_seed {
            Some(s) if self.pass.hidden_dropout > 0.0 => {
                Some(self.mask(self.pass.hidden_dropout, sub_seed(s, self.layer, slot)))
            }
            _ => None,
        }
    }

    /// A mask of rate `p` on stream `seed`, per sequence when the pass is keyed.
    fn mask(&self, p: f32, seed: u64) -> DropoutMask {
        DropoutMask::new(p, seed, 0).with_keys(self.keys.cloned())
    }

    fn mlp(&self) -> MlpCall<'_> {
        MlpCall {
            gate: self.linear(LoraTarget::Gate),
            up: self.linear(LoraTarget::Up),
            down: self.linear(LoraTarget::Down),
        }
    }
}

impl Block {
    /// The projection `target` names.
    pub fn linear(&self, target: LoraTarget) -> &Linear {
        use LoraTarget::*;
        match target {
            Q => &self.attn.q,
            K => &self.attn.k,
            V => &self.attn.v,
            O => &self.attn.o,
            Gate => &self.mlp.gate,
            Up => &self.mlp.up,
            Down => &self.mlp.down,
        }
    }

    /// The projection `target` names, mutably.
    pub fn linear_mut(&mut self, target: LoraTarget) -> &mut Linear {
        use LoraTarget::*;
        match target {
            Q => &mut self.attn.q,
            K => &mut self.attn.k,
            V => &mut self.attn.v,
            O => &mut self.attn.o,
            Gate => &mut self.mlp.gate,
            Up => &mut self.mlp.up,
            Down => &mut self.mlp.down,
        }
    }

    /// y [T, H] for x [T, H].
    pub fn forward(&self, x: &Tensor, call: &BlockCall) -> Result<(Tensor, BlockCache)> {
        let (n1, norm1) = self.attn_norm.forward(x)?;
        let (a, attn) = self.attn.forward(&n1, &call.attention())?;
        let a = hidden_dropout(a, call.hidden_mask(ATTN_OUT_DROPOUT_SLOT))?;
        let x1 = residual::forward(x, &a)?;
        let (n2, norm2) = self.mlp_norm.forward(&x1)?;
        let (m, mlp) = self.mlp.forward(&n2, &call.mlp())?;
        let m = hidden_dropout(m, call.hidden_mask(MLP_OUT_DROPOUT_SLOT))?;
        let y = residual::forward(&x1, &m)?;
        Ok((
            y,
            BlockCache {
                n1,
                norm1,
                attn,
                x1,
                n2,
                norm2,
                mlp,
            },
        ))
    }

    /// y for x, keeping nothing (embedding, evaluation): x becomes the
    /// residual stream and each branch is added into it in place, so besides
    /// x only one branch's activations exist at a time. Equal to
    /// [`Block::forward`]'s y (a + b and b += a round alike).
    pub fn infer(&self, x: Tensor, call: &BlockCall) -> Result<Tensor> {
        let mut x = x;
        let a = {
            let n1 = self.attn_norm.forward(&x)?.0;
            self.attn.infer(&n1, &call.attention())?
        };
        let a = hidden_dropout(a, call.hidden_mask(ATTN_OUT_DROPOUT_SLOT))?;
        residual::add_into(&mut x, &a)?;
        drop(a);
        let m = {
            let n2 = self.mlp_norm.forward(&x)?.0;
            self.mlp.infer(&n2, &call.mlp())?
        };
        let m = hidden_dropout(m, call.hidden_mask(MLP_OUT_DROPOUT_SLOT))?;
        residual::add_into(&mut x, &m)?;
        Ok(x)
    }

    /// dx for dy; adds adapter gradients into `grads` where it holds buffers.
    pub fn backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        cache: &BlockCache,
        call: &BlockCall,
        grads: Option<&mut BlockGrads>,
    ) -> Result<Tensor> {
        let (ga, gm) = match grads {
            Some(g) => (Some(&mut g.attn), Some(&mut g.mlp)),
            None => (None, None),
        };
        let dm = match call.hidden_mask(MLP_OUT_DROPOUT_SLOT) {
            Some(mask) => std::borrow::Cow::Owned(dropout::backward(dy, &mask)?),
            None => std::borrow::Cow::Borrowed(dy),
        };
        let dn2 = self.mlp.backward(&dm, &cache.n2, &cache.mlp, gm)?;
        let mut dx1 = dy.clone();
        let d = self
            .mlp_norm
            .backward(&dn2, &cache.x1, &cache.norm2, None)?;
        residual::add_into(&mut dx1, &d)?;
        let da = match call.hidden_mask(ATTN_OUT_DROPOUT_SLOT) {
            Some(mask) => std::borrow::Cow::Owned(dropout::backward(&dx1, &mask)?),
            None => std::borrow::Cow::Borrowed(&dx1),
        };
        let dn1 = self
            .attn
            .backward(&da, &cache.n1, &cache.attn, &call.attention(), ga)?;
        let mut dx = dx1;
        let d = self.attn_norm.backward(&dn1, x, &cache.norm1, None)?;
        residual::add_into(&mut dx, &d)?;
        Ok(dx)
    }
}

/// `x` with the hidden-dropout mask applied, when there is one.
fn hidden_dropout(x: Tensor, mask: Option<DropoutMask>) -> Result<Tensor> {
    match mask {
        Some(m) => dropout::forward(&x, &m),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transformer;
    use crate::layers::grad_check::{check_f32, rand_tensor, weighted_sum};
    use crate::layers::lora::LoraConfig;

    /// One block of a tiny random Qwen2 model (q/k/v biases, 4 query heads
    /// over 2 KV heads) with random adapters on every projection.
    #[test]
    fn block_backward_matches_finite_differences() {
        let cfg = crate::layers::transformer::tests::tiny_config("Qwen2ForCausalLM");
        let mut block = Transformer::random(&cfg, 3).unwrap().blocks()[0].clone();
        let lcfg = LoraConfig {
            r: 2,
            alpha: 2.0,
            dropout: 0.3,
            targets: LoraTarget::ALL.to_vec(),
        };
        for (j, t) in LoraTarget::ALL.into_iter().enumerate() {
            let l = block.linear_mut(t);
            l.add_lora(&lcfg, j as u64).unwrap();
            let b = &mut l.lora_mut().unwrap().b;
            *b = rand_tensor(b.shape(), 40 + j as u64, 0.3);
        }
        let rope = RopeTable::new(&cfg.rope, 8, llm2comp_tensor::Device::Cpu).unwrap();
        let positions = [0, 1, 2, 0, 1, 2, 3];
        let cu = [0, 3, 7];
        for pass in [
            Pass::causal().with_lora(true),
            Pass::bidirectional().with_dropout(9, 0.2),
            Pass::bidirectional()
                .with_dropout(11, 0.1)
                .with_hidden_dropout(0.25),
            // One stream per sequence.
            Pass::bidirectional()
                .with_dropout(13, 0.2)
                .with_hidden_dropout(0.2)
                .with_dropout_keys(&[5, 6]),
        ] {
            let keys = pass.seq_keys(&cu).unwrap();
            let call = BlockCall {
                pass: &pass,
                keys: keys.as_ref(),
                layer: 1,
                positions: &positions,
                cu_seqlens: &cu,
                rope: &rope,
            };
            let x = rand_tensor(&[7, 16], 1, 1.0);
            let w = rand_tensor(&[7, 16], 2, 1.0);
            let (_, cache) = block.forward(&x, &call).unwrap();
            let mut grads = BlockGrads::default();
            for t in LoraTarget::ALL {
                *grads.get_mut(t) = block.linear(t).lora().map(|l| l.zero_grads());
            }
            let dx = block
                .backward(&w, &x, &cache, &call, Some(&mut grads))
                .unwrap();
            let loss = |b: &Block, x: &Tensor| weighted_sum(&b.forward(x, &call).unwrap().0, &w);
            check_f32(
                "block dx",
                |v| loss(&block, &Tensor::from_vec(v.to_vec(), &[7, 16]).unwrap()),
                &x.to_vec_f32(),
                &dx.to_vec_f32(),
            );
            for t in [LoraTarget::K, LoraTarget::V, LoraTarget::Up] {
                let g = grads.get_mut(t).clone().unwrap();
                let a0 = block.linear(t).lora().unwrap().a.clone();
                let mut probe = block.clone();
                check_f32(
                    t.module_name(),
                    |v| {
                        probe.linear_mut(t).lora_mut().unwrap().a =
                            Tensor::from_vec(v.to_vec(), a0.shape()).unwrap();
                        loss(&probe, &x)
                    },
                    &a0.to_vec_f32(),
                    &g.a.to_vec_f32(),
                );
            }
        }
    }
}
