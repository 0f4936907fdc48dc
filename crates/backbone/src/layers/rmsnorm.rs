//! RMSNorm as a layer: the weight shared through an `Arc` (frozen in blocks;
//! the final norm may be trained, and training it copies it on write so a
//! decoder sharing the original keeps it). Backward needs forward's input,
//! which the caller keeps, and the per-row 1/rms, which the cache keeps.

use std::sync::Arc;

use llm2comp_tensor::ops::rmsnorm;
use llm2comp_tensor::{Result, Tensor};

/// y = x / rms(x) · w over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Arc<Tensor>,
    eps: f32,
}

/// What [`RmsNorm::backward`] needs besides the input: 1/rms per row.
#[derive(Debug, Clone)]
pub struct RmsNormCache {
    rstd: Tensor,
}

impl RmsNorm {
    /// A norm with weight [dim] (f32, or bf16 on CUDA) and epsilon `eps`.
    pub fn new(weight: Arc<Tensor>, eps: f32) -> Result<Self> {
        super::check_weight("RmsNorm", "weight", &weight)?;
        if weight.rank() != 1 {
            return Err(llm2comp_tensor::TensorError::shape(
                "RmsNorm",
                "weight",
                "rank 1",
                weight.shape(),
            ));
        }
        Ok(Self { weight, eps })
    }

    /// The weight [dim].
    pub fn weight(&self) -> &Arc<Tensor> {
        &self.weight
    }

    /// The weight, mutably (copied first if another model shares it).
    pub fn weight_mut(&mut self) -> &mut Tensor {
        Arc::make_mut(&mut self.weight)
    }

    /// Epsilon inside the square root.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// y for x [rows, dim].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, RmsNormCache)> {
        let out = rmsnorm::forward(x, &self.weight, self.eps)?;
        Ok((out.y, RmsNormCache { rstd: out.rstd }))
    }

    /// dx; adds dL/dw into `dweight` when the weight is trained.
    pub fn backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        cache: &RmsNormCache,
        dweight: Option<&mut Tensor>,
    ) -> Result<Tensor> {
        rmsnorm::backward(dy, x, &self.weight, &cache.rstd, dweight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::grad_check::{check_f32, rand_tensor, weighted_sum};

    #[test]
    fn forward_and_backward() {
        let w: Vec<f32> = rand_tensor(&[6], 1, 0.5)
            .to_vec_f32()
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let n = RmsNorm::new(Arc::new(Tensor::from_vec(w.clone(), &[6]).unwrap()), 1e-5).unwrap();
        let x = rand_tensor(&[3, 6], 2, 1.0);
        let (y, cache) = n.forward(&x).unwrap();
        let xv = x.to_vec_f32();
        let want: Vec<f32> = (0..18)
            .map(|i| {
                let row = &xv[i / 6 * 6..i / 6 * 6 + 6];
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 6.0;
                (xv[i] as f64 / (ms + 1e-5).sqrt() * w[i % 6] as f64) as f32
            })
            .collect();
        llm2comp_tensor::testing::assert_close("rmsnorm", &y.to_vec_f32(), &want, 1e-6);
        let dy = rand_tensor(&[3, 6], 3, 1.0);
        let mut dw = Tensor::zeros(
            &[6],
            llm2comp_tensor::DType::F32,
            llm2comp_tensor::Device::Cpu,
        );
        let dx = n.backward(&dy, &x, &cache, Some(&mut dw)).unwrap();
        check_f32(
            "rmsnorm dx",
            |v| {
                weighted_sum(
                    &n.forward(&Tensor::from_vec(v.to_vec(), &[3, 6]).unwrap())
                        .unwrap()
                        .0,
                    &dy,
                )
            },
            &xv,
            &dx.to_vec_f32(),
        );
        check_f32(
            "rmsnorm dw",
            |v| {
                let m = RmsNorm::new(Arc::new(Tensor::from_vec(v.to_vec(), &[6]).unwrap()), 1e-5)
                    .unwrap();
                weighted_sum(&m.forward(&x).unwrap().0, &dy)
            },
            &w,
            &dw.to_vec_f32(),
        );
        assert!(RmsNorm::new(Arc::new(rand_tensor(&[2, 3], 1, 1.0)), 1e-5).is_err());
    }
}
