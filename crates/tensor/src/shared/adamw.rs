//! What both AdamW backends share: the hyper-parameters and the per-step
//! scalars, computed once so the CPU and CUDA steps multiply by exactly the
//! same numbers.

use crate::{Real, Result, TensorError};

const OP: &str = "adamw";

/// AdamW hyper-parameters; `Default` gives PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (≥ 0).
    pub lr: f64,
    /// First-moment decay β1 in [0, 1).
    pub beta1: f64,
    /// Second-moment decay β2 in [0, 1).
    pub beta2: f64,
    /// Added to sqrt(v̂) in the denominator (> 0).
    pub eps: f64,
    /// Decoupled weight decay (≥ 0): p ← p·(1 − lr·wd) each step.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    /// Errors on a hyper-parameter outside its valid range (or non-finite).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f64, range: &str| {
            Err(TensorError::invalid(
                OP,
                format!("{name} must be finite and {range}, got {v}"),
            ))
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", self.lr, ">= 0");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "in [0, 1)");
        }
        // eps = 0 would turn a never-updated coordinate (v = 0, m = 0) into 0/0.
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps, "> 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, ">= 0");
        }
        Ok(())
    }
}

/// The per-step scalars, computed once in f64 and rounded to `T`. Shared with
/// the CUDA step, so both backends multiply by exactly the same numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coefs<T> {
    /// 1 − lr·wd.
    pub decay: T,
    /// lr/(1 − β1ᵗ).
    pub step_size: T,
    /// sqrt(1 − β2ᵗ).
    pub bc2_sqrt: T,
    /// β1.
    pub b1: T,
    /// β2.
    pub b2: T,
    /// 1 − β1.
    pub c1: T,
    /// 1 − β2.
    pub c2: T,
    /// eps.
    pub eps: T,
}

impl<T: Real> Coefs<T> {
    /// The scalars of step `t` (1-based).
    pub(crate) fn new(cfg: &AdamWConfig, t: u64) -> Self {
        let tf = t as f64;
        let bc1 = 1.0 - cfg.beta1.powf(tf);
        let bc2 = 1.0 - cfg.beta2.powf(tf);
        Self {
            decay: T::of(1.0 - cfg.lr * cfg.weight_decay),
            step_size: T::of(cfg.lr / bc1),
            bc2_sqrt: T::of(bc2.sqrt()),
            b1: T::of(cfg.beta1),
            b2: T::of(cfg.beta2),
            c1: T::of(1.0 - cfg.beta1),
            c2: T::of(1.0 - cfg.beta2),
            eps: T::of(cfg.eps),
        }
    }
}
