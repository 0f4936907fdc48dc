//! Launchers for `kernels/embedding.cu`.
//!
//! The backward uses no atomics. The ids are host data, so the host groups
//! the positions by id with the CPU kernel's own `group_by_id` (a stable sort
//! of N ids, O(N log N), small next to a step) and uploads that grouping; each
//! GPU block then owns one destination row and sums its positions in position
//! order, the CPU's order. The table gradient is therefore deterministic and,
//! for f32 `dout`, bit-identical to the CPU's; the same grouping gives the
//! sparse variant for free.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, CudaDevice, modules};
use crate::{DType, Result, Tensor};

const OP: &str = "embedding";

/// out [N, H] = table[ids]; table F32 or BF16 on a CUDA device, ids already range-checked.
pub fn forward(ids: &[u32], table: &Tensor, hidden: usize) -> Result<Tensor> {
    let name = format!("embedding_fwd_{}", cuda::kernel_dtype(OP, table, "table")?);
    let dev = table.cuda_device(OP, "table")?;
    let out = Tensor::empty(&[ids.len(), hidden], table.dtype(), table.device())?;
    if ids.is_empty() || hidden == 0 {
        return Ok(out);
    }
    let (grid, h) = (
        cuda::as_i32(OP, "N", ids.len())?,
        cuda::as_i32(OP, "H", hidden)?,
    );
    let ids_buf = dev.upload(ids)?;
    let ids_ptr = ids_buf.ptr();
    let table_ptr = table.cuda_ptr(OP, "table")?;
    let out_ptr = out.cuda_ptr(OP, "out")?;
    let f = dev.function(&modules::EMBEDDING, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&ids_ptr).arg(&table_ptr).arg(&out_ptr).arg(&h);
    // SAFETY: the argument list matches embedding_fwd_*; ids < V (checked by
    // the caller) keep every read inside table, and out holds N·H elements.
    unsafe { b.launch(cuda::cfg(grid as u32, cuda::row_block(hidden), 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(out)
}

/// The positions grouped by id, as the kernel reads them (all u32).
struct Runs {
    /// Positions stably sorted by id: [N].
    order: Vec<u32>,
    /// Where run u starts in `order`: [U + 1].
    start: Vec<u32>,
    /// The id of run u, ascending: [U].
    ids: Vec<u32>,
}

fn group(ids: &[u32]) -> Result<Runs> {
    cuda::as_i32(OP, "N", ids.len())?;
    let (order, runs) = crate::shared::embedding::group_by_id(ids);
    // N < 2³¹ (checked above), so every position and run start fits u32.
    let order = order.iter().map(|&p| p as u32).collect();
    let mut start: Vec<u32> = runs.iter().map(|(_, r)| r.start as u32).collect();
    start.push(ids.len() as u32);
    let ids = runs.iter().map(|(id, _)| *id).collect();
    Ok(Runs { order, start, ids })
}

/// Runs `embedding_bwd_*`: run u's summed rows go to dst row `runs.ids[u]`,
/// added to what is there (dense), or to row u, overwriting it (sparse).
fn scatter_runs(
    dev: &Arc<CudaDevice>,
    runs: &Runs,
    dout: &Tensor,
    hidden: usize,
    dst_ptr: u64,
    dense: bool,
) -> Result<()> {
    let name = format!("embedding_bwd_{}", cuda::kernel_dtype(OP, dout, "dout")?);
    if runs.ids.is_empty() || hidden == 0 {
        return Ok(());
    }
    let h = cuda::as_i32(OP, "H", hidden)?;
    let order_buf = dev.upload(&runs.order)?;
    let start_buf = dev.upload(&runs.start)?;
    let rows_buf = if dense {
        Some(dev.upload(&runs.ids)?)
    } else {
        None
    };
    let (order_ptr, start_ptr) = (order_buf.ptr(), start_buf.ptr());
    // A null run_row makes the kernel write run u to row u (the sparse layout).
    let rows_ptr: u64 = rows_buf.as_ref().map_or(0, |b| b.ptr());
    let dout_ptr = dout.cuda_ptr(OP, "dout")?;
    let accumulate: i32 = dense.into();
    let f = dev.function(&modules::EMBEDDING, &name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&order_ptr)
        .arg(&start_ptr)
        .arg(&rows_ptr)
        .arg(&dout_ptr)
        .arg(&dst_ptr)
        .arg(&h)
        .arg(&accumulate);
    // SAFETY: the argument list matches embedding_bwd_*; order holds N
    // positions < N, start U + 1 offsets into it, run ids < V (checked by the
    // caller), and dst holds V·H (dense) or U·H (sparse) f32.
    unsafe { b.launch(cuda::cfg(runs.ids.len() as u32, cuda::row_block(hidden), 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(())
}

/// dtable [V, H] (F32, CUDA) += scatter of dout [N, H] (F32 or BF16) by ids.
pub fn backward(ids: &[u32], dout: &Tensor, hidden: usize, dtable: &mut Tensor) -> Result<()> {
    let dev = dout.cuda_device(OP, "dout")?;
    let dst = dtable.cuda_ptr(OP, "dtable")?;
    scatter_runs(&dev, &group(ids)?, dout, hidden, dst, true)
}

/// (distinct ids ascending, their gradient rows [U, H] as a fresh F32 CUDA tensor).
pub fn backward_sparse(ids: &[u32], dout: &Tensor, hidden: usize) -> Result<(Vec<u32>, Tensor)> {
    let dev = dout.cuda_device(OP, "dout")?;
    let runs = group(ids)?;
    let grad = Tensor::empty(&[runs.ids.len(), hidden], DType::F32, dout.device())?;
    scatter_runs(&dev, &runs, dout, hidden, grad.cuda_ptr(OP, "grad")?, false)?;
    Ok((runs.ids, grad))
}
