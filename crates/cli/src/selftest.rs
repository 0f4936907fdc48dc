//! `llm2comp selftest`: one pre-norm Llama block of SmolLM2-135M's shape,
//! written directly against the tensor core's op functions, trained with AdamW
//! on one fixed packed batch (next-token prediction, tied LM head).
//!
//! Memorising a fixed batch only works if every forward and backward in the
//! chain is right, so a falling loss is an end-to-end check that unit tests of
//! single ops cannot give; the per-family timings show where a step's time
//! goes. The real layers arrive with the backbone crate; this stays a probe
//! of the ops alone.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args as ClapArgs;
use llm2comp_tensor::ops::adamw::{self, AdamWConfig};
use llm2comp_tensor::ops::attention::{self, AttentionOpts};
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::ops::rope::{self, RopeConfig, RopeTable};
use llm2comp_tensor::ops::{
    dropout::DropoutMask, embedding, grad_clip, matmul, residual, rmsnorm, swiglu,
};
use llm2comp_tensor::{DType, Device, Tensor, testing};

use crate::out;

/// Options of `llm2comp selftest`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Optimiser steps on the fixed batch.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Sequences in the packed batch.
    #[arg(long, default_value_t = 4)]
    sequences: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Vocabulary size (SmolLM2's is 49152).
    #[arg(long, default_value_t = 49152)]
    vocab: usize,
    /// Attention-probability dropout (exercises the seeded mask).
    #[arg(long, default_value_t = 0.0)]
    attn_dropout: f32,
    /// Seed of the weights, the batch and the dropout masks.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const HIDDEN: usize = 576;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const MLP: usize = 1536;
const EPS: f32 = 1e-5;
const ROPE_THETA: f64 = 100_000.0;

/// The block's trainable parameters, in a fixed order for the optimiser.
struct Params {
    names: Vec<&'static str>,
    tensors: Vec<Tensor>,
}

impl Params {
    fn new(vocab: usize, seed: u64) -> Result<Self> {
        let shapes: [(&str, Vec<usize>, f64); 11] = [
            ("embed", vec![vocab, HIDDEN], 0.02),
            ("norm1", vec![HIDDEN], 0.0),
            ("wq", vec![HEADS * HEAD_DIM, HIDDEN], 0.02),
            ("wk", vec![KV_HEADS * HEAD_DIM, HIDDEN], 0.02),
            ("wv", vec![KV_HEADS * HEAD_DIM, HIDDEN], 0.02),
            ("wo", vec![HIDDEN, HEADS * HEAD_DIM], 0.02),
            ("norm2", vec![HIDDEN], 0.0),
            ("wgate", vec![MLP, HIDDEN], 0.02),
            ("wup", vec![MLP, HIDDEN], 0.02),
            ("wdown", vec![HIDDEN, MLP], 0.02),
            ("normf", vec![HIDDEN], 0.0),
        ];
        let mut rng = testing::rng(seed);
        let mut names = Vec::new();
        let mut tensors = Vec::new();
        for (name, shape, scale) in shapes {
            let n = shape.iter().product();
            // Norm weights start at one, as in Llama; matrices are small and random.
            let data: Vec<f32> = if scale == 0.0 {
                vec![1.0; n]
            } else {
                testing::uniform(&mut rng, n, scale * 3f64.sqrt())
            };
            names.push(name);
            tensors.push(Tensor::from_vec(data, &shape)?);
        }
        Ok(Self { names, tensors })
    }

    fn get(&self, name: &str) -> &Tensor {
        &self.tensors[self
            .names
            .iter()
            .position(|n| *n == name)
            .expect("known name")]
    }

    fn zeros_like(&self) -> Vec<Tensor> {
        self.tensors
            .iter()
            .map(|t| Tensor::zeros(t.shape(), DType::F32, Device::Cpu))
            .collect()
    }

    fn count(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }
}

/// Accumulates wall time per (op family, direction).
#[derive(Default)]
struct Timings(BTreeMap<&'static str, [f64; 2]>);

impl Timings {
    fn time<T>(&mut self, family: &'static str, backward: bool, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.0.entry(family).or_default()[backward as usize] += t0.elapsed().as_secs_f64();
        out
    }
}

struct Batch {
    ids: Vec<u32>,
    targets: Vec<i64>,
    positions: Vec<u32>,
    cu_seqlens: Vec<u32>,
}

fn batch(args: &Args) -> Batch {
    let mut rng = testing::rng(args.seed ^ 0x5eed);
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    let mut positions = Vec::new();
    let mut cu_seqlens = vec![0u32];
    for _ in 0..args.sequences {
        let seq: Vec<u32> = testing::uniform::<f64>(&mut rng, args.seq_len + 1, 1.0)
            .iter()
            .map(|u| ((u + 1.0) / 2.0 * args.vocab as f64) as u32 % args.vocab as u32)
            .collect();
        ids.extend_from_slice(&seq[..args.seq_len]);
        targets.extend(seq[1..].iter().map(|&t| t as i64));
        positions.extend(0..args.seq_len as u32);
        cu_seqlens.push(ids.len() as u32);
    }
    Batch {
        ids,
        targets,
        positions,
        cu_seqlens,
    }
}

/// One forward pass, and the backward pass when `grads` is given; returns the loss.
fn step(
    p: &Params,
    b: &Batch,
    rope_table: &RopeTable,
    attn: &AttentionOpts,
    grads: Option<&mut [Tensor]>,
    tm: &mut Timings,
) -> Result<f32> {
    let n = b.ids.len();
    let grad = |name: &str| -> usize { p.names.iter().position(|x| *x == name).unwrap() };
    let (gi_embed, gi_n1, gi_q, gi_k, gi_v, gi_o, gi_n2, gi_g, gi_u, gi_d, gi_nf) = (
        grad("embed"),
        grad("norm1"),
        grad("wq"),
        grad("wk"),
        grad("wv"),
        grad("wo"),
        grad("norm2"),
        grad("wgate"),
        grad("wup"),
        grad("wdown"),
        grad("normf"),
    );

    // ---- forward
    let x0 = tm.time("embedding", false, || {
        embedding::forward(&b.ids, p.get("embed"))
    })?;
    let n1 = tm.time("rmsnorm", false, || {
        rmsnorm::forward(&x0, p.get("norm1"), EPS)
    })?;
    let q = tm.time("matmul", false, || {
        matmul::linear_forward(&n1.y, p.get("wq"))
    })?;
    let k = tm.time("matmul", false, || {
        matmul::linear_forward(&n1.y, p.get("wk"))
    })?;
    let v = tm.time("matmul", false, || {
        matmul::linear_forward(&n1.y, p.get("wv"))
    })?;
    let q = tm.time("rope", false, || {
        rope::forward(&q.reshape(&[n, HEADS, HEAD_DIM])?, &b.positions, rope_table)
    })?;
    let k = tm.time("rope", false, || {
        rope::forward(
            &k.reshape(&[n, KV_HEADS, HEAD_DIM])?,
            &b.positions,
            rope_table,
        )
    })?;
    let v = v.reshape(&[n, KV_HEADS, HEAD_DIM])?;
    let at = tm.time("attention", false, || {
        attention::forward(&q, &k, &v, &b.cu_seqlens, attn)
    })?;
    let ctx = at.o.clone().reshape(&[n, HEADS * HEAD_DIM])?;
    let ao = tm.time("matmul", false, || {
        matmul::linear_forward(&ctx, p.get("wo"))
    })?;
    let x1 = tm.time("residual", false, || residual::forward(&x0, &ao))?;
    let n2 = tm.time("rmsnorm", false, || {
        rmsnorm::forward(&x1, p.get("norm2"), EPS)
    })?;
    let gate = tm.time("matmul", false, || {
        matmul::linear_forward(&n2.y, p.get("wgate"))
    })?;
    let up = tm.time("matmul", false, || {
        matmul::linear_forward(&n2.y, p.get("wup"))
    })?;
    let act = tm.time("swiglu", false, || swiglu::forward(&gate, &up))?;
    let mo = tm.time("matmul", false, || {
        matmul::linear_forward(&act, p.get("wdown"))
    })?;
    let x2 = tm.time("residual", false, || residual::forward(&x1, &mo))?;
    let nf = tm.time("rmsnorm", false, || {
        rmsnorm::forward(&x2, p.get("normf"), EPS)
    })?;
    let xent = LinearXentOptions::default();
    let loss = tm.time("linear_xent", false, || {
        linear_xent::forward(&nf.y, p.get("embed"), &b.targets, None, &xent)
    })?;

    // ---- backward (parameter gradients accumulate into `grads`, zeroed first)
    let Some(grads) = grads else {
        return Ok(loss.loss as f32);
    };
    for g in grads.iter_mut() {
        *g = Tensor::zeros(g.shape(), DType::F32, Device::Cpu);
    }
    let dnf = tm.time("linear_xent", true, || {
        linear_xent::backward(
            1.0,
            &nf.y,
            p.get("embed"),
            &b.targets,
            None,
            &loss.lse,
            Some(&mut grads[gi_embed]),
            &xent,
        )
    })?;
    let dx2 = tm.time("rmsnorm", true, || {
        rmsnorm::backward(&dnf, &x2, p.get("normf"), &nf.rstd, Some(&mut grads[gi_nf]))
    })?;
    let (mut dx1, dmo) = tm.time("residual", true, || residual::backward(&dx2))?;
    let dact = tm.time("matmul", true, || {
        matmul::backward(&dmo, &act, p.get("wdown"), Some(&mut grads[gi_d]))
    })?;
    let (dgate, dup) = tm.time("swiglu", true, || swiglu::backward(&dact, &gate, &up))?;
    let mut dn2 = tm.time("matmul", true, || {
        matmul::backward(&dgate, &n2.y, p.get("wgate"), Some(&mut grads[gi_g]))
    })?;
    let dn2_up = tm.time("matmul", true, || {
        matmul::backward(&dup, &n2.y, p.get("wup"), Some(&mut grads[gi_u]))
    })?;
    tm.time("residual", true, || residual::add_into(&mut dn2, &dn2_up))?;
    let dx1_mlp = tm.time("rmsnorm", true, || {
        rmsnorm::backward(&dn2, &x1, p.get("norm2"), &n2.rstd, Some(&mut grads[gi_n2]))
    })?;
    tm.time("residual", true, || residual::add_into(&mut dx1, &dx1_mlp))?;
    let (mut dx0, dao) = tm.time("residual", true, || residual::backward(&dx1))?;
    let dctx = tm.time("matmul", true, || {
        matmul::backward(&dao, &ctx, p.get("wo"), Some(&mut grads[gi_o]))
    })?;
    let dctx = dctx.reshape(&[n, HEADS, HEAD_DIM])?;
    let ag = tm.time("attention", true, || {
        attention::backward(&dctx, &q, &k, &v, &at.o, &at.lse, &b.cu_seqlens, attn)
    })?;
    let dq = tm.time("rope", true, || {
        rope::backward(&ag.dq, &b.positions, rope_table)
    })?;
    let dk = tm.time("rope", true, || {
        rope::backward(&ag.dk, &b.positions, rope_table)
    })?;
    let dq = dq.reshape(&[n, HEADS * HEAD_DIM])?;
    let dk = dk.reshape(&[n, KV_HEADS * HEAD_DIM])?;
    let dv = ag.dv.reshape(&[n, KV_HEADS * HEAD_DIM])?;
    let mut dn1 = tm.time("matmul", true, || {
        matmul::backward(&dq, &n1.y, p.get("wq"), Some(&mut grads[gi_q]))
    })?;
    for (dy, w, gi) in [(&dk, "wk", gi_k), (&dv, "wv", gi_v)] {
        let d = tm.time("matmul", true, || {
            matmul::backward(dy, &n1.y, p.get(w), Some(&mut grads[gi]))
        })?;
        tm.time("residual", true, || residual::add_into(&mut dn1, &d))?;
    }
    let dx0_attn = tm.time("rmsnorm", true, || {
        rmsnorm::backward(&dn1, &x0, p.get("norm1"), &n1.rstd, Some(&mut grads[gi_n1]))
    })?;
    tm.time("residual", true, || residual::add_into(&mut dx0, &dx0_attn))?;
    tm.time("embedding", true, || {
        embedding::backward(&b.ids, &dx0, &mut grads[gi_embed])
    })?;
    Ok(loss.loss as f32)
}

/// Step length of the directional finite difference, in parameter-space L2 norm.
const FD_STEP: f32 = 1e-2;
/// Largest accepted relative gap between the directional derivative and ‖g‖ in f32.
const FD_TOL: f64 = 0.05;

/// For each parameter tensor θᵢ, compares the loss's central difference along
/// dᵢ = gᵢ/‖gᵢ‖ with the analytic directional derivative ‖gᵢ‖. Stepping along
/// the gradient maximises the signal over f32 rounding; a wrong gradient
/// shows unless its error happens to be orthogonal to it. Every parameter's
/// gradient flows through a different chain of ops (wq and wk through RoPE and
/// attention, the norms through RMSNorm, the embedding through the gather and
/// the tied LM head), so each row checks a different composition.
fn check_gradients(
    p: &mut Params,
    b: &Batch,
    rope_table: &RopeTable,
    attn: &AttentionOpts,
    grads: &[Tensor],
) -> Result<()> {
    out!("gradient check: central difference along each gradient, f32, step {FD_STEP}")?;
    let mut worst = 0f64;
    let mut tm = Timings::default();
    for i in 0..p.tensors.len() {
        let g = grads[i].f32s("selftest", "grad")?;
        let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        ensure!(norm > 0.0, "{}: gradient is exactly zero", p.names[i]);
        let original = p.tensors[i].clone();
        let mut loss_at = |sign: f32| -> Result<f32> {
            let mut moved = original.clone();
            for (x, &gx) in moved.f32s_mut("selftest", "param")?.iter_mut().zip(g) {
                *x += sign * FD_STEP * (gx as f64 / norm) as f32;
            }
            p.tensors[i] = moved;
            step(p, b, rope_table, attn, None, &mut tm)
        };
        let (plus, minus) = (loss_at(1.0)?, loss_at(-1.0)?);
        p.tensors[i] = original;
        let fd = (plus as f64 - minus as f64) / (2.0 * FD_STEP as f64);
        let rel = (fd - norm).abs() / norm;
        worst = worst.max(rel);
        out!(
            "  {:<6} |g| {norm:10.4e}  finite difference {fd:10.4e}  rel. gap {rel:8.2e}",
            p.names[i]
        )?;
    }
    if worst > FD_TOL {
        bail!("gradient check failed: worst relative gap {worst:.3e} > {FD_TOL}");
    }
    Ok(())
}

/// Runs the self-test; errors (non-zero exit) unless the loss falls and stays finite.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    ensure!(
        args.steps >= 2,
        "--steps must be at least 2 to see the loss move"
    );
    ensure!(
        args.sequences >= 1 && args.seq_len >= 1,
        "the batch must hold a token"
    );
    ensure!(args.vocab >= 2, "--vocab must be at least 2");
    let b = batch(args);
    let mut p = Params::new(args.vocab, args.seed)?;
    out!(
        "llm2comp selftest: one Llama block of SmolLM2-135M's shape (hidden {HIDDEN}, \
         {HEADS}/{KV_HEADS} heads x {HEAD_DIM}, MLP {MLP}, vocab {}), {} params, \
         {} x {} tokens packed, {threads} threads",
        args.vocab,
        p.count(),
        args.sequences,
        args.seq_len
    )?;
    let rope_table = RopeTable::new(
        &RopeConfig {
            head_dim: HEAD_DIM,
            theta: ROPE_THETA,
            scaling: None,
        },
        args.seq_len,
        Device::Cpu,
    )?;
    let cfg = AdamWConfig {
        lr: 3e-3,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut grads = p.zeros_like();
    let mut m = p.zeros_like();
    let mut v = p.zeros_like();
    let mut tm = Timings::default();
    let mut losses = Vec::new();
    let start = Instant::now();
    let mut checking = std::time::Duration::ZERO;
    for t in 1..=args.steps {
        let t0 = Instant::now();
        let mut attn = AttentionOpts::new(HEAD_DIM, true);
        if args.attn_dropout > 0.0 {
            attn.dropout = Some(DropoutMask::new(
                args.attn_dropout,
                args.seed.wrapping_add(t as u64),
                0,
            ));
        }
        let loss = step(&p, &b, &rope_table, &attn, Some(&mut grads), &mut tm)
            .with_context(|| format!("step {t}"))?;
        if !loss.is_finite() {
            bail!("step {t}: loss is {loss}; an op produced a non-finite value");
        }
        if t == 1 {
            let paused = Instant::now();
            check_gradients(&mut p, &b, &rope_table, &attn, &grads)?;
            checking += paused.elapsed();
        }
        let norm = tm.time("grad_clip", false, || {
            let mut gs: Vec<&mut Tensor> = grads.iter_mut().collect();
            grad_clip::clip_grad_norm(&mut gs, 1.0)
        })?;
        tm.time("adamw", false, || -> Result<()> {
            for i in 0..p.tensors.len() {
                adamw::step(
                    &mut p.tensors[i],
                    &grads[i],
                    &mut m[i],
                    &mut v[i],
                    &cfg,
                    t as u64,
                )?;
            }
            Ok(())
        })?;
        let took = t0.elapsed() - if t == 1 { checking } else { Default::default() };
        out!(
            "step {t:>3}  loss {loss:8.4}  grad-norm {norm:8.4}  {:6.2} s",
            took.as_secs_f64()
        )?;
        losses.push(loss);
    }
    let total: f64 = (start.elapsed() - checking).as_secs_f64();
    out!(
        "\n{:<12} {:>12} {:>12} {:>7}",
        "op family",
        "forward ms",
        "backward ms",
        "share"
    )?;
    for (family, [f, bwd]) in &tm.0 {
        out!(
            "{family:<12} {:>12.1} {:>12.1} {:>6.1}%",
            f * 1e3 / args.steps as f64,
            bwd * 1e3 / args.steps as f64,
            100.0 * (f + bwd) / total
        )?;
    }
    out!("(milliseconds per step; share of {total:.2} s of training wall time)")?;
    let (first, last) = (losses[0], *losses.last().expect("steps >= 2"));
    let initial = (args.vocab as f32).ln();
    if last < first {
        out!(
            "\nok: gradients match finite differences and the loss fell from {first:.4} to \
             {last:.4} (ln V = {initial:.4})"
        )?;
        Ok(())
    } else {
        bail!("the loss did not fall ({first:.4} -> {last:.4}): some forward or backward is wrong")
    }
}
