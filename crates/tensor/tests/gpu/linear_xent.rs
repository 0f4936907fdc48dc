//! The fused LM-head losses on CUDA (cross-entropy and KL) against the CPU op
//! on bf16-rounded copies of the same random inputs, at real vocabulary sizes
//! (32000, 49152, 128256) with ignored targets, row weights (one of them 0),
//! row counts that are not a multiple of the chunk and vocabularies that are
//! not a multiple of the tile; and the device memory each call takes, which
//! must be the reported workspace plus outputs, never O(N·V).
//!
//! The memory figures read the device's global peak counter, so they assume
//! no other GPU test allocates meanwhile: run the GPU target with
//! `--test-threads=1` (the tests here also serialise among themselves).

use std::io::Write;
use std::sync::{Arc, Mutex};

use llm2comp_tensor::cuda::{self, CudaDevice};
use llm2comp_tensor::ops::linear_kl::{self, LinearKlOptions};
use llm2comp_tensor::ops::linear_xent::{self, IGNORE_INDEX, LinearXentOptions};
use llm2comp_tensor::{DType, Device, Tensor};

use crate::common::{check, cuda as gpu, randn, rounded, to_cpu_f32, to_gpu};

/// Hidden size of the accuracy cases (small, so the CPU reference is quick).
const H: usize = 64;
/// Rows of the accuracy cases: not a multiple of any chunk used.
const N: usize = 37;

/// Serialises this file's tests so their peak-memory readings do not mix.
static SERIAL: Mutex<()> = Mutex::new(());

fn say(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn device(dev: Device) -> Arc<CudaDevice> {
    let Device::Cuda(o) = dev else {
        unreachable!("common::cuda gives a CUDA device")
    };
    cuda::device(o).unwrap()
}

/// Runs `f`; returns its result and the most device bytes it held at once
/// beyond what was in use before (outputs included).
fn measured<T>(d: &CudaDevice, f: impl FnOnce() -> T) -> (T, usize) {
    d.synchronize().unwrap();
    let before = d.in_use_bytes();
    d.reset_peak();
    let out = f();
    d.synchronize().unwrap();
    (out, d.peak_bytes() - before)
}

/// Upper bound of what the allocator hands out for outputs of these byte
/// sizes (it rounds each request up by at most one 2 MiB granule).
fn outputs(bytes: &[usize]) -> usize {
    bytes.iter().map(|b| b + (2 << 20)).sum()
}

fn memory_check(name: &str, got: usize, bound: usize, n: usize, v: usize) {
    say(format!(
        "{name}: peak device bytes {got} (bound {bound}; full f32 logits N*V*4 = {})",
        n * v * 4
    ));
    assert!(got <= bound, "{name}: {got} device bytes > bound {bound}");
}

fn scalar_check(name: &str, got: f64, want: f64, bound: f64) {
    let e = ((got - want) / want).abs();
    say(format!(
        "{name}: rel err {e:.3e} (bound {bound:.0e}; {got} vs {want})"
    ));
    assert!(got.is_finite() && e <= bound, "{name}: {got} vs {want}");
}

/// (loss / lse bound, gradient bound) per dtype.
fn bounds(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-3),
        _ => (1e-3, 1e-2),
    }
}

/// Targets with every fifth row (from row 2) ignored.
fn targets(n: usize, v: usize, seed: u64) -> Vec<i64> {
    (0..n)
        .map(|i| {
            if i % 5 == 2 {
                IGNORE_INDEX
            } else {
                ((i * 7919 + seed as usize * 131) % v) as i64
            }
        })
        .collect()
}

/// Random positive row weights (so the loss cannot cancel to near 0 and make
/// its relative error meaningless), row 3 at exactly 0 (dropped like an ignored row).
fn row_weights(n: usize, seed: u64) -> Vec<f32> {
    let mut w: Vec<f32> = randn(&[n], seed)
        .to_vec_f32()
        .iter()
        .map(|x| x.abs() + 0.05)
        .collect();
    w[3] = 0.0;
    w
}

fn scaled(t: &Tensor, s: f32) -> Tensor {
    let v: Vec<f32> = t.to_vec_f32().iter().map(|x| x * s).collect();
    Tensor::from_vec(v, t.shape()).unwrap()
}

/// Rows whose gradient must be exactly zero are.
fn zero_rows(name: &str, dh: &Tensor, dead: &[bool]) {
    let v = to_cpu_f32(dh).to_vec_f32();
    let dim = v.len() / dead.len();
    for (i, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
        assert!(
            v[i * dim..(i + 1) * dim].iter().all(|&g| g == 0.0),
            "{name}: row {i} contributes nothing but got a nonzero gradient"
        );
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    rows: usize,
    dim: usize,
    vocab: usize,
    dtype: DType,
    row_chunk: usize,
    vocab_tile: usize,
    weighted: bool,
    seed: u64,
}

impl Case {
    fn name(&self, loss: &str) -> String {
        format!(
            "{loss} N={} H={} V={} {:?} chunk {} tile {}{}",
            self.rows,
            self.dim,
            self.vocab,
            self.dtype,
            self.row_chunk,
            self.vocab_tile,
            if self.weighted { " weighted" } else { "" }
        )
    }
}

fn xent_case(c: Case) {
    let Some(dev) = gpu() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = device(dev);
    let (n, dim, v, e) = (c.rows, c.dim, c.vocab, c.dtype.size_in_bytes());
    let name = c.name("linear_xent");
    let (lb, gb) = bounds(c.dtype);
    let (h, w) = (randn(&[n, dim], c.seed), randn(&[v, dim], c.seed + 1));
    let (hc, wc) = (rounded(&h, c.dtype), rounded(&w, c.dtype));
    let (hg, wg) = (to_gpu(&h, c.dtype, dev), to_gpu(&w, c.dtype, dev));
    let t = targets(n, v, c.seed);
    let rw_all = row_weights(n, c.seed + 2);
    let rw = c.weighted.then_some(&rw_all[..]);
    let dead: Vec<bool> = (0..n)
        .map(|i| t[i] == IGNORE_INDEX || rw.is_some_and(|w| w[i] == 0.0))
        .collect();
    let o = LinearXentOptions {
        ignore_index: IGNORE_INDEX,
        row_chunk: c.row_chunk,
        vocab_tile: c.vocab_tile,
    };
    let ws = linear_xent::workspace_bytes(dev, n, dim, v, &o);

    // Forward.
    let want = linear_xent::forward(&hc, &wc, &t, rw, &o).unwrap();
    let (got, bytes) = measured(&d, || linear_xent::forward(&hg, &wg, &t, rw, &o).unwrap());
    scalar_check(&format!("{name}: forward loss"), got.loss, want.loss, lb);
    check(
        &format!("{name}: lse"),
        &to_cpu_f32(&got.lse),
        &want.lse,
        lb,
    );
    memory_check(
        &format!("{name}: forward"),
        bytes,
        ws + outputs(&[n * 4]),
        n,
        v,
    );

    // Backward with the head's gradient, into a zeroed dW of the head's dtype.
    let dloss = 1.5;
    let mut dw_want = Tensor::zeros(&[v, dim], DType::F32, Device::Cpu);
    let dh_want =
        linear_xent::backward(dloss, &hc, &wc, &t, rw, &want.lse, Some(&mut dw_want), &o).unwrap();
    let mut dw_got = Tensor::try_zeros(&[v, dim], c.dtype, dev).unwrap();
    let (dh_got, bytes) = measured(&d, || {
        linear_xent::backward(dloss, &hg, &wg, &t, rw, &got.lse, Some(&mut dw_got), &o).unwrap()
    });
    assert_eq!(dh_got.dtype(), c.dtype);
    check(
        &format!("{name}: backward dh"),
        &to_cpu_f32(&dh_got),
        &dh_want,
        gb,
    );
    check(
        &format!("{name}: backward dW"),
        &to_cpu_f32(&dw_got),
        &dw_want,
        gb,
    );
    zero_rows(&format!("{name}: backward dh"), &dh_got, &dead);
    memory_check(
        &format!("{name}: backward"),
        bytes,
        ws + outputs(&[n * dim * e]),
        n,
        v,
    );

    // dW is added into, here an f32 buffer that already holds the reference.
    let mut dw_twice = dw_want.to_device(dev).unwrap();
    linear_xent::backward(dloss, &hg, &wg, &t, rw, &got.lse, Some(&mut dw_twice), &o).unwrap();
    check(
        &format!("{name}: backward dW added into f32"),
        &to_cpu_f32(&dw_twice),
        &scaled(&dw_want, 2.0),
        gb,
    );
    // No head gradient asked: same dh.
    let dh_frozen = linear_xent::backward(dloss, &hg, &wg, &t, rw, &got.lse, None, &o).unwrap();
    check(
        &format!("{name}: backward dh, frozen head"),
        &to_cpu_f32(&dh_frozen),
        &dh_want,
        gb,
    );

    // One sweep.
    let (want1, dh1_want) = linear_xent::forward_backward(&hc, &wc, &t, rw, None, &o).unwrap();
    let ((got1, dh1), bytes) = measured(&d, || {
        linear_xent::forward_backward(&hg, &wg, &t, rw, None, &o).unwrap()
    });
    scalar_check(
        &format!("{name}: one-sweep loss"),
        got1.loss,
        want1.loss,
        lb,
    );
    check(
        &format!("{name}: one-sweep lse"),
        &to_cpu_f32(&got1.lse),
        &want1.lse,
        lb,
    );
    check(
        &format!("{name}: one-sweep dh"),
        &to_cpu_f32(&dh1),
        &dh1_want,
        gb,
    );
    zero_rows(&format!("{name}: one-sweep dh"), &dh1, &dead);
    memory_check(
        &format!("{name}: one-sweep"),
        bytes,
        ws + outputs(&[n * 4, n * dim * e]),
        n,
        v,
    );

    // One sweep with the head's gradient (whole-vocabulary row chunks on
    // CUDA; forward + backward on the CPU), into a zeroed dW of the head's
    // dtype. A logit budget of all N rows makes CUDA take the sweep at any N
    // (below SWEEP_MIN_ROWS rows per chunk it would take forward + backward).
    let os = LinearXentOptions {
        row_chunk: n,
        vocab_tile: v,
        ..o
    };
    let mut dw2_want = Tensor::zeros(&[v, dim], DType::F32, Device::Cpu);
    let (want2, dh2_want) =
        linear_xent::forward_backward(&hc, &wc, &t, rw, Some(&mut dw2_want), &os).unwrap();
    let mut dw2 = Tensor::try_zeros(&[v, dim], c.dtype, dev).unwrap();
    let ((got2, dh2), bytes) = measured(&d, || {
        linear_xent::forward_backward(&hg, &wg, &t, rw, Some(&mut dw2), &os).unwrap()
    });
    scalar_check(
        &format!("{name}: one-sweep+dW loss"),
        got2.loss,
        want2.loss,
        lb,
    );
    check(
        &format!("{name}: one-sweep+dW lse"),
        &to_cpu_f32(&got2.lse),
        &want2.lse,
        lb,
    );
    assert_eq!(dh2.dtype(), c.dtype);
    check(
        &format!("{name}: one-sweep+dW dh"),
        &to_cpu_f32(&dh2),
        &dh2_want,
        gb,
    );
    check(
        &format!("{name}: one-sweep+dW dW"),
        &to_cpu_f32(&dw2),
        &dw2_want,
        gb,
    );
    zero_rows(&format!("{name}: one-sweep+dW dh"), &dh2, &dead);
    memory_check(
        &format!("{name}: one-sweep+dW"),
        bytes,
        linear_xent::workspace_bytes(dev, n, dim, v, &os) + outputs(&[n * 4, n * dim * e]),
        n,
        v,
    );
    // dW is added into: an f32 buffer that already holds the reference.
    let mut dw2_twice = dw2_want.to_device(dev).unwrap();
    linear_xent::forward_backward(&hg, &wg, &t, rw, Some(&mut dw2_twice), &os).unwrap();
    check(
        &format!("{name}: one-sweep+dW added into f32"),
        &to_cpu_f32(&dw2_twice),
        &scaled(&dw2_want, 2.0),
        gb,
    );
}

#[test]
fn linear_xent_bf16_v49152_matches_cpu() {
    xent_case(Case {
        rows: N,
        dim: H,
        vocab: 49152,
        dtype: DType::BF16,
        row_chunk: linear_xent::ROW_CHUNK,
        vocab_tile: linear_xent::VOCAB_TILE,
        weighted: false,
        seed: 100,
    });
}

#[test]
fn linear_xent_bf16_v32000_weighted_ragged_tiles_matches_cpu() {
    xent_case(Case {
        rows: N,
        dim: H,
        vocab: 32000,
        dtype: DType::BF16,
        row_chunk: 16,
        vocab_tile: 1024,
        weighted: true,
        seed: 200,
    });
}

#[test]
fn linear_xent_bf16_v128256_weighted_matches_cpu() {
    xent_case(Case {
        rows: N,
        dim: H,
        vocab: 128256,
        dtype: DType::BF16,
        row_chunk: 16,
        vocab_tile: linear_xent::VOCAB_TILE,
        weighted: true,
        seed: 300,
    });
}

#[test]
fn linear_xent_f32_v32000_matches_cpu() {
    xent_case(Case {
        rows: N,
        dim: H,
        vocab: 32000,
        dtype: DType::F32,
        row_chunk: 8,
        vocab_tile: 3000,
        weighted: true,
        seed: 400,
    });
}

fn kl_case(c: Case) {
    let Some(dev) = gpu() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = device(dev);
    let (n, dim, v, e) = (c.rows, c.dim, c.vocab, c.dtype.size_in_bytes());
    let name = c.name("linear_kl");
    let (lb, gb) = bounds(c.dtype);
    let (ht, hs, w) = (
        randn(&[n, dim], c.seed),
        randn(&[n, dim], c.seed + 1),
        randn(&[v, dim], c.seed + 2),
    );
    let (htc, hsc, wc) = (
        rounded(&ht, c.dtype),
        rounded(&hs, c.dtype),
        rounded(&w, c.dtype),
    );
    let (htg, hsg, wg) = (
        to_gpu(&ht, c.dtype, dev),
        to_gpu(&hs, c.dtype, dev),
        to_gpu(&w, c.dtype, dev),
    );
    let rw_all = row_weights(n, c.seed + 3);
    let rw = c.weighted.then_some(&rw_all[..]);
    let o = LinearKlOptions {
        row_chunk: c.row_chunk,
        vocab_tile: c.vocab_tile,
    };
    let ws = linear_kl::workspace_bytes(dev, n, dim, v, &o);

    let want = linear_kl::forward(&htc, &hsc, &wc, rw, &o).unwrap();
    let (got, bytes) = measured(&d, || linear_kl::forward(&htg, &hsg, &wg, rw, &o).unwrap());
    scalar_check(&format!("{name}: forward loss"), got.loss, want.loss, lb);
    let (lt, ls) = (to_cpu_f32(&got.lse_teacher), to_cpu_f32(&got.lse_student));
    check(&format!("{name}: lse teacher"), &lt, &want.lse_teacher, lb);
    check(&format!("{name}: lse student"), &ls, &want.lse_student, lb);
    memory_check(
        &format!("{name}: forward"),
        bytes,
        ws + outputs(&[n * 4, n * 4]),
        n,
        v,
    );

    let dloss = 0.7;
    let mut dw_want = Tensor::zeros(&[v, dim], DType::F32, Device::Cpu);
    let (wlt, wls) = (&want.lse_teacher, &want.lse_student);
    let ds_want =
        linear_kl::backward(dloss, &htc, &hsc, &wc, rw, wlt, wls, Some(&mut dw_want), &o).unwrap();
    let mut dw_got = Tensor::try_zeros(&[v, dim], c.dtype, dev).unwrap();
    let (glt, gls) = (&got.lse_teacher, &got.lse_student);
    let (ds_got, bytes) = measured(&d, || {
        linear_kl::backward(dloss, &htg, &hsg, &wg, rw, glt, gls, Some(&mut dw_got), &o).unwrap()
    });
    assert_eq!(ds_got.dtype(), c.dtype);
    check(
        &format!("{name}: backward dstudent"),
        &to_cpu_f32(&ds_got),
        &ds_want,
        gb,
    );
    check(
        &format!("{name}: backward dW"),
        &to_cpu_f32(&dw_got),
        &dw_want,
        gb,
    );
    if let Some(rw) = rw {
        let dead: Vec<bool> = rw.iter().map(|&x| x == 0.0).collect();
        zero_rows(&format!("{name}: backward dstudent"), &ds_got, &dead);
    }
    memory_check(
        &format!("{name}: backward"),
        bytes,
        ws + outputs(&[n * dim * e]),
        n,
        v,
    );
    let mut dw_twice = dw_want.to_device(dev).unwrap();
    linear_kl::backward(
        dloss,
        &htg,
        &hsg,
        &wg,
        rw,
        glt,
        gls,
        Some(&mut dw_twice),
        &o,
    )
    .unwrap();
    check(
        &format!("{name}: backward dW added into f32"),
        &to_cpu_f32(&dw_twice),
        &scaled(&dw_want, 2.0),
        gb,
    );
}

#[test]
fn linear_kl_bf16_v49152_matches_cpu() {
    kl_case(Case {
        rows: N,
        dim: H,
        vocab: 49152,
        dtype: DType::BF16,
        row_chunk: linear_kl::ROW_CHUNK,
        vocab_tile: linear_kl::VOCAB_TILE,
        weighted: false,
        seed: 500,
    });
}

#[test]
fn linear_kl_bf16_v32000_weighted_ragged_tiles_matches_cpu() {
    kl_case(Case {
        rows: N,
        dim: H,
        vocab: 32000,
        dtype: DType::BF16,
        row_chunk: 16,
        vocab_tile: 1024,
        weighted: true,
        seed: 600,
    });
}

#[test]
fn linear_kl_bf16_v128256_weighted_matches_cpu() {
    kl_case(Case {
        rows: N,
        dim: H,
        vocab: 128256,
        dtype: DType::BF16,
        row_chunk: 16,
        vocab_tile: linear_kl::VOCAB_TILE,
        weighted: true,
        seed: 700,
    });
}

#[test]
fn linear_kl_f32_v32000_matches_cpu() {
    kl_case(Case {
        rows: N,
        dim: H,
        vocab: 32000,
        dtype: DType::F32,
        row_chunk: 8,
        vocab_tile: 3000,
        weighted: true,
        seed: 800,
    });
}

/// Tiny shapes with many ragged chunks and tiles, every entry point and both
/// dtypes: quick enough for compute-sanitizer (memcheck, racecheck), which
/// the GPU check runs on tests named `small`.
#[test]
fn linear_xent_and_kl_small_ragged_cases_match_cpu() {
    for (dtype, seed) in [(DType::BF16, 1100), (DType::F32, 1200)] {
        let c = Case {
            rows: 11,
            dim: 24,
            vocab: 300,
            dtype,
            row_chunk: 4,
            vocab_tile: 64,
            weighted: true,
            seed,
        };
        xent_case(c);
        kl_case(c);
        // A vocabulary that is not a multiple of 4: the sweep's scalar loops.
        xent_case(Case { vocab: 301, ..c });
    }
}

#[test]
fn identical_teacher_and_student_give_zero_kl_on_gpu() {
    let Some(dev) = gpu() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = to_gpu(&randn(&[N, H], 900), DType::BF16, dev);
    let w = to_gpu(&randn(&[32000, H], 901), DType::BF16, dev);
    let o = LinearKlOptions::default();
    let out = linear_kl::forward(&h, &h, &w, None, &o).unwrap();
    say(format!(
        "linear_kl identical inputs: loss {:e} (want 0)",
        out.loss
    ));
    assert!(out.loss.abs() < 1e-5, "{}", out.loss);
    let ds = linear_kl::backward(
        1.0,
        &h,
        &h,
        &w,
        None,
        &out.lse_teacher,
        &out.lse_student,
        None,
        &o,
    )
    .unwrap();
    let g = to_cpu_f32(&ds).to_vec_f32();
    let worst = g.iter().fold(0f32, |m, x| m.max(x.abs()));
    say(format!(
        "linear_kl identical inputs: max |dstudent| {worst:e} (want 0)"
    ));
    assert!(worst < 1e-6, "{worst}");
}

/// At a training-sized row count the calls hold the workspace and outputs
/// only: far below the N·V·4 bytes of f32 logits. The GPU paths agree with
/// each other (the small cases above check them against the CPU).
#[test]
fn large_row_counts_never_hold_full_logits() {
    let Some(dev) = gpu() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = device(dev);
    let (n, v) = (4096, 32000);
    let full = n * v * 4;
    let h = to_gpu(&randn(&[n, H], 1000), DType::BF16, dev);
    let w = to_gpu(&randn(&[v, H], 1001), DType::BF16, dev);
    let t = targets(n, v, 3);
    let o = LinearXentOptions::default();
    let ws = linear_xent::workspace_bytes(dev, n, H, v, &o);
    let bound = (ws + outputs(&[n * 4, n * H * 2])).min(full / 8);
    let (fwd, bytes) = measured(&d, || linear_xent::forward(&h, &w, &t, None, &o).unwrap());
    memory_check("linear_xent N=4096 forward", bytes, bound, n, v);
    let mut dw = Tensor::try_zeros(&[v, H], DType::BF16, dev).unwrap();
    let (dh, bytes) = measured(&d, || {
        linear_xent::backward(1.0, &h, &w, &t, None, &fwd.lse, Some(&mut dw), &o).unwrap()
    });
    memory_check("linear_xent N=4096 backward + dW", bytes, bound, n, v);
    let ((one, dh1), bytes) = measured(&d, || {
        linear_xent::forward_backward(&h, &w, &t, None, None, &o).unwrap()
    });
    memory_check("linear_xent N=4096 one sweep", bytes, bound, n, v);
    // 600 whole rows per chunk (over SWEEP_MIN_ROWS, so the sweep runs):
    // six full chunks and a ragged one.
    let os = LinearXentOptions {
        row_chunk: 600,
        vocab_tile: v,
        ..o
    };
    let sbound = (linear_xent::workspace_bytes(dev, n, H, v, &os) + outputs(&[n * 4, n * H * 2]))
        .min(full / 4);
    let mut dw2 = Tensor::try_zeros(&[v, H], DType::BF16, dev).unwrap();
    let ((two, dh2), bytes) = measured(&d, || {
        linear_xent::forward_backward(&h, &w, &t, None, Some(&mut dw2), &os).unwrap()
    });
    memory_check("linear_xent N=4096 one sweep + dW", bytes, sbound, n, v);
    scalar_check(
        "linear_xent N=4096 one-sweep+dW vs two-pass loss",
        two.loss,
        fwd.loss,
        1e-4,
    );
    check(
        "linear_xent N=4096 one-sweep+dW vs two-pass dh",
        &to_cpu_f32(&dh2),
        &to_cpu_f32(&dh),
        1e-2,
    );
    // Seven chunks, each rounding the bf16 dW once, against the two-pass
    // backward's single rounding per tile.
    check(
        "linear_xent N=4096 one-sweep+dW vs two-pass dW",
        &to_cpu_f32(&dw2),
        &to_cpu_f32(&dw),
        2e-2,
    );
    scalar_check(
        "linear_xent N=4096 one-sweep vs two-pass loss",
        one.loss,
        fwd.loss,
        1e-4,
    );
    check(
        "linear_xent N=4096 one-sweep vs two-pass dh",
        &to_cpu_f32(&dh1),
        &to_cpu_f32(&dh),
        1e-2,
    );
    assert!(to_cpu_f32(&dw).to_vec_f32().iter().all(|x| x.is_finite()));

    let s = to_gpu(&randn(&[n, H], 1002), DType::BF16, dev);
    let ko = LinearKlOptions::default();
    let kws = linear_kl::workspace_bytes(dev, n, H, v, &ko);
    let kbound = (kws + outputs(&[n * 4, n * 4])).min(full / 8);
    let (kl, bytes) = measured(&d, || linear_kl::forward(&h, &s, &w, None, &ko).unwrap());
    memory_check("linear_kl N=4096 forward", bytes, kbound, n, v);
    let (ds, bytes) = measured(&d, || {
        linear_kl::backward(
            1.0,
            &h,
            &s,
            &w,
            None,
            &kl.lse_teacher,
            &kl.lse_student,
            Some(&mut dw),
            &ko,
        )
        .unwrap()
    });
    memory_check("linear_kl N=4096 backward + dW", bytes, kbound, n, v);
    assert!(kl.loss.is_finite() && kl.loss > 0.0, "{}", kl.loss);
    assert!(to_cpu_f32(&ds).to_vec_f32().iter().all(|x| x.is_finite()));
}
