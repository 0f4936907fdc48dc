//! Shared helpers of the GPU tests.

use std::io::Write;
use std::sync::Once;

use llm2comp_tensor::testing::{rng, uniform};
use llm2comp_tensor::{DType, Device, Tensor, cuda};

/// The CUDA device to test on, or `None` after printing that the test is
/// skipped. The line goes straight to stderr (not through the test harness's
/// capture) so a run without a GPU says so even when every test "passes".
pub fn cuda() -> Option<Device> {
    static INIT: Once = Once::new();
    let available = cuda::device_count() > 0 && cuda::device(0).is_ok();
    if !available {
        let name = std::thread::current()
            .name()
            .unwrap_or("gpu test")
            .to_string();
        let _ = writeln!(std::io::stderr(), "{name}: SKIPPED (no CUDA device)");
        return None;
    }
    INIT.call_once(|| cuda::set_poison(true));
    Some(Device::Cuda(0))
}

/// ‖got − want‖ / ‖want‖ over all elements; infinite when `got` holds a NaN.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    let (g, w) = (got.to_vec_f32(), want.to_vec_f32());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in g.iter().zip(&w) {
        if !a.is_finite() {
            return f64::INFINITY;
        }
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Asserts `rel_err(got, want) <= bound`, printing the figure either way.
pub fn check(name: &str, got: &Tensor, want: &Tensor, bound: f64) {
    let e = rel_err(got, want);
    let _ = writeln!(
        std::io::stderr(),
        "{name}: rel err {e:.3e} (bound {bound:.0e})"
    );
    assert!(e <= bound, "{name}: rel err {e:.3e} > {bound:.0e}");
}

/// A fresh random f32 CPU tensor in [-1, 1) (never zeros).
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform::<f32>(&mut rng(seed), n, 1.0), shape).unwrap()
}

/// The same values rounded through `dtype` (so the CPU reference sees exactly
/// the inputs the GPU gets), still f32 on the CPU.
pub fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).to_dtype(DType::F32)
}

/// `t` (f32, CPU) converted to `dtype` and copied to `dev`.
pub fn to_gpu(t: &Tensor, dtype: DType, dev: Device) -> Tensor {
    t.to_dtype(dtype).to_device(dev).unwrap()
}

/// A device tensor back on the CPU as f32.
pub fn to_cpu_f32(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32)
}
