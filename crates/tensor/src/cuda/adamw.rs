//! Launcher for `kernels/adamw.cu`.
//!
//! The step's scalars come from the CPU kernel's `Coefs` (f64, rounded to
//! f32), and the kernel applies them in the CPU's operation order with
//! explicitly rounded intrinsics: the CUDA step is bit-identical to the CPU's.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::shared::adamw::{AdamWConfig, Coefs};
use crate::{DType, Result, Tensor};

const OP: &str = "adamw";
/// Threads per block of the grid-stride loop.
const BLOCK: u32 = 256;

/// One step in place; all four tensors F32 on one CUDA device with one shape (checked by ops).
pub fn step(
    params: &mut Tensor,
    grads: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    cfg: &AdamWConfig,
    t: u64,
) -> Result<()> {
    params.expect_dtype(OP, "params", DType::F32)?;
    grads.expect_dtype(OP, "grads", DType::F32)?;
    m.expect_dtype(OP, "m", DType::F32)?;
    v.expect_dtype(OP, "v", DType::F32)?;
    let dev = params.cuda_device(OP, "params")?;
    let n = params.numel();
    if n == 0 {
        return Ok(());
    }
    let c = Coefs::<f32>::new(cfg, t);
    let n_i64 = n as i64;
    let p_ptr = params.cuda_ptr(OP, "params")?;
    let g_ptr = grads.cuda_ptr(OP, "grads")?;
    let m_ptr = m.cuda_ptr(OP, "m")?;
    let v_ptr = v.cuda_ptr(OP, "v")?;
    let f = dev.function(&modules::ADAMW, "adamw_step_f32")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&p_ptr)
        .arg(&g_ptr)
        .arg(&m_ptr)
        .arg(&v_ptr)
        .arg(&n_i64)
        .arg(&c.decay)
        .arg(&c.step_size)
        .arg(&c.bc2_sqrt)
        .arg(&c.b1)
        .arg(&c.b2)
        .arg(&c.c1)
        .arg(&c.c2)
        .arg(&c.eps);
    // SAFETY: the argument list matches adamw_step_f32; all four buffers hold n f32.
    unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(())
}
