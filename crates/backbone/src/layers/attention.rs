//! Self-attention of a Llama block over a packed varlen batch: q/k/v
//! projections (adapters optional), rotate-half RoPE on q and k, the fused
//! varlen attention op (causal or bidirectional per call, grouped KV heads),
//! then o_proj. The mask is a call argument, not a layer property, because
//! one set of weights serves the bidirectional encoder and the causal
//! decoder.
//!
//! The cache keeps q and k *after* RoPE, v, the attention output and its
//! log-sum-exp: exactly what the attention backward recomputes from. The
//! projections' input (the normed x) is the caller's.

use llm2comp_tensor::ops::attention::{self, AttentionOpts};
use llm2comp_tensor::ops::dropout::DropoutMask;
use llm2comp_tensor::ops::residual;
use llm2comp_tensor::ops::rope::{self, RopeTable};
use llm2comp_tensor::{Result, Tensor, TensorError};

use super::linear::{Linear, LinearCache, LinearCall};
use super::lora::LoraGrads;

/// q/k/v/o projections and the head layout.
#[derive(Debug, Clone)]
pub struct Attention {
    /// q_proj [Hq·D, H].
    pub q: Linear,
    /// k_proj [Hkv·D, H].
    pub k: Linear,
    /// v_proj [Hkv·D, H].
    pub v: Linear,
    /// o_proj [H, Hq·D].
    pub o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// Everything one attention call needs besides x.
#[derive(Debug, Clone)]
pub struct AttentionCall<'a> {
    /// Each token's position (restarting at 0 per sequence).
    pub positions: &'a [u32],
    /// B + 1 token offsets of the packed sequences.
    pub cu_seqlens: &'a [u32],
    /// The model's RoPE tables.
    pub rope: &'a RopeTable,
    /// Causal or bidirectional.
    pub causal: bool,
    /// Dropout on the attention probabilities.
    pub dropout: Option<DropoutMask>,
    /// Side-path settings of q, k, v, o.
    pub proj: [LinearCall<'a>; 4],
}

/// What [`Attention::backward`] needs besides x.
#[derive(Debug, Clone)]
pub struct AttentionCache {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention output [T, Hq, D] (o_proj's input, reshaped).
    o: Tensor,
    lse: Tensor,
    proj: [LinearCache; 4],
}

/// Adapter gradients of q, k, v, o (`None`: no adapter or frozen).
#[derive(Debug, Clone, Default)]
pub struct AttentionGrads {
    /// q_proj's adapter.
    pub q: Option<LoraGrads>,
    /// k_proj's adapter.
    pub k: Option<LoraGrads>,
    /// v_proj's adapter.
    pub v: Option<LoraGrads>,
    /// o_proj's adapter.
    pub o: Option<LoraGrads>,
}

const OP: &str = "Attention";

impl Attention {
    /// Checks the projections against (heads, kv heads, head dim) and the hidden size.
    pub fn new(
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let hidden = q.in_features();
        let want = [
            ("q_proj", &q, num_heads * head_dim, hidden),
            ("k_proj", &k, num_kv_heads * head_dim, hidden),
            ("v_proj", &v, num_kv_heads * head_dim, hidden),
            ("o_proj", &o, hidden, num_heads * head_dim),
        ];
        for (name, l, out, inp) in want {
            if (l.out_features(), l.in_features()) != (out, inp) {
                return Err(TensorError::invalid(
                    OP,
                    format!(
                        "{name} weight is [{}, {}], expected [{out}, {inp}]",
                        l.out_features(),
                        l.in_features()
                    ),
                ));
            }
        }
        Ok(Self {
            q,
            k,
            v,
            o,
            num_heads,
            num_kv_heads,
            head_dim,
        })
    }

    fn opts(&self, call: &AttentionCall) -> AttentionOpts {
        AttentionOpts {
            dropout: call.dropout.clone(),
            ..AttentionOpts::new(self.head_dim, call.causal)
        }
    }

    /// y [T, H] for the normed x [T, H].
    pub fn forward(&self, x: &Tensor, call: &AttentionCall) -> Result<(Tensor, AttentionCache)> {
        let t = x.dims2(OP, "x")?.0;
        let (hq, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, cq) = self.q.forward(x, call.proj[0])?;
        let (k, ck) = self.k.forward(x, call.proj[1])?;
        let (v, cv) = self.v.forward(x, call.proj[2])?;
        let mut q = q.reshape(&[t, hq, d])?;
        let mut k = k.reshape(&[t, hkv, d])?;
        let v = v.reshape(&[t, hkv, d])?;
        rope::forward_inplace(&mut q, call.positions, call.rope)?;
        rope::forward_inplace(&mut k, call.positions, call.rope)?;
        let att = attention::forward(&q, &k, &v, call.cu_seqlens, &self.opts(call))?;
        let o = att.o.reshape(&[t, hq * d])?;
        let (y, co) = self.o.forward(&o, call.proj[3])?;
        Ok((
            y,
            AttentionCache {
                q,
                k,
                v,
                o,
                lse: att.lse,
                proj: [cq, ck, cv, co],
            },
        ))
    }

    /// y [T, H] for the normed x [T, H], keeping nothing: q, k and v are
    /// dropped before o_proj allocates its output. Equal to [`Attention::forward`]'s y.
    pub fn infer(&self, x: &Tensor, call: &AttentionCall) -> Result<Tensor> {
        let t = x.dims2(OP, "x")?.0;
        let (hq, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let o = {
            let mut q = self.q.forward(x, call.proj[0])?.0.reshape(&[t, hq, d])?;
            let mut k = self.k.forward(x, call.proj[1])?.0.reshape(&[t, hkv, d])?;
            let v = self.v.forward(x, call.proj[2])?.0.reshape(&[t, hkv, d])?;
            rope::forward_inplace(&mut q, call.positions, call.rope)?;
            rope::forward_inplace(&mut k, call.positions, call.rope)?;
            attention::forward(&q, &k, &v, call.cu_seqlens, &self.opts(call))?.o
        };
        Ok(self.o.forward(&o.reshape(&[t, hq * d])?, call.proj[3])?.0)
    }

    /// dx for dy [T, H]; adds adapter gradients into `grads` where it holds buffers.
    pub fn backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        cache: &AttentionCache,
        call: &AttentionCall,
        grads: Option<&mut AttentionGrads>,
    ) -> Result<Tensor> {
        let t = x.dims2(OP, "x")?.0;
        let (hq, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (mut gq, mut gk, mut gv, mut go) = (None, None, None, None);
        if let Some(g) = grads {
            gq = g.q.as_mut();
            gk = g.k.as_mut();
            gv = g.v.as_mut();
            go = g.o.as_mut();
        }
        let do_ = self.o.backward(dy, &cache.o, &cache.proj[3], go)?;
        let o = cache.o.clone().reshape(&[t, hq, d])?;
        let g = attention::backward(
            &do_.reshape(&[t, hq, d])?,
            &cache.q,
            &cache.k,
            &cache.v,
            &o,
            &cache.lse,
            call.cu_seqlens,
            &self.opts(call),
        )?;
        let (mut dq, mut dk) = (g.dq, g.dk);
        rope::backward_inplace(&mut dq, call.positions, call.rope)?;
        rope::backward_inplace(&mut dk, call.positions, call.rope)?;
        let mut dx = self
            .q
            .backward(&dq.reshape(&[t, hq * d])?, x, &cache.proj[0], gq)?;
        let dxk = self
            .k
            .backward(&dk.reshape(&[t, hkv * d])?, x, &cache.proj[1], gk)?;
        residual::add_into(&mut dx, &dxk)?;
        let dxv = self
            .v
            .backward(&g.dv.reshape(&[t, hkv * d])?, x, &cache.proj[2], gv)?;
        residual::add_into(&mut dx, &dxv)?;
        Ok(dx)
    }
}
