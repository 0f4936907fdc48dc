//! dtype conversion on the device (`kernels/cast.cu`).

use cudarc::driver::PushKernelArg;

use super::{blocks_for, cfg, launch_err, modules};
use crate::{DType, Result, Tensor};

const OP: &str = "cast";

fn short(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

/// A copy of CUDA tensor `x` converted to `dtype` (round-to-nearest-even).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let dev = x.cuda_device(OP, "x")?;
    if x.dtype() == dtype {
        return x.try_clone();
    }
    let y = Tensor::empty(x.shape(), dtype, x.device())?;
    let n = x.numel() as u64;
    if n == 0 {
        return Ok(y);
    }
    let f = dev.function(
        &modules::CAST,
        &format!("cast_{}_{}", short(x.dtype()), short(dtype)),
    )?;
    let (xp, yp) = (x.cuda_ptr(OP, "x")?, y.cuda_ptr(OP, "y")?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&n);
    // SAFETY: x and y hold n elements of the kernel's source and destination types.
    unsafe { b.launch(cfg(blocks_for(n as usize, 256), 256, 0)) }.map_err(launch_err(OP))?;
    Ok(y)
}
