//! rmsnorm, rope, swiglu and residual on the GPU against the CPU ops, for f32
//! and bf16 device tensors. The CPU reference always runs in f32 on exactly the
//! values the GPU saw (bf16-rounded copies for bf16), so the bounds measure the
//! kernels, not the input rounding: ~1e-5 for f32 (summation order, fused
//! multiply-adds), ~1e-2 for bf16 (outputs rounded to 8 mantissa bits).
//! Sizes are odd on purpose: rows not a multiple of any block, dims 65 and 576
//! (SmolLM2's hidden size), and more rows than the rmsnorm backward's blocks.

use llm2comp_tensor::ops::rope::{RopeConfig, RopeScaling, RopeTable};
use llm2comp_tensor::ops::swiglu;
use llm2comp_tensor::ops::{residual, rmsnorm, rope};
use llm2comp_tensor::{DType, Device, Tensor};

use crate::common;

/// Each device dtype with its relative-error bound.
const DTYPES: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::BF16, 1e-2)];

/// `t` on the GPU as `dtype`, and the f32 CPU copy of exactly those values.
fn upload(t: &Tensor, dtype: DType, dev: Device) -> (Tensor, Tensor) {
    let g = common::to_gpu(t, dtype, dev);
    let c = common::to_cpu_f32(&g);
    (g, c)
}

/// `t` with every element multiplied by `k`.
fn scaled(t: &Tensor, k: f32) -> Tensor {
    let v = t.to_vec_f32().iter().map(|x| x * k).collect();
    Tensor::from_vec::<f32>(v, t.shape()).unwrap()
}

/// The shared bound check (it also fails on any non-finite value: an unwritten,
/// poisoned output) after converting the device result to f32 on the CPU.
fn check(name: &str, got: &Tensor, want: &Tensor, bound: f64) {
    common::check(name, &common::to_cpu_f32(got), want, bound);
}

#[test]
fn rmsnorm_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    let eps = 1e-5;
    let shapes: [&[usize]; 3] = [&[37, 576], &[1100, 65], &[3, 5, 4096]];
    for (si, shape) in shapes.iter().enumerate() {
        let dim = *shape.last().unwrap();
        let seed = 100 + 10 * si as u64;
        let x = scaled(&common::randn(shape, seed), 2.0);
        let w = common::randn(&[dim], seed + 1);
        let dy = common::randn(shape, seed + 2);
        let dw0 = common::randn(&[dim], seed + 3);
        for (dt, bound) in DTYPES {
            // A bf16 model may keep an f32 norm weight, so bf16 x runs with both.
            let wtypes: &[DType] = if dt == DType::F32 {
                &[DType::F32]
            } else {
                &[DType::BF16, DType::F32]
            };
            for &wt in wtypes {
                let tag = format!("rmsnorm {shape:?} x {dt:?} w {wt:?}");
                let (xg, xc) = upload(&x, dt, dev);
                let (wg, wc) = upload(&w, wt, dev);
                let (dyg, dyc) = upload(&dy, dt, dev);
                let got = rmsnorm::forward(&xg, &wg, eps).unwrap();
                let want = rmsnorm::forward(&xc, &wc, eps).unwrap();
                assert_eq!(got.rstd.dtype(), DType::F32, "{tag}: rstd dtype");
                check(&format!("{tag} y"), &got.y, &want.y, bound);
                check(&format!("{tag} rstd"), &got.rstd, &want.rstd, 1e-5);

                // dweight f32, pre-filled: the gradient must be added to it.
                let mut dwg = common::to_gpu(&dw0, DType::F32, dev);
                let mut dwc = dw0.clone();
                let dxg = rmsnorm::backward(&dyg, &xg, &wg, &got.rstd, Some(&mut dwg)).unwrap();
                let dxc = rmsnorm::backward(&dyc, &xc, &wc, &want.rstd, Some(&mut dwc)).unwrap();
                check(&format!("{tag} dx"), &dxg, &dxc, bound);
                // The sum over rows is f32 on both sides whatever x's dtype.
                let dw_bound = if dt == DType::F32 { 1e-5 } else { 1e-4 };
                check(&format!("{tag} dweight (f32, added)"), &dwg, &dwc, dw_bound);

                // Frozen weight: the path without the reduction gives the same dx.
                let dx_frozen = rmsnorm::backward(&dyg, &xg, &wg, &got.rstd, None).unwrap();
                check(&format!("{tag} dx (no dweight)"), &dx_frozen, &dxc, bound);

                if wt == DType::BF16 {
                    let (mut dwg, mut dwc) = upload(&dw0, DType::BF16, dev);
                    rmsnorm::backward(&dyg, &xg, &wg, &got.rstd, Some(&mut dwg)).unwrap();
                    rmsnorm::backward(&dyc, &xc, &wc, &want.rstd, Some(&mut dwc)).unwrap();
                    check(&format!("{tag} dweight (bf16, added)"), &dwg, &dwc, 1e-2);
                }
            }
        }
    }
}

#[test]
fn rmsnorm_rejects_f16_and_a_bf16_rstd() {
    let Some(dev) = common::cuda() else { return };
    let x = common::to_gpu(&common::randn(&[4, 8], 1), DType::F16, dev);
    let w = common::to_gpu(&common::randn(&[8], 2), DType::F32, dev);
    let e = rmsnorm::forward(&x, &w, 1e-5).unwrap_err().to_string();
    assert!(e.contains("rmsnorm") && e.contains("x"), "{e}");
    let x = common::to_gpu(&common::randn(&[4, 8], 1), DType::F32, dev);
    let bad_rstd = common::to_gpu(&common::randn(&[4], 3), DType::BF16, dev);
    let e = rmsnorm::backward(&x, &x, &w, &bad_rstd, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rstd"), "{e}");
}

/// Positions of a packed batch (each sequence restarts at 0) plus a few near the table's end.
fn positions(max_pos: usize) -> Vec<u32> {
    let mut p: Vec<u32> = [20u32, 1, 13].iter().flat_map(|&n| 0..n).collect();
    p.extend([max_pos as u32 - 1, max_pos as u32 - 7, 1000]);
    p
}

#[test]
fn rope_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    let max_pos = 4096;
    let cfgs = [
        RopeConfig {
            head_dim: 64,
            theta: 10_000.0,
            scaling: None,
        },
        RopeConfig {
            head_dim: 14,
            theta: 500_000.0,
            scaling: Some(RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 1024,
            }),
        },
    ];
    let pos = positions(max_pos);
    for (ci, cfg) in cfgs.iter().enumerate() {
        let gpu_table = RopeTable::new(cfg, max_pos, dev).unwrap();
        let cpu_table = RopeTable::new(cfg, max_pos, Device::Cpu).unwrap();
        let shape = [pos.len(), 3, cfg.head_dim];
        let x = common::randn(&shape, 200 + ci as u64);
        let dy = common::randn(&shape, 300 + ci as u64);
        for (dt, bound) in DTYPES {
            let tag = format!("rope D {} {dt:?}", cfg.head_dim);
            let (xg, xc) = upload(&x, dt, dev);
            let (dyg, dyc) = upload(&dy, dt, dev);
            let want = rope::forward(&xc, &pos, &cpu_table).unwrap();
            let got = rope::forward(&xg, &pos, &gpu_table).unwrap();
            check(&format!("{tag} forward"), &got, &want, bound);
            let mut inplace = xg.clone();
            rope::forward_inplace(&mut inplace, &pos, &gpu_table).unwrap();
            check(&format!("{tag} forward_inplace"), &inplace, &want, bound);
            // The input must be untouched by the out-of-place forward and by the clone's rotation.
            check(&format!("{tag} x unchanged"), &xg, &xc, 0.0);
            let want = rope::backward(&dyc, &pos, &cpu_table).unwrap();
            let got = rope::backward(&dyg, &pos, &gpu_table).unwrap();
            check(&format!("{tag} backward"), &got, &want, bound);
            let mut inplace = dyg.clone();
            rope::backward_inplace(&mut inplace, &pos, &gpu_table).unwrap();
            check(&format!("{tag} backward_inplace"), &inplace, &want, bound);
        }
    }
}

#[test]
fn swiglu_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    let shapes: [&[usize]; 3] = [&[37, 576], &[13, 65], &[2, 3, 1000]];
    for (si, shape) in shapes.iter().enumerate() {
        let seed = 400 + 10 * si as u64;
        // Gate spread wide enough to take both branches of the stable sigmoid far out.
        let gate = scaled(&common::randn(shape, seed), 6.0);
        let up = common::randn(shape, seed + 1);
        let dout = common::randn(shape, seed + 2);
        for (dt, bound) in DTYPES {
            let tag = format!("swiglu {shape:?} {dt:?}");
            let (gg, gc) = upload(&gate, dt, dev);
            let (ug, uc) = upload(&up, dt, dev);
            let (dg, dc) = upload(&dout, dt, dev);
            let got = swiglu::forward(&gg, &ug).unwrap();
            let want = swiglu::forward(&gc, &uc).unwrap();
            check(&format!("{tag} forward"), &got, &want, bound);
            let (dgate, dup) = swiglu::backward(&dg, &gg, &ug).unwrap();
            let (want_dgate, want_dup) = swiglu::backward(&dc, &gc, &uc).unwrap();
            check(&format!("{tag} dgate"), &dgate, &want_dgate, bound);
            check(&format!("{tag} dup"), &dup, &want_dup, bound);
        }
    }
}

#[test]
fn swiglu_rejects_mixed_dtypes() {
    let Some(dev) = common::cuda() else { return };
    let g = common::to_gpu(&common::randn(&[3, 5], 1), DType::F32, dev);
    let u = common::to_gpu(&common::randn(&[3, 5], 2), DType::BF16, dev);
    let e = swiglu::forward(&g, &u).unwrap_err().to_string();
    assert!(e.contains("swiglu") && e.contains("up"), "{e}");
}

#[test]
fn residual_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    let shape = [37, 577];
    let a = common::randn(&shape, 500);
    let b = common::randn(&shape, 501);
    for (dt, bound) in DTYPES {
        let tag = format!("residual {dt:?}");
        let (ag, ac) = upload(&a, dt, dev);
        let (bg, bc) = upload(&b, dt, dev);
        let got = residual::forward(&ag, &bg).unwrap();
        let want = residual::forward(&ac, &bc).unwrap();
        check(&format!("{tag} forward"), &got, &want, bound);
        let (da, db) = residual::backward(&bg).unwrap();
        check(&format!("{tag} da"), &da, &bc, 0.0);
        check(&format!("{tag} db"), &db, &bc, 0.0);
        // add_into mixes dtypes: an f32 accumulator may take a bf16 gradient.
        for (xt, xbound) in DTYPES {
            let tag = format!("residual add_into acc {dt:?} x {xt:?}");
            let (xg, xc) = upload(&b, xt, dev);
            let mut acc = ag.clone();
            residual::add_into(&mut acc, &xg).unwrap();
            let mut want = ac.clone();
            residual::add_into(&mut want, &xc).unwrap();
            check(&tag, &acc, &want, bound.max(xbound));
            check(&format!("{tag}: x unchanged"), &xg, &xc, 0.0);
        }
    }
}
