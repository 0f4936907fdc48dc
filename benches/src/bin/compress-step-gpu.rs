//! One LLM2Comp compression training step (`kl`, k = 8 memory tokens, LoRA
//! r 16 on q/v/o/gate/up/down, adapter dropout on) on CUDA in bf16 against
//! the same step on this machine's CPU in f32, then its throughput and peak
//! device memory.
//!
//! The model has SmolLM2-135M's shape (`benches/data/smollm2-135m-shape.json`)
//! with weights generated from a seed here, because the GPU machine receives
//! at most 64 MiB of files. The batch is 8 passages of 512 random token ids,
//! split uniformly in [10, 502]. The LoRA B matrices are set to small random
//! values first (a fresh B is zero, which would make every A gradient zero
//! and leave that path unchecked). Checks (exit status 1 when one fails):
//! - CUDA in f32 (cuBLAS without TF32, the simple attention kernels): loss
//!   within 1e-4 relative of the CPU's and every gradient tensor within 1e-3
//!   relative L2 error: the training path itself is right;
//! - CUDA in bf16 (the configuration that is timed): loss within 2e-2 and
//!   every gradient within 0.1 relative L2 error (bf16 through 30 layers;
//!   the figures are printed).
//!
//! Timing: `COMPRESS_GPU_STEPS` (default 5) full steps after 2 warm-ups, each
//! zero-grads + forward + backward + AdamW on every trainable tensor, timed
//! with CUDA events; text tokens/s = 8 × 512 / step time. Peak device bytes
//! beyond what was resident before the timed steps (model, batch-independent
//! state, AdamW moments). Writes the model config and the batch as JSON into
//! `COMPRESS_GPU_OUT` (default `target/compress-step`) so
//! `scripts/bench_pretrain_torch.py --config --batch` runs the PyTorch step
//! on exactly this batch. Prints `BENCH {json}` lines; prints `SKIPPED (no
//! CUDA device)` and exits 0 without a GPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use llm2comp_backbone::{ModelConfig, Transformer};
use llm2comp_compress::{CompressConfig, Compressor, Objective, PackedBatch, Sample, pack};
use llm2comp_tensor::ops::adamw::{self, AdamWConfig};
use llm2comp_tensor::{DType, Device, Tensor, cuda, testing};

const CONFIG: &str = include_str!("../../data/smollm2-135m-shape.json");
const PASSAGES: usize = 8;
const LEN: usize = 512;
const K: usize = 8;
const BOS: u32 = 1;
const NAME: &str = "compress step kl b8 s512 smollm2-shape";

/// SplitMix64: the batch's ids and splits from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn samples(vocab: usize) -> Vec<Sample> {
    let mut rng = Rng(2026);
    (0..PASSAGES)
        .map(|_| {
            let ids = (0..LEN)
                .map(|_| 3 + rng.below(vocab as u64 - 3) as u32)
                .collect();
            let split = 10 + rng.below((LEN - 20 + 1) as u64) as usize;
            Sample {
                ids,
                split: Some(split),
            }
        })
        .collect()
}

/// The batch in `bench_pretrain_torch.py --batch` format.
fn batch_json(samples: &[Sample]) -> String {
    let passages: Vec<String> = samples
        .iter()
        .map(|s| {
            let ids: Vec<String> = s.ids.iter().map(u32::to_string).collect();
            format!(
                "{{\"ids\": [{}], \"split\": {}}}",
                ids.join(", "),
                s.split.unwrap_or(0)
            )
        })
        .collect();
    format!(
        "{{\"bos\": {BOS}, \"k\": {K}, \"passages\": [\n{}\n]}}\n",
        passages.join(",\n")
    )
}

/// Each trainable tensor's gradient as host f32, by name.
fn grads_of(c: &mut Compressor) -> Vec<(String, Vec<f32>)> {
    c.params()
        .into_iter()
        .map(|p| (p.name, p.grad.to_vec_f32()))
        .collect()
}

/// Relative L2 error of `got` against `want`; infinite when `got` is not finite.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    if got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    testing::rel_err(got, want)
}

/// AdamW moments beside every trainable tensor, on its device.
fn moments(c: &mut Compressor) -> Vec<(Tensor, Tensor)> {
    c.params()
        .into_iter()
        .map(|p| {
            let z = || Tensor::zeros(p.value.shape(), DType::F32, p.value.device());
            (z(), z())
        })
        .collect()
}

fn adamw_all(c: &mut Compressor, m: &mut [(Tensor, Tensor)], t: u64) {
    let cfg = AdamWConfig {
        lr: 1e-4,
        weight_decay: 1e-5,
        ..AdamWConfig::default()
    };
    for (p, (m, v)) in c.params().into_iter().zip(m.iter_mut()) {
        adamw::step(p.value, p.grad, m, v, &cfg, t).expect("AdamW step");
    }
}

fn out_dir() -> PathBuf {
    std::env::var_os("COMPRESS_GPU_OUT")
        .map_or_else(|| PathBuf::from("target/compress-step"), PathBuf::from)
}

fn main() {
    let steps: usize = std::env::var("COMPRESS_GPU_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let config = ModelConfig::from_json(CONFIG, Path::new("benches/data/smollm2-135m-shape.json"))
        .expect("model config");
    let vocab = config.vocab_size;
    let samples = samples(vocab);
    let batch: PackedBatch = pack(&samples, Objective::Kl, BOS, K, vocab).expect("pack");
    let out = out_dir();
    std::fs::create_dir_all(&out).expect("output dir");
    std::fs::write(out.join("config.json"), CONFIG).expect("write config");
    std::fs::write(out.join("batch.json"), batch_json(&samples)).expect("write batch");
    println!("wrote {}/config.json and batch.json", out.display());
    let dev = match cuda::device(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED (no CUDA device): {e}");
            return;
        }
    };

    let t0 = Instant::now();
    let model = Transformer::random(&config, 7).expect("random model");
    let cfg = CompressConfig::llm2comp(Objective::Kl);
    let mut cpu = Compressor::new(model, BOS, cfg, 42).expect("compressor");
    let mut rng = Rng(99);
    for p in cpu.params() {
        if p.name.ends_with("lora_B.weight") {
            let v: Vec<f32> = (0..p.value.numel())
                .map(|_| (rng.below(1 << 24) as f32 / (1 << 23) as f32 - 1.0) * 0.01)
                .collect();
            *p.value = Tensor::from_vec(v, p.value.shape()).expect("lora B");
        }
    }
    let mut gpu32 = cpu
        .to_device(Device::Cuda(0), DType::F32)
        .expect("f32 compressor on CUDA");
    let mut gpu = cpu
        .to_device(Device::Cuda(0), DType::BF16)
        .expect("compressor on CUDA");
    println!("model ready in {:.1} s", t0.elapsed().as_secs_f64());

    // The same step on both devices (same weights, batch and dropout seed):
    // the GPU's first, then the timed steps, then the CPU's, so a slow CPU
    // loses only the comparison.
    let seed = Some(11);
    let got = gpu.step(&batch, seed, 1.0).expect("GPU step");
    dev.synchronize().expect("sync");
    let gg = grads_of(&mut gpu);
    println!("CUDA bf16 step: loss {:.6}", got.loss);
    let got32 = gpu32.step(&batch, seed, 1.0).expect("GPU f32 step");
    let gg32 = grads_of(&mut gpu32);
    drop(gpu32);
    println!("CUDA f32 step: loss {:.8}", got32.loss);

    // Throughput: full steps with the optimiser, after two warm-ups.
    let mut mom = moments(&mut gpu);
    let mut t_step = 0u64;
    let mut full_step = |gpu: &mut Compressor, mom: &mut [(Tensor, Tensor)], i: u64| {
        gpu.zero_grads();
        let s = gpu.step(&batch, Some(100 + i), 1.0).expect("GPU step");
        t_step += 1;
        adamw_all(gpu, mom, t_step);
        s.loss
    };
    for i in 0..2 {
        full_step(&mut gpu, &mut mom, i);
    }
    dev.synchronize().expect("sync");
    let before = dev.in_use_bytes();
    dev.reset_peak();
    let mut ms = Vec::with_capacity(steps);
    let mut losses = Vec::with_capacity(steps);
    for i in 0..steps as u64 {
        let ev = || {
            dev.stream()
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .expect("CUDA event")
        };
        let start = ev();
        losses.push(full_step(&mut gpu, &mut mom, 2 + i));
        let end = ev();
        ms.push(start.elapsed_ms(&end).expect("event timing") as f64);
    }
    dev.synchronize().expect("sync");
    let peak = dev.peak_bytes() - before;
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    println!(
        "steps: {steps} timed, median {med:.1} ms (min {:.1}, max {:.1}); losses {losses:?}; resident before {before} bytes",
        ms[0],
        ms[ms.len() - 1]
    );
    println!(
        "BENCH {{\"impl\": \"llm2comp\", \"name\": \"{NAME}\", \"ms\": {med:.3}, \"tokens_per_s\": {:.1}, \"peak_bytes\": {peak}, \"peak_bytes_abs\": {}}}",
        batch.text_tokens as f64 / (med * 1e-3),
        before + peak
    );

    let t = Instant::now();
    let want = cpu.step(&batch, seed, 1.0).expect("CPU step");
    let cpu_s = t.elapsed().as_secs_f64();
    let cg = grads_of(&mut cpu);
    let mut ok = true;
    for (what, loss, grads, loss_bound, grad_bound) in [
        ("CUDA f32", got32.loss, &gg32, 1e-4, 1e-3),
        ("CUDA bf16", got.loss, &gg, 2e-2, 1e-1),
    ] {
        let loss_err = (loss - want.loss).abs() / want.loss.abs();
        let loss_ok = loss.is_finite() && loss_err <= loss_bound;
        println!(
            "{what} loss {loss:.8} vs CPU f32 {:.8}: relative difference {loss_err:.2e} (bound {loss_bound:.0e}): {}",
            want.loss,
            if loss_ok { "ok" } else { "FAILED" }
        );
        let mut worst = (0.0f64, String::new());
        let mut errs = Vec::with_capacity(grads.len());
        for ((name, w), (_, g)) in cg.iter().zip(grads.iter()) {
            let e = rel_l2(g, w);
            println!("  {what} grad {name}: relative L2 error {e:.2e}");
            errs.push(e);
            if e.is_nan() || e > worst.0 {
                worst = (e, name.clone());
            }
        }
        errs.sort_by(f64::total_cmp);
        let grads_ok = worst.0 <= grad_bound;
        println!(
            "{what} gradients: {} tensors, median relative L2 error {:.2e}, largest {:.2e} ({}) (bound {grad_bound:.0e}): {}",
            grads.len(),
            errs[errs.len() / 2],
            worst.0,
            worst.1,
            if grads_ok { "ok" } else { "FAILED" }
        );
        ok &= loss_ok && grads_ok;
    }
    println!(
        "BENCH {{\"impl\": \"llm2comp-cpu\", \"name\": \"{NAME} cpu f32\", \"ms\": {:.1}, \"tokens_per_s\": {:.1}, \"threads\": {}}}",
        cpu_s * 1e3,
        want.text_tokens as f64 / cpu_s,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if !ok {
        eprintln!("compress-step-gpu: the CUDA step does not match the CPU step");
        std::process::exit(1);
    }
}
