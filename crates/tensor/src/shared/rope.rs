//! RoPE's configuration and tables, shared by both backends: frequencies
//! and cos/sin computed in f64 on the host (an f32 angle p·θᵢ at position
//! 10⁵ is off by ~10⁻²), stored as f32 tensors on the target device.

use rayon::prelude::*;

use crate::{Device, Real, Result, Tensor, TensorError};

const OP: &str = "rope";

/// Llama-3 frequency scaling ("rope_type": "llama3" in a Hugging Face config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// Divisor of the low frequencies (8 for Llama 3.1).
    pub factor: f64,
    /// Wavelengths above original/low_freq_factor are fully scaled.
    pub low_freq_factor: f64,
    /// Wavelengths below original/high_freq_factor are left alone.
    pub high_freq_factor: f64,
    /// The context length the model was pre-trained with (8192 for Llama 3).
    pub original_max_position_embeddings: usize,
}

/// How a model rotates its query/key heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Head dimension D (even).
    pub head_dim: usize,
    /// Base of the geometric frequency ladder ("rope_theta").
    pub theta: f64,
    /// Llama-3 scaling of the frequencies, if the model uses it.
    pub scaling: Option<RopeScaling>,
}

/// The D/2 angular frequencies θᵢ = theta^(−2i/D), with Llama-3 scaling when configured.
///
/// Scaling divides long-wavelength (low) frequencies by `factor`, leaves short
/// ones alone and blends linearly, in 1/wavelength, in between.
pub fn inv_freq(cfg: &RopeConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    assert!(
        d > 0 && d.is_multiple_of(2),
        "rope: head_dim {d} must be even and > 0"
    );
    (0..d / 2)
        .map(|i| {
            let f = cfg.theta.powf(-((2 * i) as f64) / d as f64);
            match &cfg.scaling {
                None => f,
                Some(s) => llama3_scale(f, s),
            }
        })
        .collect()
}

fn llama3_scale(f: f64, s: &RopeScaling) -> f64 {
    let orig = s.original_max_position_embeddings as f64;
    let wavelen = 2.0 * std::f64::consts::PI / f;
    let low_freq_wavelen = orig / s.low_freq_factor;
    let high_freq_wavelen = orig / s.high_freq_factor;
    if wavelen > low_freq_wavelen {
        f / s.factor
    } else if wavelen < high_freq_wavelen {
        f
    } else {
        let smooth =
            (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * f / s.factor + smooth * f
    }
}

/// cos and sin of p·θᵢ for p in 0..max_pos: two [max_pos, D/2] tables, computed in f64.
pub fn cos_sin_tables<T: Real>(inv_freq: &[f64], max_pos: usize) -> (Vec<T>, Vec<T>) {
    let half = inv_freq.len();
    let mut cos = vec![T::zero(); max_pos * half];
    let mut sin = vec![T::zero(); max_pos * half];
    cos.par_chunks_mut(half.max(1))
        .zip(sin.par_chunks_mut(half.max(1)))
        .enumerate()
        .for_each(|(p, (c, s))| {
            for ((c, s), &f) in c.iter_mut().zip(s).zip(inv_freq) {
                let (sn, cs) = (p as f64 * f).sin_cos();
                *c = T::of(cs);
                *s = T::of(sn);
            }
        });
    (cos, sin)
}

/// Precomputed cos/sin of p·θᵢ for positions 0..max_positions.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    max_positions: usize,
    /// [max_positions, head_dim/2]
    cos: Tensor,
    /// [max_positions, head_dim/2]
    sin: Tensor,
}

fn finite_positive(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TensorError::invalid(
            OP,
            format!("{what} must be finite and > 0, got {v}"),
        ))
    }
}

fn check_config(cfg: &RopeConfig) -> Result<()> {
    if cfg.head_dim == 0 || !cfg.head_dim.is_multiple_of(2) {
        return Err(TensorError::invalid(
            OP,
            format!("head_dim must be even and > 0, got {}", cfg.head_dim),
        ));
    }
    finite_positive("theta", cfg.theta)?;
    if let Some(s) = &cfg.scaling {
        finite_positive("scaling.factor", s.factor)?;
        finite_positive("scaling.low_freq_factor", s.low_freq_factor)?;
        finite_positive("scaling.high_freq_factor", s.high_freq_factor)?;
        finite_positive(
            "scaling.original_max_position_embeddings",
            s.original_max_position_embeddings as f64,
        )?;
        if s.high_freq_factor <= s.low_freq_factor {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "scaling.high_freq_factor ({}) must exceed low_freq_factor ({})",
                    s.high_freq_factor, s.low_freq_factor
                ),
            ));
        }
    }
    Ok(())
}

impl RopeTable {
    /// Validates `cfg` and builds the tables for positions 0..max_positions on `device`.
    pub fn new(cfg: &RopeConfig, max_positions: usize, device: Device) -> Result<Self> {
        check_config(cfg)?;
        let half = cfg.head_dim / 2;
        let (cos, sin) = cos_sin_tables::<f32>(&inv_freq(cfg), max_positions);
        let shape = [max_positions, half];
        Ok(Self {
            head_dim: cfg.head_dim,
            max_positions,
            cos: Tensor::from_vec(cos, &shape)?.to_device(device)?,
            sin: Tensor::from_vec(sin, &shape)?.to_device(device)?,
        })
    }

    /// The head dimension D the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// One past the largest position the table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos(p·θᵢ): [max_positions, D/2].
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// sin(p·θᵢ): [max_positions, D/2].
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }

    /// The device the tables live on.
    pub fn device(&self) -> Device {
        self.cos.device()
    }
}
