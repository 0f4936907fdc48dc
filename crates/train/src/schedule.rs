//! Learning-rate schedules: linear warm-up, then constant, linear or cosine
//! decay to `min_lr`.
//!
//! Steps are 0-based and name the step about to be taken, with Hugging Face's
//! convention: warm-up ends at `lr` exactly at step `warmup_steps`, and decay
//! progress is `(step − warmup) / (total − warmup)`, so `min_lr` is reached at
//! step `total_steps` (one past the last step of a run of that length) and held
//! after it. A pure function of the step, the schedule needs no state in a
//! checkpoint: resume recomputes it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stay at `lr`.
    Constant,
    /// Straight line from `lr` to `min_lr`.
    Linear,
    /// Half a cosine from `lr` to `min_lr`.
    Cosine,
}

impl FromStr for Decay {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => Err(TrainError::Config(format!(
                "unknown learning-rate decay `{s}` (expected constant, linear or cosine)"
            ))),
        }
    }
}

impl fmt::Display for Decay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
        })
    }
}

/// A learning-rate schedule (warm-up, then decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// Number of warm-up steps (0: start at `lr`).
    pub warmup_steps: u64,
    /// Learning rate of step 0 when warming up.
    pub warmup_init_lr: f64,
    /// Step at which the decay reaches `min_lr`.
    pub total_steps: u64,
    /// Decay after warm-up.
    pub decay: Decay,
    /// Final learning rate of a decay (default 0).
    #[serde(default)]
    pub min_lr: f64,
}

impl Schedule {
    /// A constant learning rate without warm-up.
    pub fn constant(lr: f64, total_steps: u64) -> Self {
        Self {
            lr,
            warmup_steps: 0,
            warmup_init_lr: 0.0,
            total_steps,
            decay: Decay::Constant,
            min_lr: 0.0,
        }
    }

    /// Errors on a non-finite or negative rate, `min_lr > lr`, or a decay with no steps to decay over.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::Config(format!("schedule: {msg}")));
        for (name, v) in [
            ("lr", self.lr),
            ("warmup_init_lr", self.warmup_init_lr),
            ("min_lr", self.min_lr),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be finite and >= 0, got {v}"));
            }
        }
        if self.lr == 0.0 {
            return bad("lr must be > 0 (a zero learning rate trains nothing)".into());
        }
        if self.min_lr > self.lr {
            return bad(format!(
                "min_lr ({}) must be <= lr ({})",
                self.min_lr, self.lr
            ));
        }
        if self.total_steps == 0 {
            return bad("total_steps must be >= 1".into());
        }
        if self.decay != Decay::Constant && self.total_steps <= self.warmup_steps {
            return bad(format!(
                "{} decay needs total_steps ({}) > warmup_steps ({})",
                self.decay, self.total_steps, self.warmup_steps
            ));
        }
        Ok(())
    }

    /// The learning rate of 0-based step `step` (the step about to be taken).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_init_lr + (self.lr - self.warmup_init_lr) * f;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let p = if span == 0 {
            1.0
        } else {
            ((step - self.warmup_steps) as f64 / span as f64).min(1.0)
        };
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => self.lr + (self.min_lr - self.lr) * p,
            Decay::Cosine => {
                self.min_lr
                    + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> Schedule {
        Schedule {
            lr: 1.0,
            warmup_steps: 4,
            warmup_init_lr: 0.2,
            total_steps: 12,
            decay,
            min_lr: 0.1,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_from_init_to_lr() {
        for d in [Decay::Constant, Decay::Linear, Decay::Cosine] {
            let s = sched(d);
            // 0.2 + 0.8·step/4
            for (step, want) in [(0, 0.2), (1, 0.4), (2, 0.6), (3, 0.8), (4, 1.0)] {
                assert!(close(s.lr_at(step), want), "{d} step {step}");
            }
        }
    }

    #[test]
    fn decays_hit_hand_computed_values() {
        let c = sched(Decay::Constant);
        assert!([5, 11, 12, 100].iter().all(|&s| close(c.lr_at(s), 1.0)));
        // Linear over 8 steps from 1.0 to 0.1: 1 − 0.9·(s−4)/8.
        let l = sched(Decay::Linear);
        for (step, want) in [(6, 0.775), (8, 0.55), (11, 0.2125), (12, 0.1), (50, 0.1)] {
            assert!(
                close(l.lr_at(step), want),
                "linear {step}: {}",
                l.lr_at(step)
            );
        }
        // Cosine: 0.1 + 0.45·(1 + cos(π p)); p = 1/2 → 0.55, p = 1/4 → 0.1 + 0.45·(1 + √2/2).
        let k = sched(Decay::Cosine);
        let quarter = 0.1 + 0.45 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        for (step, want) in [(6, quarter), (8, 0.55), (12, 0.1), (13, 0.1)] {
            assert!(
                close(k.lr_at(step), want),
                "cosine {step}: {}",
                k.lr_at(step)
            );
        }
    }

    #[test]
    fn no_warmup_starts_at_lr() {
        let mut s = sched(Decay::Cosine);
        s.warmup_steps = 0;
        assert!(close(s.lr_at(0), 1.0));
        assert!(Schedule::constant(0.5, 1).validate().is_ok());
    }

    #[test]
    fn validate_names_the_problem() {
        type Case = (fn(&mut Schedule), &'static str);
        let cases: [Case; 6] = [
            (|s| s.lr = f64::NAN, "lr must be finite"),
            (|s| s.lr = 0.0, "lr must be > 0"),
            (|s| s.warmup_init_lr = -1.0, "warmup_init_lr"),
            (|s| s.min_lr = 2.0, "min_lr (2) must be <= lr (1)"),
            (|s| s.total_steps = 0, "total_steps must be >= 1"),
            (
                |s| s.total_steps = 4,
                "cosine decay needs total_steps (4) > warmup_steps (4)",
            ),
        ];
        for (f, want) in cases {
            let mut s = sched(Decay::Cosine);
            assert!(s.validate().is_ok());
            f(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn decay_parses_and_round_trips() {
        for d in [Decay::Constant, Decay::Linear, Decay::Cosine] {
            assert_eq!(d.to_string().parse::<Decay>().unwrap(), d);
        }
        assert_eq!("Cosine".parse::<Decay>().unwrap(), Decay::Cosine);
        let err = "step".parse::<Decay>().unwrap_err().to_string();
        assert!(err.contains("`step`") && err.contains("cosine"), "{err}");
        let s = sched(Decay::Linear);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["decay"], "linear");
        assert_eq!(serde_json::from_value::<Schedule>(json).unwrap(), s);
    }
}
