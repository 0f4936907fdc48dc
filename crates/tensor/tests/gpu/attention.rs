//! CUDA attention (both kernel sets) against the CPU op.
//!
//! The CPU gets the bf16-rounded inputs as f32, so the comparison measures
//! only accumulation and output rounding. The batch packs sequences of 1, 7,
//! 129, 512 and 2049 tokens: lengths below, at and across the 64-row tiles,
//! and keys of other sequences next to every tile edge. Both kernel sets run
//! on every case and all errors are printed before any assertion, so a GPU
//! log tells whether the MMA kernels alone are wrong (harness, masking and
//! hash are shared with the simple ones).

use crate::common;
use llm2comp_tensor::ops::attention::{
    self, AttentionKernel, AttentionOpts, backward_with, forward_with,
};
use llm2comp_tensor::ops::dropout::{self, DropoutMask};
use llm2comp_tensor::{DType, Device, Tensor};

const LENS: &[usize] = &[1, 7, 129, 512, 2049];

fn cu_of(lens: &[usize]) -> Vec<u32> {
    let mut cu = vec![0u32];
    for &n in lens {
        cu.push(cu.last().unwrap() + n as u32);
    }
    cu
}

struct Case {
    lens: &'static [usize],
    hq: usize,
    hkv: usize,
    d: usize,
    causal: bool,
    dropout: Option<DropoutMask>,
    dtype: DType,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{:?} d{} {}:{} {}{}",
            self.dtype,
            self.d,
            self.hq,
            self.hkv,
            if self.causal { "causal" } else { "bidir" },
            if self.dropout.is_some() {
                " dropout"
            } else {
                ""
            }
        )
    }
}

/// (o, lse, dq, dk, dv) on the CPU.
fn cpu_run(c: &Case, x: &[Tensor; 4], cu: &[u32]) -> [Tensor; 5] {
    let opts = AttentionOpts {
        dropout: c.dropout.clone(),
        ..AttentionOpts::new(c.d, c.causal)
    };
    let [q, k, v, dout] = x;
    let out = attention::forward(q, k, v, cu, &opts).expect("cpu forward");
    let g = attention::backward(dout, q, k, v, &out.o, &out.lse, cu, &opts).expect("cpu bwd");
    [out.o, out.lse, g.dq, g.dk, g.dv]
}

/// Runs one kernel set; returns "name: errors" and whether it passed.
fn gpu_check(
    c: &Case,
    kernel: AttentionKernel,
    dev: Device,
    x: &[Tensor; 4],
    cu: &[u32],
    want: &[Tensor; 5],
) -> (String, bool) {
    let opts = AttentionOpts {
        dropout: c.dropout.clone(),
        ..AttentionOpts::new(c.d, c.causal)
    };
    let [q, k, v, dout] = x.clone().map(|t| common::to_gpu(&t, c.dtype, dev));
    let out = forward_with(&q, &k, &v, cu, &opts, kernel).expect("gpu forward");
    let g = backward_with(&dout, &q, &k, &v, &out.o, &out.lse, cu, &opts, kernel)
        .expect("gpu backward");
    let got = [&out.o, &out.lse, &g.dq, &g.dk, &g.dv];
    let (bound, lse_bound) = match c.dtype {
        DType::F32 => (1e-4, 1e-5),
        _ => (1e-2, 1e-3),
    };
    let mut ok = true;
    let mut line = format!("attention {:?} {}:", kernel, c.name());
    for (i, what) in ["o", "lse", "dq", "dk", "dv"].iter().enumerate() {
        let b = if i == 1 { lse_bound } else { bound };
        // rel_err is infinite when the GPU output holds a NaN (poison).
        let e = common::rel_err(&common::to_cpu_f32(got[i]), &want[i]);
        let finite = e.is_finite();
        ok &= finite && e <= b;
        line += &format!(
            " {what} rel err {e:.2e} (bound {b:.0e}){}",
            if finite { "" } else { " NaN!" }
        );
        if i == 0 && !(finite && e <= b) {
            line += &worst_o(got[0], &want[0]);
        }
    }
    (line, ok)
}

/// Where o differs most from the reference: "(token, head, channel) got vs
/// want", so a wrong fragment or shared-memory layout shows its pattern.
fn worst_o(got: &Tensor, want: &Tensor) -> String {
    let (g, w) = (common::to_cpu_f32(got).to_vec_f32(), want.to_vec_f32());
    let (hq, d) = (want.shape()[1], want.shape()[2]);
    let (i, _) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .enumerate()
        .fold((0, -1.0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    format!(
        " worst o at (token {}, head {}, channel {}): {} vs {}",
        i / (hq * d),
        i / d % hq,
        i % d,
        g[i],
        w[i]
    )
}

/// Every kernel set to test on `dev`: `kernels`, plus the Hopper forwards (v5,
/// v4) on compute capability 9.x.
fn kernels_for(dev: Device, kernels: &[AttentionKernel]) -> Vec<AttentionKernel> {
    let mut ks = kernels.to_vec();
    let Device::Cuda(o) = dev else { return ks };
    let hopper = llm2comp_tensor::cuda::device(o).is_ok_and(|d| d.is_hopper());
    if hopper && kernels.contains(&AttentionKernel::Mma) {
        ks.extend([AttentionKernel::Wgmma, AttentionKernel::WgmmaV4]);
    }
    ks
}

fn check(cases: &[Case], kernels: &[AttentionKernel]) {
    let Some(dev) = common::cuda() else { return };
    let kernels = &kernels_for(dev, kernels)[..];
    let mut failed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let cu = cu_of(c.lens);
        let t = *cu.last().unwrap() as usize;
        let seed = 100 * i as u64 + c.d as u64;
        // Rounded to the GPU dtype so the CPU reads the very same values.
        let round = |t: Tensor| common::rounded(&t, c.dtype);
        let x = [
            round(common::randn(&[t, c.hq, c.d], seed)),
            round(common::randn(&[t, c.hkv, c.d], seed + 1)),
            round(common::randn(&[t, c.hkv, c.d], seed + 2)),
            round(common::randn(&[t, c.hq, c.d], seed + 3)),
        ];
        let want = cpu_run(c, &x, &cu);
        for &kernel in kernels {
            let (line, ok) = gpu_check(c, kernel, dev, &x, &cu, &want);
            eprintln!("{line}");
            if !ok {
                failed.push(line);
            }
        }
    }
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

fn bf16_cases(d: usize, causal: bool) -> Vec<Case> {
    [(4, 1), (2, 2)]
        .into_iter()
        .map(|(hq, hkv)| Case {
            lens: LENS,
            hq,
            hkv,
            d,
            causal,
            dropout: None,
            dtype: DType::BF16,
        })
        .collect()
}

/// Every kernel set: the current MMA version, the earlier ones (kept for the
/// benchmarks' same-run comparison, so they must stay right), the simple one.
const ALL_KERNELS: &[AttentionKernel] = &[
    AttentionKernel::Mma,
    AttentionKernel::MmaV1,
    AttentionKernel::MmaV2,
    AttentionKernel::Simple,
];

#[test]
fn attention_bf16_d64_causal() {
    check(&bf16_cases(64, true), ALL_KERNELS);
}

#[test]
fn attention_bf16_d64_bidirectional() {
    check(&bf16_cases(64, false), ALL_KERNELS);
}

#[test]
fn attention_bf16_d128_causal() {
    check(&bf16_cases(128, true), ALL_KERNELS);
}

#[test]
fn attention_bf16_d128_bidirectional() {
    check(&bf16_cases(128, false), ALL_KERNELS);
}

#[test]
fn attention_bf16_dropout_drops_what_the_cpu_drops() {
    let dropout = Some(DropoutMask::new(0.1, 0x5eed, 12_345));
    let cases = [Case {
        lens: LENS,
        hq: 4,
        hkv: 1,
        d: 128,
        causal: true,
        dropout,
        dtype: DType::BF16,
    }];
    check(&cases, ALL_KERNELS);
}

/// Per-sequence dropout keys (a packed contrastive batch): each sequence draws
/// its own stream, indexed from its first token, as the CPU's `Dropper::at`.
#[test]
fn attention_bf16_keyed_dropout_drops_what_the_cpu_drops() {
    let cu = cu_of(LENS);
    let keys: Vec<u64> = (0..LENS.len() as u64).map(|b| 40 + 3 * b).collect();
    let mask = DropoutMask::new(0.2, 0x5eed, 777)
        .with_keys(Some(dropout::SeqKeys::new(&cu, &keys).unwrap()));
    let cases = [true, false].map(|causal| Case {
        lens: LENS,
        hq: 4,
        hkv: 2,
        d: 64,
        causal,
        dropout: Some(mask.clone()),
        dtype: DType::BF16,
    });
    check(&cases, ALL_KERNELS);
}

#[test]
fn attention_f32_runs_the_simple_kernels() {
    let cases = [false, true].map(|causal| Case {
        lens: &[1, 7, 129, 300],
        hq: 4,
        hkv: 2,
        d: 64,
        causal,
        dropout: None,
        dtype: DType::F32,
    });
    // Auto must pick the simple kernels for f32.
    check(&cases, &[AttentionKernel::Auto]);
}

#[test]
fn attention_mma_rejects_what_it_cannot_run() {
    let Some(dev) = common::cuda() else { return };
    let cu = [0u32, 5];
    let opts = AttentionOpts::new(64, true);
    let q = common::to_gpu(&common::randn(&[5, 2, 64], 1), DType::F32, dev);
    let e = forward_with(&q, &q, &q, &cu, &opts, AttentionKernel::Mma).unwrap_err();
    assert!(e.to_string().contains("bf16"), "{e}");
    let q = common::to_gpu(&common::randn(&[5, 2, 96], 1), DType::BF16, dev);
    let opts = AttentionOpts::new(96, true);
    let e = forward_with(&q, &q, &q, &cu, &opts, AttentionKernel::Mma).unwrap_err();
    assert!(e.to_string().contains("head_dim"), "{e}");
    // Auto falls back to the simple kernels for D = 96.
    assert!(forward_with(&q, &q, &q, &cu, &opts, AttentionKernel::Auto).is_ok());
    let q = common::to_gpu(&common::randn(&[5, 1, 264], 1), DType::BF16, dev);
    let opts = AttentionOpts::new(264, false);
    let e = attention::forward(&q, &q, &q, &cu, &opts).unwrap_err();
    assert!(e.to_string().contains("head_dim <= 256"), "{e}");
    eprintln!("attention_mma_rejects_what_it_cannot_run: ok");
}

/// A case small enough for compute-sanitizer (memcheck, racecheck), which
/// `scripts/gpu-check.sh` runs on tests named `small`: every kernel, both
/// masks, GQA, a ragged tile and a length-1 sequence.
#[test]
fn attention_small_cases_for_the_sanitizers() {
    let mut cases = Vec::new();
    for d in [64, 128] {
        for causal in [true, false] {
            cases.push(Case {
                lens: &[1, 70],
                hq: 2,
                hkv: 1,
                d,
                causal,
                dropout: None,
                dtype: DType::BF16,
            });
        }
    }
    check(&cases, ALL_KERNELS);
}
