//! The AdamW step on the GPU against the CPU op over several steps (fresh
//! gradients each step, so the moments matter). The kernel uses the CPU's
//! scalars and operation order with explicitly rounded intrinsics, so the
//! results are expected bit-identical; the bound is 1e-6.

use llm2comp_tensor::ops::adamw::{self, AdamWConfig};
use llm2comp_tensor::{DType, Device, Tensor};

use crate::common;

#[test]
fn adamw_matches_cpu_over_steps() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[313, 331]);
}

/// A tiny tensor, for the compute-sanitizer pass (which runs tests named `small`).
#[test]
fn adamw_small_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[3, 41]);
}

/// Four steps against the CPU, then a bf16 gradient must be refused.
fn compare(dev: Device, shape: &[usize]) {
    let cfg = AdamWConfig {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut p_cpu = common::randn(shape, 31);
    let mut m_cpu = Tensor::zeros(shape, DType::F32, Device::Cpu);
    let mut v_cpu = m_cpu.clone();
    let mut p_gpu = common::to_gpu(&p_cpu, DType::F32, dev);
    let mut m_gpu = common::to_gpu(&m_cpu, DType::F32, dev);
    let mut v_gpu = common::to_gpu(&v_cpu, DType::F32, dev);
    for t in 1..=4u64 {
        let g = common::randn(shape, 40 + t);
        let g_gpu = common::to_gpu(&g, DType::F32, dev);
        adamw::step(&mut p_cpu, &g, &mut m_cpu, &mut v_cpu, &cfg, t).unwrap();
        adamw::step(&mut p_gpu, &g_gpu, &mut m_gpu, &mut v_gpu, &cfg, t).unwrap();
        common::check(&format!("adamw step {t} params"), &p_gpu, &p_cpu, 1e-6);
        common::check(&format!("adamw step {t} m"), &m_gpu, &m_cpu, 1e-6);
        common::check(&format!("adamw step {t} v"), &v_gpu, &v_cpu, 1e-6);
    }
    let bf = common::to_gpu(&p_cpu, DType::BF16, dev);
    let err = adamw::step(&mut p_gpu, &bf, &mut m_gpu, &mut v_gpu, &cfg, 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("grads") && err.contains("BF16"), "{err}");
}
