//! InfoNCE on CUDA tensors against the CPU op. The CUDA path deliberately runs
//! the CPU kernel on host copies (see src/cuda/infonce.rs), so f32 must agree
//! to rounding of nothing (bound 1e-6); for bf16 inputs the reference runs on
//! the same rounded values and only dq/dk are rounded back to bf16 (1e-2).

use llm2comp_tensor::ops::infonce;
use llm2comp_tensor::{DType, Device};

use crate::common;

#[test]
fn infonce_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    let (b, m, d) = (13, 29, 67);
    let labels: Vec<u32> = (0..b as u32).map(|i| (i * 7 + 3) % m as u32).collect();
    let q = common::randn(&[b, d], 51);
    let k = common::randn(&[m, d], 52);
    for (dt, bound) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        let tag = format!("infonce {dt}");
        let (qg, kg) = (common::to_gpu(&q, dt, dev), common::to_gpu(&k, dt, dev));
        let (qc, kc) = (common::to_cpu_f32(&qg), common::to_cpu_f32(&kg));
        let out = infonce::forward(&qg, &kg, &labels, 0.05).unwrap();
        let want = infonce::forward(&qc, &kc, &labels, 0.05).unwrap();
        let rel = ((out.loss - want.loss) / want.loss).abs() as f64;
        eprintln!(
            "{tag} loss: rel err {rel:.2e} (bound 1e-6), {} vs {}",
            out.loss, want.loss
        );
        assert!(rel <= 1e-6, "{tag}: loss {} vs {}", out.loss, want.loss);
        assert_eq!(out.probs.device(), dev);
        common::check(&format!("{tag} probs"), &out.probs, &want.probs, 1e-6);
        let g = infonce::backward(&out, &labels, 0.05).unwrap();
        let gw = infonce::backward(&want, &labels, 0.05).unwrap();
        assert_eq!((g.dq.device(), g.dq.dtype()), (dev, dt));
        assert_eq!((g.dk.device(), g.dk.dtype()), (dev, dt));
        assert_eq!(gw.dq.device(), Device::Cpu);
        common::check(&format!("{tag} dq"), &g.dq, &gw.dq, bound);
        common::check(&format!("{tag} dk"), &g.dk, &gw.dk, bound);
    }
}
