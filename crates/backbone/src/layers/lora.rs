//! LoRA adapters (Hu et al.), laid out as PEFT stores them so adapters load
//! in Python: A is [r, in], B is [out, r], and the side path adds
//! (alpha/r)·dropout(x)·Aᵀ·Bᵀ.
//!
//! A starts Kaiming-uniform with a = √5 (what `nn.Linear` and PEFT use:
//! bound 1/√in) and B at zero, so a fresh adapter leaves the model unchanged
//! while its gradient w.r.t. B is already non-zero. The init is seeded per
//! (layer, projection) so a run is reproducible.

use llm2comp_tensor::{DType, Device, Result, Tensor, TensorError};

/// The projections an adapter can sit on, named as PEFT's `target_modules` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `q_proj`.
    Q,
    /// `k_proj`.
    K,
    /// `v_proj`.
    V,
    /// `o_proj`.
    O,
    /// `gate_proj`.
    Gate,
    /// `up_proj`.
    Up,
    /// `down_proj`.
    Down,
}

impl LoraTarget {
    /// Every projection, in block order.
    pub const ALL: [LoraTarget; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// PEFT's module name (`q_proj`, ..., `down_proj`).
    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// A small distinct number per target, for seeding.
    pub(crate) fn slot(self) -> u64 {
        self as u64
    }
}

/// Rank, scaling, dropout and placement of the adapters of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank r (≥ 1).
    pub r: usize,
    /// alpha; the side path is scaled by alpha / r.
    pub alpha: f32,
    /// Dropout probability on the adapter's input, in [0, 1).
    pub dropout: f32,
    /// The projections that get an adapter.
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// LLM2Comp's stage-1 adapter: r 16, alpha 32, dropout 0.05 on every projection but k_proj.
    pub fn llm2comp() -> Self {
        use LoraTarget::*;
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: vec![Q, V, O, Gate, Up, Down],
        }
    }

    /// Errors unless r ≥ 1, alpha is finite and dropout is in [0, 1).
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 || !self.alpha.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(TensorError::invalid(
                "lora",
                format!(
                    "need r >= 1, finite alpha and dropout in [0, 1); got r {}, alpha {}, dropout {}",
                    self.r, self.alpha, self.dropout
                ),
            ));
        }
        Ok(())
    }
}

/// One adapter: A [r, in], B [out, r], f32.
#[derive(Debug, Clone)]
pub struct Lora {
    /// Down-projection A: [r, in].
    pub a: Tensor,
    /// Up-projection B: [out, r].
    pub b: Tensor,
    /// alpha / r.
    pub scale: f32,
    /// Dropout probability on the adapter's input.
    pub dropout: f32,
}

impl Lora {
    /// A fresh adapter for an [out, in] weight: A Kaiming-uniform from `seed`, B zero.
    pub fn new(cfg: &LoraConfig, d_out: usize, d_in: usize, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let bound = 1.0 / (d_in.max(1) as f32).sqrt();
        let a = super::uniform_from_seed(seed, cfg.r * d_in, bound);
        Ok(Self {
            a: Tensor::from_vec(a, &[cfg.r, d_in])?,
            b: Tensor::zeros(&[d_out, cfg.r], DType::F32, Device::Cpu),
            scale: cfg.alpha / cfg.r as f32,
            dropout: cfg.dropout,
        })
    }

    /// One adapter whose update scale·B·A is the sum of the parts' updates
    /// (how a chained stage is exported: the earlier stages' update, merged
    /// in training, plus this stage's). A stacks the parts' rows and B their
    /// columns, each part's B scaled by s_i / s, s the last part's scale;
    /// the rank is the sum of the ranks, the dropout the last part's. The
    /// parts may sit on any device (a CUDA stage's adapters are f32 masters
    /// there): they are stacked on the host and the result goes to the last
    /// part's device, so exporting costs one small copy each way.
    pub fn stack(parts: &[&Lora]) -> Result<Self> {
        const OP: &str = "lora stack";
        let last = parts
            .last()
            .ok_or_else(|| TensorError::invalid(OP, "no adapters to stack"))?;
        let (_, d_in) = last.a.dims2(OP, "a")?;
        let (d_out, _) = last.b.dims2(OP, "b")?;
        let r: usize = parts.iter().map(|p| p.rank()).sum();
        let mut a = Vec::with_capacity(r * d_in);
        let mut b = vec![0f32; d_out * r];
        let mut col = 0;
        for p in parts {
            let ri = p.rank();
            p.a.expect_shape(OP, "a", &[ri, d_in])?;
            p.b.expect_shape(OP, "b", &[d_out, ri])?;
            let pa = p.a.to_device(Device::Cpu)?;
            a.extend_from_slice(pa.f32s(OP, "a")?);
            let f = p.scale / last.scale;
            let pb = p.b.to_device(Device::Cpu)?;
            for (o, src) in pb.f32s(OP, "b")?.chunks_exact(ri).enumerate() {
                for (dst, &v) in b[o * r + col..o * r + col + ri].iter_mut().zip(src) {
                    *dst = v * f;
                }
            }
            col += ri;
        }
        let device = last.a.device();
        Ok(Self {
            a: Tensor::from_vec(a, &[r, d_in])?.to_device(device)?,
            b: Tensor::from_vec(b, &[d_out, r])?.to_device(device)?,
            scale: last.scale,
            dropout: last.dropout,
        })
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.a.shape()[0]
    }

    /// Zero gradient buffers shaped like this adapter.
    pub fn zero_grads(&self) -> LoraGrads {
        LoraGrads {
            a: Tensor::zeros(self.a.shape(), DType::F32, self.a.device()),
            b: Tensor::zeros(self.b.shape(), DType::F32, self.b.device()),
        }
    }

    /// scale·B·A: the [out, in] update merging adds to W (computed on the host in f64).
    pub fn delta(&self) -> Result<Vec<f32>> {
        const OP: &str = "lora delta";
        let (r, d_in) = self.a.dims2(OP, "a")?;
        let (d_out, rb) = self.b.dims2(OP, "b")?;
        if rb != r {
            return Err(TensorError::shape(
                OP,
                "b",
                format!("[{d_out}, {r}]"),
                self.b.shape(),
            ));
        }
        let (a, b) = (self.a.f32s(OP, "a")?, self.b.f32s(OP, "b")?);
        let mut out = vec![0f32; d_out * d_in];
        for o in 0..d_out {
            let row = &mut out[o * d_in..(o + 1) * d_in];
            for (k, &bk) in b[o * r..(o + 1) * r].iter().enumerate() {
                let s = self.scale as f64 * bk as f64;
                for (dst, &ak) in row.iter_mut().zip(&a[k * d_in..(k + 1) * d_in]) {
                    *dst = (*dst as f64 + s * ak as f64) as f32;
                }
            }
        }
        Ok(out)
    }
}

/// Gradient buffers of one adapter (added into, never overwritten).
#[derive(Debug, Clone)]
pub struct LoraGrads {
    /// dL/dA: [r, in].
    pub a: Tensor,
    /// dL/dB: [out, r].
    pub b: Tensor,
}

impl LoraGrads {
    /// Sets both buffers to zero (before a new accumulation).
    pub fn zero(&mut self) {
        self.a = Tensor::zeros(self.a.shape(), DType::F32, self.a.device());
        self.b = Tensor::zeros(self.b.shape(), DType::F32, self.b.device());
    }
}
