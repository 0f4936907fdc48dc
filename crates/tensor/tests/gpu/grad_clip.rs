//! Global-norm clipping on the GPU against the CPU op: many tensors of mixed
//! sizes (tiny LoRA-like ones, one past the partial-sum grid so the kernel's
//! grid-stride loop runs, an empty one). Both norms are f64 sums of f64
//! squares in different orders: bound 1e-10. The scale is one f32 multiply
//! by the same factor: 1e-6 for f32, 1e-2 for bf16 (rounded to 8 bits).
//! A NaN or Inf must give the CPU's error and leave every gradient untouched.

use llm2comp_tensor::ops::grad_clip;
use llm2comp_tensor::{DType, Tensor};

use crate::common;

const SHAPES: [&[usize]; 6] = [&[3], &[1], &[701, 333], &[17, 5], &[0], &[257, 3]];

fn grads(scale: f32) -> Vec<Tensor> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = common::randn(s, 60 + i as u64);
            let v = t.to_vec_f32().iter().map(|x| x * scale).collect();
            Tensor::from_vec::<f32>(v, s).unwrap()
        })
        .collect()
}

#[test]
fn clip_grad_norm_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    for (dt, bound) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        // Norm ≈ 0.01·sqrt(233k·E[x²]), a few units: max_norm 1 clips, 100 does not.
        for max_norm in [1.0, 100.0] {
            let tag = format!("clip_grad_norm {dt} max_norm={max_norm}");
            let mut gpu: Vec<Tensor> = grads(0.01)
                .iter()
                .map(|t| common::to_gpu(t, dt, dev))
                .collect();
            let mut cpu: Vec<Tensor> = gpu.iter().map(common::to_cpu_f32).collect();
            let want_norm = {
                let views: Vec<&Tensor> = cpu.iter().collect();
                grad_clip::global_norm(&views).unwrap()
            };
            let got_norm = {
                let views: Vec<&Tensor> = gpu.iter().collect();
                grad_clip::global_norm(&views).unwrap()
            };
            let rel = (got_norm - want_norm).abs() / want_norm;
            eprintln!(
                "{tag} global_norm: rel err {rel:.2e} (bound 1e-10), {got_norm} vs {want_norm}"
            );
            assert!(rel <= 1e-10, "{tag}: norm {got_norm} vs {want_norm}");

            let mut gv: Vec<&mut Tensor> = gpu.iter_mut().collect();
            let got = grad_clip::clip_grad_norm(&mut gv, max_norm).unwrap();
            let mut cv: Vec<&mut Tensor> = cpu.iter_mut().collect();
            let want = grad_clip::clip_grad_norm(&mut cv, max_norm).unwrap();
            assert!((got - want).abs() <= 1e-10 * want, "{tag}: {got} vs {want}");
            for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                if c.numel() > 0 {
                    common::check(&format!("{tag} grad {i}"), g, c, bound);
                }
            }
        }
    }
}

#[test]
fn non_finite_norm_is_the_cpu_error_and_grads_stay() {
    let Some(dev) = common::cuda() else { return };
    for bad in [f32::NAN, f32::INFINITY] {
        let mut host = grads(1.0);
        let mut v = host[2].to_vec_f32();
        v[100_000] = bad;
        host[2] = Tensor::from_vec(v, SHAPES[2]).unwrap();
        let mut gpu: Vec<Tensor> = host
            .iter()
            .map(|t| common::to_gpu(t, DType::F32, dev))
            .collect();
        let mut gv: Vec<&mut Tensor> = gpu.iter_mut().collect();
        let err = grad_clip::clip_grad_norm(&mut gv, 1.0)
            .unwrap_err()
            .to_string();
        let mut cv: Vec<&mut Tensor> = host.iter_mut().collect();
        let want = grad_clip::clip_grad_norm(&mut cv, 1.0)
            .unwrap_err()
            .to_string();
        eprintln!("clip_grad_norm {bad} on GPU: {err}");
        assert_eq!(err, want);
        for (g, h) in gpu.iter().zip(&host) {
            let bits = |t: &Tensor| -> Vec<u32> {
                common::to_cpu_f32(t)
                    .to_vec_f32()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(g), bits(h), "a gradient changed");
        }
    }
}

/// `grad_clip::scale` (the contrastive step scales dL/demb with it): the same
/// multiply as the CPU's, so f32 is exact to 1e-7 and bf16 within its 8 bits.
#[test]
fn scale_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    for (dt, bound) in [(DType::F32, 1e-7), (DType::BF16, 1e-2)] {
        let mut gpu: Vec<Tensor> = grads(1.0)
            .iter()
            .map(|t| common::to_gpu(t, dt, dev))
            .collect();
        let mut cpu: Vec<Tensor> = gpu.iter().map(common::to_cpu_f32).collect();
        let mut gv: Vec<&mut Tensor> = gpu.iter_mut().collect();
        grad_clip::scale(&mut gv, -0.37).unwrap();
        let mut cv: Vec<&mut Tensor> = cpu.iter_mut().collect();
        grad_clip::scale(&mut cv, -0.37).unwrap();
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            if c.numel() > 0 {
                common::check(&format!("scale {dt} tensor {i}"), g, c, bound);
            }
        }
    }
}
