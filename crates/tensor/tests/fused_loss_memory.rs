//! The fused LM-head losses must never hold [N, V] logits. A counting global
//! allocator measures the peak heap growth during forward + backward at a
//! realistic vocabulary; after subtracting the outputs it must stay within
//! the kernels' own `workspace_bytes` (tile buffers and the GEMM's packed
//! operands) and must not grow when V doubles.
//!
//! Everything runs in one `#[test]` so no other test allocates concurrently,
//! and a warm-up first makes every pool thread create its thread-local GEMM
//! buffer and lets the pool start, so neither lands inside a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llm2comp_tensor::ops::linear_kl::{self, LinearKlOptions};
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};
use llm2comp_tensor::testing::{rng, uniform};
use llm2comp_tensor::{Device, Tensor};

/// System's allocator, counting live and peak bytes.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call forwards to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on to System as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for alloc.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as if the old block lived until the new one exists: an upper bound.
            grew(new_size);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak heap growth during it.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst) - base)
}

const N: usize = 256;
const H: usize = 64;
const V: usize = 32000;
/// Bookkeeping allocations of rayon and the GEMM beyond what `workspace_bytes` models.
const SLACK: usize = 128 << 10;

fn opts() -> (LinearXentOptions, LinearKlOptions) {
    let (rows, tile) = (128, 512);
    let x = LinearXentOptions {
        row_chunk: rows,
        vocab_tile: tile,
        ..Default::default()
    };
    let k = LinearKlOptions {
        row_chunk: rows,
        vocab_tile: tile,
    };
    (x, k)
}

/// Peak heap growth minus outputs for CE and for KL forward + backward (with a
/// trained head, so dW is accumulated into a caller-owned buffer), and for the
/// one-sweep CE `forward_backward` (frozen head).
fn measure(v: usize) -> (usize, usize, usize, usize) {
    let (xo, ko) = opts();
    let mut r = rng(v as u64);
    let t = |data: Vec<f32>, shape: &[usize]| Tensor::from_vec(data, shape).unwrap();
    let h = t(uniform(&mut r, N * H, 1.0), &[N, H]);
    let hs = t(uniform(&mut r, N * H, 1.0), &[N, H]);
    let w = t(uniform(&mut r, v * H, 0.1), &[v, H]);
    let mut dw = Tensor::zeros(&[v, H], w.dtype(), Device::Cpu);
    // Every 4th row ignored, as prompt positions are; 192 active rows make 2 chunks.
    let targets: Vec<i64> = (0..N)
        .map(|i| {
            if i % 4 == 3 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();

    let ((fwd, dh), xent_peak) = peak_during(|| {
        let fwd = linear_xent::forward(&h, &w, &targets, None, &xo).unwrap();
        let dh = linear_xent::backward(1.0, &h, &w, &targets, None, &fwd.lse, Some(&mut dw), &xo);
        (fwd, dh.unwrap())
    });
    assert!(
        fwd.loss.is_finite() && fwd.loss > 0.0,
        "xent loss {}",
        fwd.loss
    );
    let xent = xent_peak - fwd.lse.size_in_bytes() - dh.size_in_bytes();
    drop((fwd, dh));

    let ((fwd, dh), one_pass_peak) =
        peak_during(|| linear_xent::forward_backward(&h, &w, &targets, None, None, &xo).unwrap());
    assert!(
        fwd.loss.is_finite() && fwd.loss > 0.0,
        "one-pass loss {}",
        fwd.loss
    );
    let one_pass = one_pass_peak - fwd.lse.size_in_bytes() - dh.size_in_bytes();
    drop((fwd, dh));

    let ((fwd, ds), kl_peak) = peak_during(|| {
        let fwd = linear_kl::forward(&h, &hs, &w, None, &ko).unwrap();
        let (lt, ls) = (&fwd.lse_teacher, &fwd.lse_student);
        let ds = linear_kl::backward(1.0, &h, &hs, &w, None, lt, ls, Some(&mut dw), &ko);
        (fwd, ds.unwrap())
    });
    assert!(
        fwd.loss.is_finite() && fwd.loss > 0.0,
        "kl loss {}",
        fwd.loss
    );
    let outputs =
        fwd.lse_teacher.size_in_bytes() + fwd.lse_student.size_in_bytes() + ds.size_in_bytes();
    drop((fwd, ds));

    let ((fwd, ds), kl1_peak) =
        peak_during(|| linear_kl::forward_backward(&h, &hs, &w, None, &ko).unwrap());
    assert!(
        fwd.loss.is_finite() && fwd.loss > 0.0,
        "one-pass kl loss {}",
        fwd.loss
    );
    assert_eq!(ds.shape(), hs.shape());
    let kl_one_pass = kl1_peak - outputs;
    (xent, kl_peak - outputs, one_pass, kl_one_pass)
}

fn warm_up() {
    llm2comp_tensor::pool::num_threads();
    // Each worker (and this thread) runs one packed GEMM, creating its thread-local buffer.
    let gemm = || {
        let (a, b) = (vec![1.0f32; 96 * 96], vec![1.0f32; 96 * 96]);
        let mut c = vec![0.0f32; 96 * 96];
        llm2comp_tensor::cpu::matmul::x_wt(&a, &b, &mut c, 96, 96, 96, false);
    };
    rayon::broadcast(|_| gemm());
    gemm();
    // A small vocabulary still runs every code path with the same tile sizes.
    measure(4096);
}

#[test]
fn fused_losses_never_hold_the_logits() {
    warm_up();
    let (xo, ko) = opts();
    let logits = N * V * 4;
    let (xent, kl, one_pass, kl_one_pass) = measure(V);
    let xent_ws = linear_xent::workspace_bytes(Device::Cpu, N, H, V, &xo);
    let kl_ws = linear_kl::workspace_bytes(Device::Cpu, N, H, V, &ko);
    println!(
        "V={V}: xent extra {xent} B (workspace_bytes {xent_ws}), one-pass xent extra \
         {one_pass} B, kl extra {kl} B (workspace_bytes {kl_ws}), one-pass kl extra \
         {kl_one_pass} B; full logits would be {logits} B"
    );
    for (what, got, ws) in [
        ("xent", xent, xent_ws),
        ("xent forward_backward", one_pass, xent_ws),
        ("kl", kl, kl_ws),
        ("kl forward_backward", kl_one_pass, kl_ws),
    ] {
        assert!(
            got <= ws + SLACK && ws < logits / 20,
            "{what}: peak heap growth beyond outputs {got} B > workspace_bytes {ws} B + {SLACK} B, \
             or that bound is not far below the full [N, V] f32 logits ({logits} B)"
        );
    }

    // Doubling the vocabulary must not raise the peak: the tile, not V, sets it.
    let (xent2, kl2, one_pass2, kl_one_pass2) = measure(2 * V);
    println!(
        "V={}: xent extra {xent2} B, one-pass xent extra {one_pass2} B, kl extra {kl2} B",
        2 * V
    );
    let allowance = 64 << 10;
    assert!(
        one_pass2 <= one_pass + allowance && kl_one_pass2 <= kl_one_pass + allowance,
        "doubling V raised a one-pass peak: xent {one_pass} -> {one_pass2} B, kl {kl_one_pass} \
         -> {kl_one_pass2} B"
    );
    assert!(
        xent2 <= xent + allowance && kl2 <= kl + allowance,
        "doubling V raised the peak beyond the outputs: xent {xent} -> {xent2} B, kl {kl} -> {kl2} B \
         (allowed {allowance} B, the [N, 2V] logits would be {} B)",
        2 * logits
    );
}
