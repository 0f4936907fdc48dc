//! Helpers shared by the GPU tests: device discovery that skips cleanly,
//! fresh random inputs and relative errors against the CPU reference.

use llm2comp_tensor::{DType, Device, Tensor, cuda};

/// The first CUDA device with poisoned allocations, or None (after printing
/// `SKIPPED (no CUDA device)`) where there is none.
pub fn cuda() -> Option<Device> {
    match cuda::device(0) {
        Ok(_) => {
            cuda::set_poison(true);
            Some(Device::Cuda(0))
        }
        Err(e) => {
            eprintln!("SKIPPED (no CUDA device): {e}");
            None
        }
    }
}

/// ‖got − want‖ / ‖want‖ over f32 copies of both (in f64).
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (to_cpu_f32(got).to_vec_f32(), to_cpu_f32(want).to_vec_f32());
    assert_eq!(g.len(), w.len(), "rel_err: sizes differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in g.iter().zip(&w) {
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Whether every element is finite (poisoned, unwritten outputs are NaN).
pub fn all_finite(t: &Tensor) -> bool {
    to_cpu_f32(t).to_vec_f32().iter().all(|x| x.is_finite())
}

/// Standard normal f32 values on the CPU (never all zeros), seeded.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        // xorshift64*: plenty for test inputs.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let data = (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    Tensor::from_vec(data, shape).expect("randn shape")
}

/// `t` cast to `dtype` and copied to `dev`.
pub fn to_gpu(t: &Tensor, dtype: DType, dev: Device) -> Tensor {
    t.to_dtype(dtype).to_device(dev).expect("copy to GPU")
}

/// `t` on the CPU as f32.
pub fn to_cpu_f32(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).expect("copy to CPU").to_dtype(DType::F32)
}
