//! A frozen projection y = x·Wᵀ (+ b) with an optional LoRA side path
//! + (alpha/r)·dropout(x)·Aᵀ·Bᵀ.
//!
//! W and b sit in `Arc`s: clones of a model share them, and merging an
//! adapter copies W only if another model still holds it (copy on write).
//! The side path caches only h = scale·dropout(x)·Aᵀ ([tokens, r]); the
//! dropout mask is counter-based, so backward regenerates dropout(x) from the
//! x the caller hands back instead of storing a second [tokens, in] tensor.
//! Folding the scale into h makes dB += dyᵀ·h exact without a second scaling.
//!
//! A and B are f32 (an optimiser's master copies) on the weight's device. On
//! CUDA with bf16 activations they are cast to bf16 where the side path uses
//! them (a few [r, in] and [out, r] casts per call); their gradients stay f32.

use std::borrow::Cow;
use std::sync::Arc;

use llm2comp_tensor::ops::dropout::{self, DropoutMask, SeqKeys};
use llm2comp_tensor::ops::{matmul, residual};
use llm2comp_tensor::{DType, Result, Tensor, TensorError};

use super::in_dtype;
use super::lora::{Lora, LoraConfig, LoraGrads};

const OP: &str = "Linear";

/// How one call uses the side path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearCall<'a> {
    /// Add the LoRA side path (when the layer has one).
    pub lora: bool,
    /// Seed of the LoRA-input dropout mask; `None`: no dropout.
    pub dropout_seed: Option<u64>,
    /// Per-sequence mask streams over the input's rows (`Pass::dropout_keys`).
    pub dropout_keys: Option<&'a SeqKeys>,
}

impl LinearCall<'_> {
    /// The base projection only.
    pub const BASE: Self = Self {
        lora: false,
        dropout_seed: None,
        dropout_keys: None,
    };
}

/// A projection with frozen weight [out, in], optional frozen bias [out] and optional adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<Tensor>,
    bias: Option<Arc<Tensor>>,
    lora: Option<Lora>,
}

/// What [`Linear::backward`] needs besides the input.
#[derive(Debug, Clone)]
pub struct LinearCache {
    /// h = scale·dropout(x)·Aᵀ and the dropout mask, when the side path ran.
    side: Option<(Tensor, Option<DropoutMask>)>,
}

impl Linear {
    /// A projection from a weight [out, in] and optional bias [out] (f32, or
    /// bf16 on CUDA; the bias in the weight's dtype, on its device).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::shared(Arc::new(weight), bias.map(Arc::new))
    }

    /// A projection over weights shared with other models.
    pub fn shared(weight: Arc<Tensor>, bias: Option<Arc<Tensor>>) -> Result<Self> {
        super::check_weight(OP, "weight", &weight)?;
        let (d_out, _) = weight.dims2(OP, "weight [out, in]")?;
        if let Some(b) = &bias {
            b.expect_dtype(OP, "bias", weight.dtype())?;
            b.expect_shape(OP, "bias", &[d_out])?;
            if b.device() != weight.device() {
                return Err(TensorError::Device {
                    op: OP,
                    expected: weight.device(),
                    found: b.device(),
                });
            }
        }
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    /// The frozen weight [out, in].
    pub fn weight(&self) -> &Arc<Tensor> {
        &self.weight
    }

    /// The frozen bias [out], if any.
    pub fn bias(&self) -> Option<&Arc<Tensor>> {
        self.bias.as_ref()
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// The adapter, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The adapter, mutably (an optimiser updates A and B in place).
    pub fn lora_mut(&mut self) -> Option<&mut Lora> {
        self.lora.as_mut()
    }

    /// Attaches a fresh adapter (A from `seed`, B zero), replacing any previous one.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        self.lora = Some(Lora::new(
            cfg,
            self.out_features(),
            self.in_features(),
            seed,
        )?);
        Ok(())
    }

    /// Attaches `lora`, checking its shapes against the weight.
    pub fn set_lora(&mut self, lora: Lora) -> Result<()> {
        let (d_out, d_in) = (self.out_features(), self.in_features());
        let r = lora.a.dims2(OP, "lora A [r, in]")?.0;
        lora.a.expect_shape(OP, "lora A", &[r, d_in])?;
        lora.b.expect_shape(OP, "lora B", &[d_out, r])?;
        lora.a.expect_dtype(OP, "lora A", DType::F32)?;
        lora.b.expect_dtype(OP, "lora B", DType::F32)?;
        self.lora = Some(lora);
        Ok(())
    }

    /// Detaches and returns the adapter.
    pub fn take_lora(&mut self) -> Option<Lora> {
        self.lora.take()
    }

    /// W ← W + scale·B·A and the adapter is dropped (stage chaining: a merged
    /// model takes a fresh adapter). W is copied first if another model shares it.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(lora) = self.lora.take() else {
            return Ok(());
        };
        let delta = lora.delta()?;
        let w = Arc::make_mut(&mut self.weight);
        for (v, d) in w.f32s_mut(OP, "weight")?.iter_mut().zip(delta) {
            *v += d;
        }
        Ok(())
    }

    fn mask(&self, call: LinearCall) -> Option<DropoutMask> {
        match (&self.lora, call.dropout_seed) {
            (Some(l), Some(seed)) if l.dropout > 0.0 => {
                Some(DropoutMask::new(l.dropout, seed, 0).with_keys(call.dropout_keys.cloned()))
            }
            _ => None,
        }
    }

    fn lora_input<'x>(x: &'x Tensor, mask: Option<&DropoutMask>) -> Result<Cow<'x, Tensor>> {
        Ok(match mask {
            Some(m) => Cow::Owned(dropout::forward(x, m)?),
            None => Cow::Borrowed(x),
        })
    }

    /// y [rows, out] for x [rows, in], with the side path when `call.lora` and an adapter exist.
    pub fn forward(&self, x: &Tensor, call: LinearCall) -> Result<(Tensor, LinearCache)> {
        let mut y = matmul::linear_forward(x, &self.weight)?;
        if let Some(b) = &self.bias {
            matmul::add_bias(&mut y, b)?;
        }
        let side = match (&self.lora, call.lora) {
            (Some(lora), true) => {
                let mask = self.mask(call);
                let xd = Self::lora_input(x, mask.as_ref())?;
                let a = in_dtype(&lora.a, x.dtype())?;
                let h = matmul::linear_forward_scaled(&xd, &a, lora.scale)?;
                let b = in_dtype(&lora.b, x.dtype())?;
                residual::add_into(&mut y, &matmul::linear_forward(&h, &b)?)?;
                Some((h, mask))
            }
            _ => None,
        };
        Ok((y, LinearCache { side }))
    }

    /// dx for dy [rows, out] and forward's input x; adds dA, dB into `grads` when given.
    /// The base weight is frozen: no dW is ever computed.
    pub fn backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        cache: &LinearCache,
        grads: Option<&mut LoraGrads>,
    ) -> Result<Tensor> {
        let mut dx = matmul::linear_backward_input(dy, &self.weight)?;
        let Some((h, mask)) = &cache.side else {
            return Ok(dx);
        };
        let lora = self.lora.as_ref().ok_or_else(|| {
            TensorError::invalid(OP, "the cache has a LoRA path but the layer has no adapter")
        })?;
        // g = scale·dy·B: the gradient w.r.t. dropout(x)·Aᵀ.
        let b = in_dtype(&lora.b, dy.dtype())?;
        let g = matmul::linear_backward_input_scaled(dy, &b, lora.scale)?;
        let xd = Self::lora_input(x, mask.as_ref())?;
        if let Some(gr) = grads {
            matmul::linear_backward_weight(dy, h, &mut gr.b)?;
            matmul::linear_backward_weight(&g, &xd, &mut gr.a)?;
        }
        let a = in_dtype(&lora.a, dy.dtype())?;
        let dxd = matmul::linear_backward_input(&g, &a)?;
        let dxl = match mask {
            Some(m) => dropout::backward(&dxd, m)?,
            None => dxd,
        };
        residual::add_into(&mut dx, &dxl)?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::grad_check::{check_f32, rand_tensor, weighted_sum};
    use crate::layers::lora::LoraTarget;

    fn cfg(dropout: f32) -> LoraConfig {
        LoraConfig {
            r: 3,
            alpha: 6.0,
            dropout,
            targets: vec![LoraTarget::Q],
        }
    }

    /// A linear layer with bias and a LoRA whose B is random (a fresh B is zero, hiding dA).
    fn layer(dropout: f32) -> Linear {
        let mut l = Linear::new(
            rand_tensor(&[5, 7], 1, 0.5),
            Some(rand_tensor(&[5], 2, 0.5)),
        )
        .unwrap();
        l.add_lora(&cfg(dropout), 3).unwrap();
        l.lora_mut().unwrap().b = rand_tensor(&[5, 3], 4, 0.5);
        l
    }

    #[test]
    fn forward_matches_naive_reference() {
        let l = layer(0.0);
        let x = rand_tensor(&[4, 7], 5, 1.0);
        let (y, _) = l
            .forward(
                &x,
                LinearCall {
                    lora: true,
                    dropout_seed: None,
                    dropout_keys: None,
                },
            )
            .unwrap();
        let (w, b) = (l.weight.to_vec_f32(), l.bias.as_ref().unwrap().to_vec_f32());
        let lo = l.lora().unwrap();
        let (a, bb, xv) = (lo.a.to_vec_f32(), lo.b.to_vec_f32(), x.to_vec_f32());
        let mut want = vec![0f32; 4 * 5];
        for r in 0..4 {
            for o in 0..5 {
                let mut acc = b[o] as f64;
                for i in 0..7 {
                    let mut wi = w[o * 7 + i] as f64;
                    for k in 0..3 {
                        wi += 2.0 * bb[o * 3 + k] as f64 * a[k * 7 + i] as f64;
                    }
                    acc += wi * xv[r * 7 + i] as f64;
                }
                want[r * 5 + o] = acc as f32;
            }
        }
        llm2comp_tensor::testing::assert_close("linear+lora", &y.to_vec_f32(), &want, 1e-6);
        // Without the side path: only W and b.
        let (y0, c0) = l.forward(&x, LinearCall::BASE).unwrap();
        assert!(c0.side.is_none());
        assert!(llm2comp_tensor::testing::rel_err(&y0.to_vec_f32(), &want) > 1e-3);
    }

    #[test]
    fn merge_equals_side_path_and_copies_shared_weight() {
        let l = layer(0.0);
        let x = rand_tensor(&[6, 7], 6, 1.0);
        let on = LinearCall {
            lora: true,
            dropout_seed: None,
            dropout_keys: None,
        };
        let (y_side, _) = l.forward(&x, on).unwrap();
        let mut merged = l.clone();
        merged.merge_lora().unwrap();
        assert!(merged.lora().is_none());
        let (y_merged, _) = merged.forward(&x, on).unwrap();
        llm2comp_tensor::testing::assert_close(
            "merged",
            &y_merged.to_vec_f32(),
            &y_side.to_vec_f32(),
            1e-6,
        );
        // The original still shares nothing with the merged weight.
        let (y_base, _) = l.forward(&x, LinearCall::BASE).unwrap();
        assert!(
            llm2comp_tensor::testing::rel_err(&y_base.to_vec_f32(), &y_side.to_vec_f32()) > 1e-3
        );
        assert!(!Arc::ptr_eq(l.weight(), merged.weight()));
    }

    #[test]
    fn backward_matches_finite_differences() {
        for dropout in [0.0, 0.4] {
            let l = layer(dropout);
            let x = rand_tensor(&[4, 7], 7, 1.0);
            let call = LinearCall {
                lora: true,
                dropout_seed: Some(11),
                dropout_keys: None,
            };
            let w = rand_tensor(&[4, 5], 8, 1.0);
            let (_, cache) = l.forward(&x, call).unwrap();
            let mut g = l.lora().unwrap().zero_grads();
            let dx = l.backward(&w, &x, &cache, Some(&mut g)).unwrap();
            let loss_x = |xv: &[f32]| {
                let x = Tensor::from_vec(xv.to_vec(), &[4, 7]).unwrap();
                weighted_sum(&l.forward(&x, call).unwrap().0, &w)
            };
            check_f32("linear dx", loss_x, &x.to_vec_f32(), &dx.to_vec_f32());
            let loss_a = |av: &[f32]| {
                let mut m = l.clone();
                m.lora_mut().unwrap().a = Tensor::from_vec(av.to_vec(), &[3, 7]).unwrap();
                weighted_sum(&m.forward(&x, call).unwrap().0, &w)
            };
            let a0 = l.lora().unwrap().a.to_vec_f32();
            check_f32("linear dA", loss_a, &a0, &g.a.to_vec_f32());
            let loss_b = |bv: &[f32]| {
                let mut m = l.clone();
                m.lora_mut().unwrap().b = Tensor::from_vec(bv.to_vec(), &[5, 3]).unwrap();
                weighted_sum(&m.forward(&x, call).unwrap().0, &w)
            };
            let b0 = l.lora().unwrap().b.to_vec_f32();
            check_f32("linear dB", loss_b, &b0, &g.b.to_vec_f32());
            // Gradients add: a second backward doubles them.
            let first = g.a.to_vec_f32();
            l.backward(&w, &x, &cache, Some(&mut g)).unwrap();
            let twice: Vec<f32> = first.iter().map(|v| 2.0 * v).collect();
            llm2comp_tensor::testing::assert_close(
                "dA accumulates",
                &g.a.to_vec_f32(),
                &twice,
                1e-6,
            );
        }
    }

    #[test]
    fn fresh_adapter_is_identity_and_rejects_bad_shapes() {
        let mut l = Linear::new(rand_tensor(&[5, 7], 1, 0.5), None).unwrap();
        let x = rand_tensor(&[2, 7], 2, 1.0);
        let (y0, _) = l.forward(&x, LinearCall::BASE).unwrap();
        l.add_lora(&cfg(0.0), 9).unwrap();
        let (y1, _) = l
            .forward(
                &x,
                LinearCall {
                    lora: true,
                    dropout_seed: None,
                    dropout_keys: None,
                },
            )
            .unwrap();
        assert_eq!(y0.to_vec_f32(), y1.to_vec_f32());
        let a = &l.lora().unwrap().a.to_vec_f32();
        let bound = 1.0 / 7f32.sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
        let bad = Lora {
            a: rand_tensor(&[3, 6], 1, 1.0),
            ..l.lora().unwrap().clone()
        };
        let e = l.set_lora(bad).unwrap_err().to_string();
        assert!(e.contains("lora A") && e.contains("[3, 7]"), "{e}");
        let e = Linear::new(
            rand_tensor(&[5, 7], 1, 0.5),
            Some(rand_tensor(&[4], 1, 1.0)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bias") && e.contains("[5]"), "{e}");
    }
}
