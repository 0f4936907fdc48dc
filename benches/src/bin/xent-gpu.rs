//! GPU timing of the fused cross-entropy at the bench shape (N = 8·512 rows,
//! H = 576, V = 49152, bf16): the one-sweep forward + dL/dh of a frozen head,
//! and the two-pass forward + backward with the head's gradient. Each is
//! timed with CUDA events on the device's single stream (median of REPS after
//! WARMUP calls; a call includes its loss read-back, as `loss.item()` would in
//! PyTorch), and its peak device bytes are read from the allocator, so the
//! figures compare with a PyTorch eager run on the same GPU. Prints one JSON
//! object; without a CUDA device it says so and exits 0.

use cudarc::driver::sys::CUevent_flags;
use llm2comp_benches::random;
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::{DType, Device, Tensor, cuda};

const N: usize = 8 * 512;
const H: usize = 576;
const V: usize = 49152;
const WARMUP: usize = 3;
const REPS: usize = 10;

/// Median milliseconds of `f` over REPS timed calls, and its peak device bytes.
fn time(d: &cuda::CudaDevice, f: &mut dyn FnMut()) -> (f64, usize) {
    for _ in 0..WARMUP {
        f();
    }
    d.synchronize().expect("device synchronises");
    let mut ms = Vec::with_capacity(REPS);
    for _ in 0..REPS {
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
    (ms[REPS / 2], d.peak_bytes() - before)
}

fn main() {
    if cuda::device_count() == 0 || cuda::device(0).is_err() {
        eprintln!("xent-gpu: SKIPPED (no CUDA device)");
        return;
    }
    let d = cuda::device(0).expect("device 0");
    let dev = Device::Cuda(0);
    let to_gpu = |t: Tensor| t.to_dtype(DType::BF16).to_device(dev).expect("upload");
    let h = to_gpu(random(&[N, H], 1.0, 1));
    let w = to_gpu(random(&[V, H], 0.05, 2));
    let targets: Vec<i64> = (0..N).map(|i| ((i * 7919) % V) as i64).collect();
    let opts = LinearXentOptions::default();

    let (one_ms, one_peak) = time(&d, &mut || {
        let (out, dh) = linear_xent::forward_backward(&h, &w, &targets, None, &opts)
            .expect("one-sweep fused CE");
        assert!(out.loss.is_finite() && dh.numel() == N * H);
    });
    let mut dw = Tensor::try_zeros(&[V, H], DType::BF16, dev).expect("dW");
    let (two_ms, two_peak) = time(&d, &mut || {
        let out = linear_xent::forward(&h, &w, &targets, None, &opts).expect("fused CE forward");
        let dh = linear_xent::backward(1.0, &h, &w, &targets, None, &out.lse, Some(&mut dw), &opts)
            .expect("fused CE backward");
        assert!(out.loss.is_finite() && dh.numel() == N * H);
    });
    let ws = linear_xent::workspace_bytes(dev, N, H, V, &opts);
    let flop = (N * H * V) as f64;
    println!(
        "{{\"device\": \"{}\", \"n\": {N}, \"h\": {H}, \"v\": {V}, \"dtype\": \"bf16\", \
         \"one_sweep_ms\": {one_ms:.3}, \"one_sweep_tflops\": {:.1}, \"one_sweep_peak_bytes\": {one_peak}, \
         \"fwd_bwd_dw_ms\": {two_ms:.3}, \"fwd_bwd_dw_tflops\": {:.1}, \"fwd_bwd_dw_peak_bytes\": {two_peak}, \
         \"workspace_bytes\": {ws}, \"full_logits_f32_bytes\": {}}}",
        d.name(),
        4.0 * flop / one_ms / 1e9,
        8.0 * flop / two_ms / 1e9,
        N * V * 4
    );
}
