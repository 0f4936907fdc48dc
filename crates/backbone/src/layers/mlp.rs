//! Llama's SwiGLU MLP: down(silu(gate(x)) · up(x)). Gate and up stay two
//! projections (not one fused [2I, H] matrix) so each can carry its own
//! adapter, as PEFT targets them by name.

use llm2comp_tensor::ops::{residual, swiglu};
use llm2comp_tensor::{Result, Tensor};

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
pub struct MlpCall {
    /// gate_proj's call.
    pub gate: LinearCall,
    /// up_proj's call.
    pub up: LinearCall,
    /// down_proj's call.
    pub down: LinearCall,
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
