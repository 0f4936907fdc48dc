//! Launchers for `kernels/rmsnorm.cu`.
//!
//! x may be f32 or bf16, and the weight independently f32 or bf16 (a bf16
//! model can keep an f32 master copy of a trained norm weight); rstd is always
//! f32. The weight gradient is reduced without atomics: every backward block
//! keeps per-column sums of its rows in shared memory and stores them to an f32
//! scratch row, and a second kernel adds the column sums of that scratch, in
//! block order, into `dweight` (f32 or bf16). The result is therefore the same
//! bit for bit on every run; only the number of backward blocks (fixed here)
//! changes the summation order.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, CudaDevice, modules};
use crate::{DType, Result, Tensor, TensorError};

const OP: &str = "rmsnorm";
/// Backward blocks when a weight gradient is wanted (rows are grid-strided over them):
/// enough to fill an H100 several times over, few enough that the scratch stays small.
const DW_BLOCKS: usize = 528;
/// The per-block column sums live in 48 KiB of shared memory (no opt-in needed).
const MAX_DW_DIM: usize = 48 * 1024 / 4;

fn device(x: &Tensor) -> Result<Arc<CudaDevice>> {
    x.cuda_device(OP, "x")
}

/// y and rstd for x: [rows, dim] (any leading shape) and weight: [dim]; shapes already checked.
pub fn forward(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    rows: usize,
    dim: usize,
) -> Result<(Tensor, Tensor)> {
    let name = format!(
        "rmsnorm_fwd_{}_w{}",
        cuda::kernel_dtype(OP, x, "x")?,
        cuda::kernel_dtype(OP, weight, "weight")?
    );
    let dev = device(x)?;
    let y = Tensor::empty(x.shape(), x.dtype(), x.device())?;
    let rstd = Tensor::empty(&[rows], DType::F32, x.device())?;
    if rows == 0 || dim == 0 {
        return Ok((y, rstd));
    }
    let (rows_i, dim_i) = (
        cuda::as_i32(OP, "rows", rows)?,
        cuda::as_i32(OP, "dim", dim)?,
    );
    let x_ptr = x.cuda_ptr(OP, "x")?;
    let w_ptr = weight.cuda_ptr(OP, "weight")?;
    let y_ptr = y.cuda_ptr(OP, "y")?;
    let r_ptr = rstd.cuda_ptr(OP, "rstd")?;
    let f = dev.function(&modules::RMSNORM, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&x_ptr)
        .arg(&w_ptr)
        .arg(&y_ptr)
        .arg(&r_ptr)
        .arg(&rows_i)
        .arg(&dim_i)
        .arg(&eps);
    // SAFETY: x, y hold rows·dim elements of the kernel's X, weight dim of W, rstd rows f32.
    unsafe { b.launch(cuda::cfg(rows as u32, cuda::row_block(dim), 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok((y, rstd))
}

/// dx for dy, x: [rows, dim], weight: [dim], rstd: [rows] f32; adds into `dweight` when given.
pub fn backward(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    dweight: Option<&mut Tensor>,
    rows: usize,
    dim: usize,
) -> Result<Tensor> {
    let xt = cuda::kernel_dtype(OP, x, "x")?;
    dy.expect_dtype(OP, "dy", x.dtype())?;
    rstd.expect_dtype(OP, "rstd", DType::F32)?;
    let name = format!(
        "rmsnorm_bwd_{xt}_w{}",
        cuda::kernel_dtype(OP, weight, "weight")?
    );
    let dw_name = match &dweight {
        Some(dw) => Some(format!(
            "rmsnorm_dweight_{}",
            cuda::kernel_dtype(OP, dw, "dweight")?
        )),
        None => None,
    };
    if dweight.is_some() && dim > MAX_DW_DIM {
        return Err(TensorError::invalid(
            OP,
            format!(
                "dim {dim} exceeds {MAX_DW_DIM}, the largest weight gradient the CUDA backward reduces in shared memory"
            ),
        ));
    }
    let dev = device(x)?;
    let dx = Tensor::empty(x.shape(), x.dtype(), x.device())?;
    if rows == 0 || dim == 0 {
        return Ok(dx);
    }
    let (rows_i, dim_i) = (
        cuda::as_i32(OP, "rows", rows)?,
        cuda::as_i32(OP, "dim", dim)?,
    );
    let dy_ptr = dy.cuda_ptr(OP, "dy")?;
    let x_ptr = x.cuda_ptr(OP, "x")?;
    let w_ptr = weight.cuda_ptr(OP, "weight")?;
    let r_ptr = rstd.cuda_ptr(OP, "rstd")?;
    let dx_ptr = dx.cuda_ptr(OP, "dx")?;
    let block = cuda::row_block(dim);
    let (Some(dw), Some(dw_name)) = (dweight, dw_name) else {
        let f = dev.function(&modules::RMSNORM, &name)?;
        let null = 0u64;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&dy_ptr)
            .arg(&x_ptr)
            .arg(&w_ptr)
            .arg(&r_ptr)
            .arg(&dx_ptr)
            .arg(&null)
            .arg(&rows_i)
            .arg(&dim_i);
        // SAFETY: dy, x, dx hold rows·dim elements of X, weight dim of W, rstd rows f32;
        // a null partial makes the kernel skip the weight-gradient sums.
        unsafe { b.launch(cuda::cfg(rows as u32, block, 0)) }.map_err(cuda::launch_err(OP))?;
        return Ok(dx);
    };
    let blocks = rows.min(DW_BLOCKS);
    let blocks_i = cuda::as_i32(OP, "blocks", blocks)?;
    // Every block stores its full row of column sums, so the scratch needs no zeroing.
    let partial = dev.alloc(blocks * dim * 4)?;
    let p_ptr = partial.ptr();
    let dw_ptr = dw.cuda_ptr(OP, "dweight")?;
    let f = dev.function(&modules::RMSNORM, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&dy_ptr)
        .arg(&x_ptr)
        .arg(&w_ptr)
        .arg(&r_ptr)
        .arg(&dx_ptr)
        .arg(&p_ptr)
        .arg(&rows_i)
        .arg(&dim_i);
    // SAFETY: as above, and partial holds blocks·dim f32 (one row per launched block).
    unsafe { b.launch(cuda::cfg(blocks as u32, block, (dim * 4) as u32)) }
        .map_err(cuda::launch_err(OP))?;
    let f = dev.function(&modules::RMSNORM, &dw_name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&p_ptr).arg(&dw_ptr).arg(&blocks_i).arg(&dim_i);
    // SAFETY: partial holds blocks·dim f32 and dweight dim elements of its dtype.
    unsafe { b.launch(cuda::cfg(dim.div_ceil(256) as u32, 256, 0)) }
        .map_err(cuda::launch_err(OP))?;
    drop(partial);
    Ok(dx)
}
