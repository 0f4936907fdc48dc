//! Launchers for `kernels/pooling.cu`.
//!
//! The index sets are host data (validated by the ops layer), so they are
//! uploaded per call; for the backward the host also transposes the CSR to
//! token rows with the CPU kernel's own `transpose` (a counting sort,
//! O(T + nnz)), which lets the kernel gather per token row instead of
//! scattering per set: no atomics, deterministic, and for f32 bit-identical to
//! the CPU.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::{Result, Tensor};

const OP: &str = "pooling";

/// out [S, H] = per-set means of hidden [T, H] rows (F32 or BF16); the CSR is already validated.
pub fn forward(
    hidden: &Tensor,
    h: usize,
    offsets: &[u32],
    indices: &[u32],
    sets: usize,
) -> Result<Tensor> {
    let name = format!("pooling_fwd_{}", cuda::kernel_dtype(OP, hidden, "hidden")?);
    let dev = hidden.cuda_device(OP, "hidden")?;
    let out = Tensor::empty(&[sets, h], hidden.dtype(), hidden.device())?;
    if sets == 0 || h == 0 {
        return Ok(out);
    }
    let (grid, h_i) = (cuda::as_i32(OP, "S", sets)?, cuda::as_i32(OP, "H", h)?);
    let off_buf = dev.upload(offsets)?;
    let idx_buf = dev.upload(indices)?;
    let (off_ptr, idx_ptr) = (off_buf.ptr(), idx_buf.ptr());
    let x_ptr = hidden.cuda_ptr(OP, "hidden")?;
    let out_ptr = out.cuda_ptr(OP, "out")?;
    let f = dev.function(&modules::POOLING, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&x_ptr)
        .arg(&off_ptr)
        .arg(&idx_ptr)
        .arg(&out_ptr)
        .arg(&h_i);
    // SAFETY: the argument list matches pooling_fwd_*; offsets has S + 1
    // entries into indices, every index < T (validated), out holds S·H.
    unsafe { b.launch(cuda::cfg(grid as u32, cuda::row_block(h), 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(out)
}

/// dhidden [T, H] (fresh, dout's dtype): dout[s]/|s| summed at every row set s lists, 0 elsewhere.
pub fn backward(
    dout: &Tensor,
    h: usize,
    offsets: &[u32],
    indices: &[u32],
    num_tokens: usize,
) -> Result<Tensor> {
    let name = format!("pooling_bwd_{}", cuda::kernel_dtype(OP, dout, "dout")?);
    let dev = dout.cuda_device(OP, "dout")?;
    let dhidden = Tensor::empty(&[num_tokens, h], dout.dtype(), dout.device())?;
    if num_tokens == 0 || h == 0 {
        return Ok(dhidden);
    }
    let (grid, h_i) = (
        cuda::as_i32(OP, "T", num_tokens)?,
        cuda::as_i32(OP, "H", h)?,
    );
    let (row_start, row_sets) = crate::shared::pooling::transpose(offsets, indices, num_tokens);
    // row_start ends at nnz = indices.len() = offsets[S], a u32.
    let row_start: Vec<u32> = row_start.iter().map(|&r| r as u32).collect();
    let off_buf = dev.upload(offsets)?;
    let start_buf = dev.upload(&row_start)?;
    let sets_buf = dev.upload(&row_sets)?;
    let (off_ptr, start_ptr, sets_ptr) = (off_buf.ptr(), start_buf.ptr(), sets_buf.ptr());
    let dout_ptr = dout.cuda_ptr(OP, "dout")?;
    let dh_ptr = dhidden.cuda_ptr(OP, "dhidden")?;
    let f = dev.function(&modules::POOLING, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&dout_ptr)
        .arg(&off_ptr)
        .arg(&start_ptr)
        .arg(&sets_ptr)
        .arg(&dh_ptr)
        .arg(&h_i);
    // SAFETY: the argument list matches pooling_bwd_*; row_start has T + 1
    // entries into row_sets, whose set ids are < S, and dhidden holds T·H.
    unsafe { b.launch(cuda::cfg(grid as u32, cuda::row_block(h), 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(dhidden)
}
