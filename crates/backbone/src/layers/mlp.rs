//! Llama's SwiGLU MLP: down(silu(gate(x)) · up(x)). Gate and up stay two
//! projections (not one fused [2I, H] matrix) so each can carry its own
//! adapter, as PEFT targets them by name.
//!
//! Inference ([`Mlp::infer`]) runs in row chunks: the three [rows, I]
//! intermediates are the largest activations of a block (I ≈ 2.7·H), and
//! rows are independent, so chunking bounds them at [`INFER_ROWS`] rows
//! whatever the batch, at no cost in FLOPs; chunks of ~1k rows keep the GEMMs
//! large enough for full speed and small enough for the allocator to reuse.

use llm2comp_tensor::ops::{residual, swiglu};
use llm2comp_tensor::{DType, Device, Result, Tensor};

use super::linear::{Linear, LinearCache, LinearCall};
use super::lora::LoraGrads;

/// The three projections of the MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// gate_proj [I, H].
    pub gate: Linear,
    /// up_proj [I, H].
    pub up: Linear,
    /// down_proj [H, I].
    pub down: Linear,
}

/// The per-call side-path settings of each projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpCall<'a> {
    /// gate_proj's call.
    pub gate: LinearCall<'a>,
    /// up_proj's call.
    pub up: LinearCall<'a>,
    /// down_proj's call.
    pub down: LinearCall<'a>,
}

/// Activations the backward needs (the input x is kept by the caller).
#[derive(Debug, Clone)]
pub struct MlpCache {
    gate_out: Tensor,
    up_out: Tensor,
    act: Tensor,
    gate: LinearCache,
    up: LinearCache,
    down: LinearCache,
}

/// Rows per chunk of [`Mlp::infer`].
pub const INFER_ROWS: usize = 1024;

/// Adapter gradients of the MLP's projections (`None`: no adapter or frozen).
#[derive(Debug, Clone, Default)]
pub struct MlpGrads {
    /// gate_proj's adapter.
    pub gate: Option<LoraGrads>,
    /// up_proj's adapter.
    pub up: Option<LoraGrads>,
    /// down_proj's adapter.
    pub down: Option<LoraGrads>,
}

impl Mlp {
    /// y [rows, H] for x [rows, H].
    pub fn forward(&self, x: &Tensor, call: &MlpCall) -> Result<(Tensor, MlpCache)> {
        let (gate_out, gate) = self.gate.forward(x, call.gate)?;
        let (up_out, up) = self.up.forward(x, call.up)?;
        let act = swiglu::forward(&gate_out, &up_out)?;
        let (y, down) = self.down.forward(&act, call.down)?;
        Ok((
            y,
            MlpCache {
                gate_out,
                up_out,
                act,
                gate,
                up,
                down,
            },
        ))
    }

    /// y [rows, H] for x [rows, H], keeping nothing: the intermediates of at
    /// most [`INFER_ROWS`] rows exist at a time. Equal to [`Mlp::forward`]'s y.
    pub fn infer(&self, x: &Tensor, call: &MlpCall) -> Result<Tensor> {
        self.infer_in_chunks(x, call, INFER_ROWS)
    }

    /// [`Mlp::infer`] with the chunk size given (tests use small ones).
    pub(crate) fn infer_in_chunks(
        &self,
        x: &Tensor,
        call: &MlpCall,
        rows: usize,
    ) -> Result<Tensor> {
        let (t, h) = x.dims2("Mlp", "x")?;
        // A dropout mask is indexed by element over the whole tensor, and
        // chunks are host-slice copies: only the plain CPU case is chunked.
        let dropout = [call.gate, call.up, call.down]
            .iter()
            .any(|c| c.dropout_seed.is_some());
        if t <= rows || dropout || x.device() != Device::Cpu {
            return self.infer_whole(x, call);
        }
        let mut y = Tensor::zeros(&[t, h], DType::F32, Device::Cpu);
        let xs = x.f32s("Mlp", "x")?;
        for start in (0..t).step_by(rows) {
            let end = (start + rows).min(t);
            let chunk = Tensor::from_vec(xs[start * h..end * h].to_vec(), &[end - start, h])?;
            let yc = self.infer_whole(&chunk, call)?;
            y.f32s_mut("Mlp", "y")?[start * h..end * h].copy_from_slice(yc.f32s("Mlp", "y")?);
        }
        Ok(y)
    }

    /// y for x in one piece, each intermediate dropped once consumed.
    fn infer_whole(&self, x: &Tensor, call: &MlpCall) -> Result<Tensor> {
        let act = {
            let gate_out = self.gate.forward(x, call.gate)?.0;
            let up_out = self.up.forward(x, call.up)?.0;
            swiglu::forward(&gate_out, &up_out)?
        };
        Ok(self.down.forward(&act, call.down)?.0)
    }

    /// dx; adds adapter gradients into `grads` where it holds buffers.
    pub fn backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        cache: &MlpCache,
        grads: Option<&mut MlpGrads>,
    ) -> Result<Tensor> {
        let (mut gg, mut gu, mut gd) = (None, None, None);
        if let Some(g) = grads {
            gg = g.gate.as_mut();
            gu = g.up.as_mut();
            gd = g.down.as_mut();
        }
        let dact = self.down.backward(dy, &cache.act, &cache.down, gd)?;
        let (dgate, dup) = swiglu::backward(&dact, &cache.gate_out, &cache.up_out)?;
        let mut dx = self.gate.backward(&dgate, x, &cache.gate, gg)?;
        residual::add_into(&mut dx, &self.up.backward(&dup, x, &cache.up, gu)?)?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transformer;
    use crate::layers::grad_check::rand_tensor;
    use crate::layers::linear::LinearCall;

    /// Chunked inference equals the one-piece forward row for row, whether
    /// the chunk size divides the rows or not, and falls back to one piece
    /// (bit-identical) when a dropout mask is on.
    #[test]
    fn chunked_infer_matches_forward() {
        let cfg = crate::layers::transformer::tests::tiny_config("LlamaForCausalLM");
        let mut mlp = Transformer::random(&cfg, 5).unwrap().blocks()[1]
            .mlp
            .clone();
        // An adapter with dropout on up: chunking would restart its mask.
        let lcfg = crate::layers::lora::LoraConfig {
            r: 2,
            alpha: 2.0,
            dropout: 0.5,
            targets: vec![crate::layers::lora::LoraTarget::Up],
        };
        mlp.up.add_lora(&lcfg, 8).unwrap();
        let b = &mut mlp.up.lora_mut().unwrap().b;
        *b = rand_tensor(b.shape(), 9, 0.5);
        let x = rand_tensor(&[13, 16], 4, 1.0);
        let base = MlpCall {
            gate: LinearCall::BASE,
            up: LinearCall::BASE,
            down: LinearCall::BASE,
        };
        let want = mlp.forward(&x, &base).unwrap().0.to_vec_f32();
        for rows in [1, 4, 13, 64] {
            let got = mlp.infer_in_chunks(&x, &base, rows).unwrap();
            assert_eq!(got.shape(), &[13, 16]);
            llm2comp_tensor::testing::assert_close(
                &format!("chunks of {rows}"),
                &got.to_vec_f32(),
                &want,
                1e-6,
            );
        }
        let dropped = MlpCall {
            up: LinearCall {
                lora: true,
                dropout_seed: Some(3),
                dropout_keys: None,
            },
            ..base
        };
        let want = mlp.forward(&x, &dropped).unwrap().0.to_vec_f32();
        let got = mlp.infer_in_chunks(&x, &dropped, 4).unwrap().to_vec_f32();
        assert_eq!(got, want);
    }
}
