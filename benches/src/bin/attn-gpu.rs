//! CUDA attention throughput: forward and backward TFLOP/s of the MMA kernels
//! (v1, v2 and the current v3, back to back, so each tuning step is measured
//! against the last in the same run; on Hopper also the wgmma forwards v4, v5)
//! at Hq = Hkv = 32, D = 128,
//! bf16, for 8 × 512 and 2 × 4096 tokens, causal and bidirectional, timed with
//! CUDA events on the op's stream (so the
//! numbers compare with torch SDPA timed the same way). FLOPs follow the
//! FlashAttention convention: forward 4·T·Hq·D·S_eff with S_eff the sequence
//! length, halved when causal; backward 2.5 × forward. Prints one line per
//! shape; prints `SKIPPED (no CUDA device)` and exits 0 without a GPU.
//!
//! For a profiler: `ATTN_GPU_SHAPES=2x4096` keeps the named batch×seq shapes,
//! `ATTN_GPU_ITERS=N` times N calls after one warm-up call instead of 10 after 3.

use cudarc::driver::sys::CUevent_flags;
use llm2comp_benches::random;
use llm2comp_tensor::ops::attention::{
    AttentionKernel, AttentionOpts, backward_with, forward_with,
};
use llm2comp_tensor::{DType, Device, Tensor, cuda};

const HEADS: usize = 32;
const D: usize = 128;
/// (warm-up calls, timed calls): 3 and 10 unless `ATTN_GPU_ITERS` says otherwise.
fn iters() -> (usize, usize) {
    match std::env::var("ATTN_GPU_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => (1, n),
        None => (3, 10),
    }
}

/// The shape is wanted unless `ATTN_GPU_SHAPES` (e.g. "2x4096,8x512") omits it.
fn wanted(batch: usize, seq: usize) -> bool {
    std::env::var("ATTN_GPU_SHAPES").map_or(true, |v| {
        v.split(',').any(|s| s.trim() == format!("{batch}x{seq}"))
    })
}

fn gpu(shape: &[usize], seed: u64, dev: Device) -> Tensor {
    random(shape, 1.0, seed)
        .to_dtype(DType::BF16)
        .to_device(dev)
        .expect("copy to GPU")
}

/// Milliseconds per call of `f`, from CUDA events around `ITERS` calls.
fn time_ms(dev: &cuda::CudaDevice, mut f: impl FnMut()) -> f64 {
    let (warmup, n) = iters();
    for _ in 0..warmup {
        f();
    }
    let stream = dev.stream();
    let start = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    for _ in 0..n {
        f();
    }
    let end = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    start.elapsed_ms(&end).expect("elapsed") as f64 / n as f64
}

fn main() {
    let cuda_dev = match cuda::device(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED (no CUDA device): {e}");
            return;
        }
    };
    let dev = Device::Cuda(0);
    for (batch, seq) in [(8usize, 512usize), (2, 4096)] {
        if !wanted(batch, seq) {
            continue;
        }
        let t = batch * seq;
        let cu: Vec<u32> = (0..=batch).map(|b| (b * seq) as u32).collect();
        let q = gpu(&[t, HEADS, D], 1, dev);
        let k = gpu(&[t, HEADS, D], 2, dev);
        let v = gpu(&[t, HEADS, D], 3, dev);
        let dout = gpu(&[t, HEADS, D], 4, dev);
        // v4, v5 (wgmma) are Hopper-only forwards; their backward is v3's, not timed again.
        let mut kernels = vec![
            AttentionKernel::MmaV1,
            AttentionKernel::MmaV2,
            AttentionKernel::Mma,
        ];
        if cuda_dev.is_hopper() {
            kernels.extend([AttentionKernel::WgmmaV4, AttentionKernel::Wgmma]);
        }
        for (causal, kernel) in [true, false]
            .into_iter()
            .flat_map(|c| kernels.iter().map(move |&k| (c, k)))
        {
            let opts = AttentionOpts::new(D, causal);
            let out = forward_with(&q, &k, &v, &cu, &opts, kernel).expect("forward");
            let fwd_ms = time_ms(&cuda_dev, || {
                forward_with(&q, &k, &v, &cu, &opts, kernel).expect("forward");
            });
            let bwd_ms = if matches!(kernel, AttentionKernel::Wgmma | AttentionKernel::WgmmaV4) {
                f64::NAN
            } else {
                time_ms(&cuda_dev, || {
                    backward_with(&dout, &q, &k, &v, &out.o, &out.lse, &cu, &opts, kernel)
                        .expect("backward");
                })
            };
            let version = match kernel {
                AttentionKernel::MmaV1 => "v1",
                AttentionKernel::MmaV2 => "v2",
                AttentionKernel::WgmmaV4 => "v4",
                AttentionKernel::Wgmma => "v5",
                _ => "v3",
            };
            let s_eff = if causal { seq as f64 / 2.0 } else { seq as f64 };
            let fwd_flops = 4.0 * t as f64 * HEADS as f64 * D as f64 * s_eff;
            let tflops = |flops: f64, ms: f64| flops / (ms * 1e-3) / 1e12;
            let mode = if causal { "causal" } else { "bidirectional" };
            // Same names and FLOP counts as scripts/bench_gpu_torch.py, so
            // scripts/gpu_table.py can pair each row with its baseline.
            let name = format!("attention b{batch} s{seq} h{HEADS} d{D} {mode}");
            for (pass, ms, flops) in [("fwd", fwd_ms, fwd_flops), ("bwd", bwd_ms, 2.5 * fwd_flops)]
            {
                if ms.is_nan() {
                    continue;
                }
                println!(
                    "BENCH {{\"impl\": \"llm2comp\", \"name\": \"{name} {pass}\", \"tiling\": \"{version}\", \"ms\": {ms:.4}, \"tflops\": {:.1}}}",
                    tflops(flops, ms)
                );
            }
        }
    }
}
