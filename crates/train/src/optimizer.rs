//! AdamW over a task's named parameters.
//!
//! Moments are keyed by parameter name, not by position, so a task may list
//! its parameters in any order and a checkpoint stays readable when that order
//! changes. They are created (zeros, on the parameter's device) the first time
//! a name is stepped, which is what PyTorch's lazy state does, and `t` counts
//! the optimiser steps taken so bias correction survives a resume.

use std::collections::BTreeMap;

use llm2comp_backbone::Param;
use llm2comp_tensor::ops::adamw::{self, AdamWConfig};
use llm2comp_tensor::{DType, Tensor};

use crate::{Result, TrainError};

/// AdamW with per-parameter moment buffers.
#[derive(Debug, Clone)]
pub struct Optimizer {
    cfg: AdamWConfig,
    t: u64,
    /// name → (m, v)
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl Optimizer {
    /// An optimiser with no state yet; `cfg.lr` is ignored (each step gets its own).
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            t: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The hyper-parameters (with the `lr` given at construction).
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of steps taken.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// One AdamW step of every parameter from its gradient at learning rate `lr`.
    /// Nothing is updated when an error is returned for a bad configuration or state.
    pub fn step(&mut self, params: &mut [Param], lr: f64) -> Result<()> {
        let cfg = AdamWConfig { lr, ..self.cfg };
        cfg.validate()?;
        // Check every parameter before touching any, so a bad state leaves the model intact.
        let mut seen = std::collections::HashSet::new();
        for p in params.iter() {
            if !seen.insert(p.name.as_str()) {
                return Err(opt_err(&p.name, "listed twice by the task"));
            }
            for (what, t) in [("value", &*p.value), ("gradient", &*p.grad)] {
                if t.dtype() != DType::F32 {
                    return Err(opt_err(
                        &p.name,
                        format!("{what} is {:?}; AdamW trains f32 tensors", t.dtype()),
                    ));
                }
            }
            if p.grad.shape() != p.value.shape() {
                return Err(opt_err(
                    &p.name,
                    format!(
                        "gradient shape {:?} differs from the value's {:?}",
                        p.grad.shape(),
                        p.value.shape()
                    ),
                ));
            }
            if let Some((m, v)) = self.moments.get(&p.name) {
                for (what, t) in [("m", m), ("v", v)] {
                    if t.shape() != p.value.shape() {
                        return Err(opt_err(
                            &p.name,
                            format!(
                                "moment {what} has shape {:?}, the parameter {:?}",
                                t.shape(),
                                p.value.shape()
                            ),
                        ));
                    }
                }
            }
        }
        let t = self.t + 1;
        for p in params.iter_mut() {
            let device = p.value.device();
            if !self.moments.contains_key(&p.name) {
                let z = || Tensor::try_zeros(p.value.shape(), DType::F32, device);
                self.moments.insert(p.name.clone(), (z()?, z()?));
            }
            let (m, v) = self.moments.get_mut(&p.name).expect("inserted above");
            // Moments restored from a checkpoint (or created above) live on the host
            // until the first step puts them where the parameter is.
            if m.device() != device {
                *m = m.to_device(device)?;
                *v = v.to_device(device)?;
            }
            adamw::step(p.value, p.grad, m, v, &cfg, t)?;
        }
        self.t = t;
        Ok(())
    }

    /// The state as (`m.<name>` / `v.<name>`, tensor) pairs, sorted by name, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for (name, (m, v)) in &self.moments {
            out.push((format!("m.{name}"), m));
            out.push((format!("v.{name}"), v));
        }
        out
    }

    /// Replaces the state with `t` and the `m.<name>` / `v.<name>` tensors of a checkpoint.
    /// Every m needs its v of the same shape; other names are refused.
    pub fn load_state(&mut self, t: u64, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let mut ms = BTreeMap::new();
        let mut vs = BTreeMap::new();
        for (key, tensor) in tensors {
            if let Some(name) = key.strip_prefix("m.") {
                ms.insert(name.to_string(), tensor);
            } else if let Some(name) = key.strip_prefix("v.") {
                vs.insert(name.to_string(), tensor);
            } else {
                return Err(opt_err(&key, "not an optimizer state name (m.* or v.*)"));
            }
        }
        let mut moments = BTreeMap::new();
        for (name, m) in ms {
            let v = vs
                .remove(&name)
                .ok_or_else(|| opt_err(&name, "has m but no v"))?;
            if m.shape() != v.shape() {
                return Err(opt_err(
                    &name,
                    format!("m has shape {:?} but v {:?}", m.shape(), v.shape()),
                ));
            }
            moments.insert(name, (m, v));
        }
        if let Some(name) = vs.keys().next() {
            return Err(opt_err(name, "has v but no m"));
        }
        if t == 0 && !moments.is_empty() {
            return Err(opt_err(
                moments.keys().next().unwrap(),
                "has moments but the step count t is 0",
            ));
        }
        self.t = t;
        self.moments = moments;
        Ok(())
    }

    /// Shape of the moments kept for `name`, if any.
    pub fn moment_shape(&self, name: &str) -> Option<&[usize]> {
        self.moments.get(name).map(|(m, _)| m.shape())
    }
}

fn opt_err(param: &str, msg: impl Into<String>) -> TrainError {
    TrainError::Optimizer {
        param: param.to_string(),
        msg: msg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm2comp_tensor::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape).unwrap()
    }

    struct Model {
        a: Tensor,
        ga: Tensor,
        b: Tensor,
        gb: Tensor,
    }

    impl Model {
        fn new() -> Self {
            Self {
                a: t(&[0.5, -1.0, 2.0, 0.25, 3.0, -0.75], &[2, 3]),
                ga: t(&[0.0; 6], &[2, 3]),
                b: t(&[1.5, -0.5], &[2]),
                gb: t(&[0.0; 2], &[2]),
            }
        }
        // b listed before a on purpose: order must not matter.
        fn params(&mut self) -> Vec<Param<'_>> {
            vec![
                Param {
                    name: "b".into(),
                    value: &mut self.b,
                    grad: &mut self.gb,
                },
                Param {
                    name: "a".into(),
                    value: &mut self.a,
                    grad: &mut self.ga,
                },
            ]
        }
        fn set_grads(&mut self, k: usize) {
            let s = k as f32 + 1.0;
            self.ga = t(&[0.1 * s, -0.2, 0.3, -0.4 * s, 0.5, 0.05], &[2, 3]);
            self.gb = t(&[-0.3, 0.7 / s], &[2]);
        }
    }

    fn cfg() -> AdamWConfig {
        AdamWConfig {
            lr: 123.0, // ignored
            weight_decay: 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn equals_adamw_step_by_hand() {
        let mut model = Model::new();
        let mut opt = Optimizer::new(cfg());
        let (mut a, mut b) = (model.a.clone(), model.b.clone());
        let z = |s: &[usize]| Tensor::zeros(s, DType::F32, Device::Cpu);
        let (mut ma, mut va, mut mb, mut vb) = (z(&[2, 3]), z(&[2, 3]), z(&[2]), z(&[2]));
        for (k, lr) in [0.01, 0.02, 0.005].into_iter().enumerate() {
            model.set_grads(k);
            opt.step(&mut model.params(), lr).unwrap();
            let c = AdamWConfig { lr, ..cfg() };
            let tk = k as u64 + 1;
            adamw::step(&mut a, &model.ga, &mut ma, &mut va, &c, tk).unwrap();
            adamw::step(&mut b, &model.gb, &mut mb, &mut vb, &c, tk).unwrap();
            assert_eq!(model.a.to_vec_f32(), a.to_vec_f32(), "step {k}");
            assert_eq!(model.b.to_vec_f32(), b.to_vec_f32(), "step {k}");
        }
        assert_eq!(opt.t(), 3);
        let st = opt.state_tensors();
        let names: Vec<&str> = st.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m.a", "v.a", "m.b", "v.b"]);
        assert_eq!(st[0].1.to_vec_f32(), ma.to_vec_f32());
        assert_eq!(st[3].1.to_vec_f32(), vb.to_vec_f32());
    }

    #[test]
    fn state_round_trips_and_continues_identically() {
        let mut m1 = Model::new();
        let mut o1 = Optimizer::new(cfg());
        m1.set_grads(0);
        o1.step(&mut m1.params(), 0.01).unwrap();
        // Copy model and optimiser state into fresh objects, then step both.
        let mut m2 = Model::new();
        m2.a = m1.a.clone();
        m2.b = m1.b.clone();
        let mut o2 = Optimizer::new(cfg());
        let state = o1
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect();
        o2.load_state(o1.t(), state).unwrap();
        for (m, o) in [(&mut m1, &mut o1), (&mut m2, &mut o2)] {
            m.set_grads(1);
            o.step(&mut m.params(), 0.02).unwrap();
        }
        assert_eq!(m1.a.to_vec_f32(), m2.a.to_vec_f32());
        assert_eq!(m1.b.to_vec_f32(), m2.b.to_vec_f32());
        assert_eq!(o2.t(), 2);
        // A fresh optimiser (t = 0) would have moved differently: the test can fail.
        let mut m3 = Model::new();
        m3.a = m2.a.clone();
        let mut o3 = Optimizer::new(cfg());
        m3.set_grads(1);
        o3.step(&mut m3.params(), 0.02).unwrap();
        assert_ne!(m3.a.to_vec_f32(), m1.a.to_vec_f32());
    }

    #[test]
    fn shape_mismatch_names_the_parameter_and_updates_nothing() {
        let mut model = Model::new();
        let mut opt = Optimizer::new(cfg());
        let mut state = BTreeMap::new();
        state.insert("m.a".to_string(), t(&[0.0; 6], &[3, 2]));
        state.insert("v.a".to_string(), t(&[0.0; 6], &[3, 2]));
        opt.load_state(1, state).unwrap();
        model.set_grads(0);
        let before = model.b.to_vec_f32();
        let err = opt.step(&mut model.params(), 0.01).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("[3, 2]"), "{err}");
        assert_eq!(model.b.to_vec_f32(), before, "b must not move");
        assert_eq!(opt.t(), 1);
    }

    #[test]
    fn load_state_rejects_unpaired_and_foreign_names() {
        let mut opt = Optimizer::new(cfg());
        let one = |k: &str| BTreeMap::from([(k.to_string(), t(&[0.0], &[1]))]);
        let err = opt.load_state(1, one("m.w")).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("no v"), "{err}");
        let err = opt.load_state(1, one("v.w")).unwrap_err().to_string();
        assert!(err.contains("no m"), "{err}");
        let err = opt.load_state(1, one("w")).unwrap_err().to_string();
        assert!(err.contains("`w`"), "{err}");
        let mut pair = one("m.w");
        pair.insert("v.w".into(), t(&[0.0, 0.0], &[2]));
        assert!(opt.load_state(1, pair).is_err());
    }
}
