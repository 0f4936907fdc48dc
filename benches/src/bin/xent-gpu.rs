//! GPU timing of the fused compression losses at the shapes of the CUDA
//! issue (N = 8192 rows, H = 4096, V = 32000 and 128256) and SmolLM2's
//! (N = 4096, H = 576, V = 49152), bf16, for several (row chunk, vocab tile)
//! pairs: the CPU's defaults and larger GPU tiles, whose workspace is still a
//! small fraction of the [N, V] logits. Per shape and tiling:
//! - `linear_xent fwd+bwd+dw`: forward, then backward with dL/dh and dL/dW
//!   (what PyTorch eager's `cross_entropy(h @ W.T)` + `backward()` computes);
//! - `linear_xent one-sweep`: forward + dL/dh of a frozen head in one pass;
//! - `linear_xent sweep+dw`: forward, dL/dh and dL/dW in one pass over
//!   whole-vocabulary row chunks (6·N·H·V FLOPs, as eager), compared with
//!   eager's `fwd+bwd+dw`; run where the tiling's logit budget holds at
//!   least 64 whole rows (fewer make the dW GEMMs memory-bound);
//! - `linear_kl fwd+bwd+dw`: KL(teacher ‖ student), student gradients.
//!
//! Timing: CUDA events on the device's one stream around each call (which
//! includes the loss read-back, as `loss.item()` would), median after a
//! warm-up; peak device bytes from the allocator. Prints `BENCH {json}` lines
//! named as scripts/bench_gpu_torch.py names its baselines. Without a CUDA
//! device it says so and exits 0.

use cudarc::driver::sys::CUevent_flags;
use llm2comp_benches::random;
use llm2comp_tensor::ops::linear_kl::{self, LinearKlOptions};
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::{DType, Device, Tensor, cuda};

/// (rows, hidden, vocab).
const SHAPES: &[(usize, usize, usize)] = &[
    (4096, 576, 49152),
    (8192, 4096, 32000),
    (8192, 4096, 128256),
];
/// (row chunk, vocab tile): the CPU defaults first.
/// 4096 × 6144 is a 96 MiB logit budget: 512 whole rows of SmolLM2's
/// vocabulary for the one sweep with dW.
const TILINGS: &[(usize, usize)] = &[(256, 4096), (2048, 8192), (4096, 6144), (8192, 4096)];

/// Median milliseconds of `f` and its peak device bytes beyond what was in use.
fn time(d: &cuda::CudaDevice, reps: usize, f: &mut dyn FnMut()) -> (f64, usize) {
    f();
    d.synchronize().expect("device synchronises");
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let ev = || {
            d.stream()
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .expect("CUDA event")
        };
        let start = ev();
        f();
        let end = ev();
        ms.push(start.elapsed_ms(&end).expect("event timing") as f64);
    }
    ms.sort_by(f64::total_cmp);
    let before = d.in_use_bytes();
    d.reset_peak();
    f();
    d.synchronize().expect("device synchronises");
    (ms[reps / 2], d.peak_bytes() - before)
}

fn emit(name: &str, chunk: usize, tile: usize, ms: f64, flop: f64, peak: usize) {
    emit_vs(name, name, chunk, tile, ms, flop, peak);
}

/// A row whose PyTorch baseline has another name (`baseline`).
fn emit_vs(name: &str, baseline: &str, chunk: usize, tile: usize, ms: f64, flop: f64, peak: usize) {
    println!(
        "BENCH {{\"impl\": \"llm2comp\", \"name\": \"{name}\", \"baseline\": \"{baseline}\", \
         \"tiling\": \"{chunk}x{tile}\", \"ms\": {ms:.3}, \"tflops\": {:.1}, \"peak_bytes\": {peak}}}",
        flop / ms / 1e9
    );
}

fn main() {
    if cuda::device_count() == 0 || cuda::device(0).is_err() {
        eprintln!("xent-gpu: SKIPPED (no CUDA device)");
        return;
    }
    let d = cuda::device(0).expect("device 0");
    let dev = Device::Cuda(0);
    let to_gpu = |t: Tensor| t.to_dtype(DType::BF16).to_device(dev).expect("upload");
    for &(n, h, v) in SHAPES {
        let reps = if n * h * v > 1 << 32 { 5 } else { 10 };
        let hs = to_gpu(random(&[n, h], 1.0, 1));
        let teacher = to_gpu(random(&[n, h], 1.0, 3));
        let w = to_gpu(random(&[v, h], 0.05, 2));
        let targets: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
        let mut dw = Tensor::try_zeros(&[v, h], DType::BF16, dev).expect("dW");
        let nhv = (n * h * v) as f64;
        let shape = format!("n{n} h{h} v{v}");
        for &(chunk, tile) in TILINGS {
            let xo = LinearXentOptions {
                row_chunk: chunk,
                vocab_tile: tile,
                ..LinearXentOptions::default()
            };
            let (ms, peak) = time(&d, reps, &mut || {
                let out = linear_xent::forward(&hs, &w, &targets, None, &xo).expect("CE forward");
                let dh = linear_xent::backward(
                    1.0,
                    &hs,
                    &w,
                    &targets,
                    None,
                    &out.lse,
                    Some(&mut dw),
                    &xo,
                )
                .expect("CE backward");
                assert!(out.loss.is_finite() && dh.numel() == n * h);
            });
            // Forward GEMM, recomputed GEMM, dh and dW GEMMs: 8·N·H·V.
            emit(
                &format!("linear_xent fwd+bwd+dw {shape}"),
                chunk,
                tile,
                ms,
                8.0 * nhv,
                peak,
            );
            let (ms, peak) = time(&d, reps, &mut || {
                let (out, dh) = linear_xent::forward_backward(&hs, &w, &targets, None, None, &xo)
                    .expect("one-sweep CE");
                assert!(out.loss.is_finite() && dh.numel() == n * h);
            });
            emit(
                &format!("linear_xent one-sweep {shape}"),
                chunk,
                tile,
                ms,
                4.0 * nhv,
                peak,
            );
            if chunk * tile / v >= 64 {
                let (ms, peak) = time(&d, reps, &mut || {
                    let (out, dh) =
                        linear_xent::forward_backward(&hs, &w, &targets, None, Some(&mut dw), &xo)
                            .expect("one-sweep CE with dW");
                    assert!(out.loss.is_finite() && dh.numel() == n * h);
                });
                // Logits, dh and dW GEMMs: 6·N·H·V.
                emit_vs(
                    &format!("linear_xent sweep+dw {shape}"),
                    &format!("linear_xent fwd+bwd+dw {shape}"),
                    chunk,
                    tile,
                    ms,
                    6.0 * nhv,
                    peak,
                );
            }
            let ko = LinearKlOptions {
                row_chunk: chunk,
                vocab_tile: tile,
            };
            let (ms, peak) = time(&d, reps, &mut || {
                let out = linear_kl::forward(&teacher, &hs, &w, None, &ko).expect("KL forward");
                let dh = linear_kl::backward(
                    1.0,
                    &teacher,
                    &hs,
                    &w,
                    None,
                    &out.lse_teacher,
                    &out.lse_student,
                    Some(&mut dw),
                    &ko,
                )
                .expect("KL backward");
                assert!(out.loss.is_finite() && dh.numel() == n * h);
            });
            // Teacher and student forward GEMMs, both recomputed, dh and dW: 12·N·H·V.
            emit(
                &format!("linear_kl fwd+bwd+dw {shape}"),
                chunk,
                tile,
                ms,
                12.0 * nhv,
                peak,
            );
        }
    }
}
