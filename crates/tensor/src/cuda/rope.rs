//! Launchers for `kernels/rope.cu`.
//!
//! x may be f32 or bf16; the cos/sin tables stay f32 (they live on the device
//! once per model, built by `RopeTable::new`). Positions come from the host
//! batch packer, so each call uploads them (4 bytes a token) before the launch;
//! the upload is ordered on the device's one stream ahead of the kernel.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::shared::rope::RopeTable;
use crate::{DType, Result, Tensor, TensorError};

const OP: &str = "rope";
/// Threads per block of the elementwise (one pair per thread) kernel.
const BLOCK: u32 = 256;

/// A copy of x: [tokens, heads, D] rotated by +angle, or −angle when `inverse`.
/// Shapes, positions and the table's device were checked by `ops::rope`.
pub fn rotate(x: &Tensor, positions: &[u32], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    let y = Tensor::empty(x.shape(), x.dtype(), x.device())?;
    launch(x, y.cuda_ptr(OP, "y")?, positions, table, inverse)?;
    Ok(y)
}

/// [`rotate`] overwriting x.
pub fn rotate_inplace(
    x: &mut Tensor,
    positions: &[u32],
    table: &RopeTable,
    inverse: bool,
) -> Result<()> {
    let ptr = x.cuda_ptr(OP, "x")?;
    launch(x, ptr, positions, table, inverse)
}

/// Rotates `x` into the buffer at `y_ptr` (x's own, or a fresh one of x's shape and dtype).
fn launch(
    x: &Tensor,
    y_ptr: u64,
    positions: &[u32],
    table: &RopeTable,
    inverse: bool,
) -> Result<()> {
    let name = match x.dtype() {
        DType::F32 => "rope_f32",
        DType::BF16 => "rope_bf16",
        found => {
            return Err(TensorError::invalid(
                OP,
                format!("x is {found}; the CUDA kernels take f32 or bf16"),
            ));
        }
    };
    table.cos().expect_dtype(OP, "cos table", DType::F32)?;
    table.sin().expect_dtype(OP, "sin table", DType::F32)?;
    let (tokens, heads, d) = x.dims3(OP, "x")?;
    let half = d / 2;
    let pairs = tokens * heads * half;
    if pairs == 0 {
        return Ok(());
    }
    let dev = x.cuda_device(OP, "x")?;
    let pos = dev.upload(positions)?;
    let pos_ptr = pos.ptr();
    let x_ptr = x.cuda_ptr(OP, "x")?;
    let cos_ptr = table.cos().cuda_ptr(OP, "cos table")?;
    let sin_ptr = table.sin().cuda_ptr(OP, "sin table")?;
    let (tokens, heads, half) = (tokens as u64, heads as u64, half as u64);
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    let f = dev.function(&modules::ROPE, name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&x_ptr)
        .arg(&y_ptr)
        .arg(&pos_ptr)
        .arg(&cos_ptr)
        .arg(&sin_ptr)
        .arg(&tokens)
        .arg(&heads)
        .arg(&half)
        .arg(&sign);
    let grid = cuda::blocks_for(pairs, BLOCK);
    // SAFETY: x and y hold tokens·heads·2·half elements of T, positions tokens u32 each
    // below the tables' rows (checked by ops::rope), cos/sin max_positions·half f32.
    unsafe { b.launch(cuda::cfg(grid, BLOCK, 0)) }.map_err(cuda::launch_err(OP))?;
    drop(pos);
    Ok(())
}
