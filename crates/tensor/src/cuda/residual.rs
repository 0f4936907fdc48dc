//! Launchers for `kernels/residual.cu`. forward/backward keep one dtype (f32
//! or bf16) throughout; `add_into` also mixes them (an f32 accumulator taking
//! a bf16 gradient, or the reverse), since the sum is formed in f32 anyway.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::{Result, Tensor};

const OP: &str = "residual";
/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

/// Launches `name` over n elements with the given pointer arguments.
fn launch(t: &Tensor, name: &str, ptrs: &[u64], n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let dev = t.cuda_device(OP, "tensor")?;
    let f = dev.function(&modules::RESIDUAL, name)?;
    let n64 = n as u64;
    let mut b = dev.stream().launch_builder(&f);
    for p in ptrs {
        b.arg(p);
    }
    b.arg(&n64);
    let grid = cuda::blocks_for(n, BLOCK);
    // SAFETY: each pointer holds n elements of the dtype its kernel name spells.
    unsafe { b.launch(cuda::cfg(grid, BLOCK, 0)) }.map_err(cuda::launch_err(OP))?;
    Ok(())
}

/// a + b (same shape, dtype and device, checked by `ops::residual`).
pub fn forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let t = cuda::kernel_dtype(OP, a, "a")?;
    b.expect_dtype(OP, "b", a.dtype())?;
    let out = Tensor::empty(a.shape(), a.dtype(), a.device())?;
    let ptrs = [
        a.cuda_ptr(OP, "a")?,
        b.cuda_ptr(OP, "b")?,
        out.cuda_ptr(OP, "out")?,
    ];
    launch(a, &format!("residual_fwd_{t}"), &ptrs, a.numel())?;
    Ok(out)
}

/// (dout, dout) as two fresh tensors.
pub fn backward(dout: &Tensor) -> Result<(Tensor, Tensor)> {
    let t = cuda::kernel_dtype(OP, dout, "dout")?;
    let da = Tensor::empty(dout.shape(), dout.dtype(), dout.device())?;
    let db = Tensor::empty(dout.shape(), dout.dtype(), dout.device())?;
    let ptrs = [
        dout.cuda_ptr(OP, "dout")?,
        da.cuda_ptr(OP, "da")?,
        db.cuda_ptr(OP, "db")?,
    ];
    launch(dout, &format!("residual_bwd_{t}"), &ptrs, dout.numel())?;
    Ok((da, db))
}

/// acc += x, each f32 or bf16 independently.
pub fn add_into(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    let name = format!(
        "residual_add_{}_{}",
        cuda::kernel_dtype(OP, acc, "acc")?,
        cuda::kernel_dtype(OP, x, "x")?
    );
    let ptrs = [acc.cuda_ptr(OP, "acc")?, x.cuda_ptr(OP, "x")?];
    launch(x, &name, &ptrs, x.numel())
}
