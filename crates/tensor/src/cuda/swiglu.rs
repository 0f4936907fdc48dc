//! Launchers for `kernels/swiglu.cu`: gate, up and dout share one dtype, f32
//! or bf16, and the outputs take it too (silu is computed in f32 registers and
//! rounded once on store).

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::{Result, Tensor};

const OP: &str = "swiglu";
/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

/// "f32" or "bf16" for `first` (gate), else an error; every other tensor must share its dtype.
fn dtype_name(first: &Tensor, others: &[(&Tensor, &'static str)]) -> Result<&'static str> {
    let name = crate::cuda::kernel_dtype(OP, first, "gate")?;
    for (t, what) in others {
        t.expect_dtype(OP, what, first.dtype())?;
    }
    Ok(name)
}

/// silu(gate) · up; shapes and devices already checked by `ops::swiglu`.
pub fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let t = dtype_name(gate, &[(up, "up")])?;
    let out = Tensor::empty(gate.shape(), gate.dtype(), gate.device())?;
    let n = gate.numel();
    if n == 0 {
        return Ok(out);
    }
    let dev = gate.cuda_device(OP, "gate")?;
    let (g, u, o) = (
        gate.cuda_ptr(OP, "gate")?,
        up.cuda_ptr(OP, "up")?,
        out.cuda_ptr(OP, "out")?,
    );
    let n64 = n as u64;
    let f = dev.function(&modules::SWIGLU, &format!("swiglu_fwd_{t}"))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&g).arg(&u).arg(&o).arg(&n64);
    // SAFETY: gate, up and out hold n elements of one dtype, the kernel's T.
    unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(out)
}

/// (dgate, dup); shapes and devices already checked by `ops::swiglu`.
pub fn backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let t = dtype_name(gate, &[(up, "up"), (dout, "dout")])?;
    let dgate = Tensor::empty(gate.shape(), gate.dtype(), gate.device())?;
    let dup = Tensor::empty(gate.shape(), gate.dtype(), gate.device())?;
    let n = gate.numel();
    if n == 0 {
        return Ok((dgate, dup));
    }
    let dev = gate.cuda_device(OP, "gate")?;
    let (d, g, u) = (
        dout.cuda_ptr(OP, "dout")?,
        gate.cuda_ptr(OP, "gate")?,
        up.cuda_ptr(OP, "up")?,
    );
    let (dg, du) = (dgate.cuda_ptr(OP, "dgate")?, dup.cuda_ptr(OP, "dup")?);
    let n64 = n as u64;
    let f = dev.function(&modules::SWIGLU, &format!("swiglu_bwd_{t}"))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&d).arg(&g).arg(&u).arg(&dg).arg(&du).arg(&n64);
    // SAFETY: dout, gate, up, dgate and dup hold n elements of one dtype, the kernel's T.
    unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok((dgate, dup))
}
