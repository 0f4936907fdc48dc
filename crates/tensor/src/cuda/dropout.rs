//! Launchers for `kernels/dropout.cu`.
//!
//! The keep threshold and the 1/(1 − p) scale are computed here, on the host,
//! by the same code the CPU kernel uses (`keep_threshold`, then an f64
//! division rounded to f32), and the kernel reproduces the CPU's hash with
//! 64-bit wrapping arithmetic: a CUDA call drops exactly the elements a CPU
//! call with the same (seed, offset) drops.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::{DType, Result, Tensor, TensorError, cpu};

const OP: &str = "dropout";
/// Threads per block of the grid-stride loop.
const BLOCK: u32 = 256;

/// dst = src · mask / (1 − p), a fresh tensor of src's shape and dtype (F32 or BF16).
pub fn apply(src: &Tensor, p: f32, seed: u64, offset: u64, what: &'static str) -> Result<Tensor> {
    let name = match src.dtype() {
        DType::F32 => "dropout_f32",
        DType::BF16 => "dropout_bf16",
        found => {
            return Err(TensorError::invalid(
                OP,
                format!("{what} is {found}; the CUDA kernels take f32 or bf16"),
            ));
        }
    };
    let dev = src.cuda_device(OP, what)?;
    let dst = Tensor::empty(src.shape(), src.dtype(), src.device())?;
    let n = src.numel();
    if n == 0 {
        return Ok(dst);
    }
    let n_i64 = n as i64;
    let thr = cpu::dropout::keep_threshold(p);
    // As the CPU's `T::of(1.0 / (1.0 - p as f64))` for T = f32.
    let scale = (1.0 / (1.0 - p as f64)) as f32;
    let src_ptr = src.cuda_ptr(OP, what)?;
    let dst_ptr = dst.cuda_ptr(OP, "out")?;
    let f = dev.function(&modules::DROPOUT, name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&src_ptr)
        .arg(&dst_ptr)
        .arg(&n_i64)
        .arg(&seed)
        .arg(&offset)
        .arg(&thr)
        .arg(&scale);
    // SAFETY: the argument list matches dropout_*; both buffers hold n elements.
    unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(dst)
}
