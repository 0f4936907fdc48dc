//! Launchers for `kernels/grad_clip.cu`.
//!
//! The squared norm is reduced in two levels, in f64 as on the CPU: one
//! launch per tensor writes per-block partial sums into its own slice of one
//! shared partials buffer, then a single-block kernel sums all partials and
//! the host reads back 8 bytes. Every grid depends only on the tensor sizes,
//! so the norm is bitwise reproducible run to run (it may differ from the
//! CPU's in the last bits: another summation order). Clipping then reuses the
//! CPU kernel's rule (coefficient max_norm/(norm + 1e-6), applied only when
//! below 1, computed in f64 and rounded to f32) and scales each tensor in place.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::{Result, Tensor, TensorError};

const OP: &str = "clip_grad_norm";
/// Threads per block; the kernels' shared arrays assume exactly this.
const BLOCK: u32 = 256;
/// Most partial-sum blocks per tensor: enough to fill an H100, few enough to
/// keep the final single-block sum short.
const MAX_PARTIALS: usize = 512;

/// Partial-sum blocks for a tensor of n elements (0 for an empty one).
fn partial_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK as usize).min(MAX_PARTIALS)
}

/// The global L2 norm of all `grads` (F32 or BF16, one CUDA device), accumulated in f64.
pub fn global_norm(grads: &[&Tensor]) -> Result<f64> {
    let Some(first) = grads.first() else {
        return Ok(0.0);
    };
    let dev = first.cuda_device(OP, "grad")?;
    let names = grads
        .iter()
        .map(|g| cuda::kernel_dtype(OP, g, "grad").map(|d| format!("sumsq_partials_{d}")))
        .collect::<Result<Vec<_>>>()?;
    let total: usize = grads.iter().map(|g| partial_blocks(g.numel())).sum();
    if total == 0 {
        return Ok(0.0);
    }
    let count = i32::try_from(total)
        .map_err(|_| TensorError::invalid(OP, format!("{total} partial sums exceed i32")))?;
    let partials = dev.alloc(total * 8)?;
    let mut slot = 0usize;
    for (g, name) in grads.iter().zip(&names) {
        let blocks = partial_blocks(g.numel());
        if blocks == 0 {
            continue;
        }
        let x_ptr = g.cuda_ptr(OP, "grad")?;
        let n_i64 = g.numel() as i64;
        let out_ptr = partials.ptr() + (slot * 8) as u64;
        let f = dev.function(&modules::GRAD_CLIP, name)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&x_ptr).arg(&n_i64).arg(&out_ptr);
        // SAFETY: the argument list matches sumsq_partials_*; the tensor holds
        // n elements and partials has `blocks` f64 slots from `slot` on.
        unsafe { b.launch(cuda::cfg(blocks as u32, BLOCK, 0)) }.map_err(cuda::launch_err(OP))?;
        slot += blocks;
    }
    let out = dev.alloc(8)?;
    let (p_ptr, o_ptr) = (partials.ptr(), out.ptr());
    let f = dev.function(&modules::GRAD_CLIP, "sumsq_final")?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&p_ptr).arg(&count).arg(&o_ptr);
    // SAFETY: the argument list matches sumsq_final; partials holds `count` f64, out one.
    unsafe { b.launch(cuda::cfg(1, BLOCK, 0)) }.map_err(cuda::launch_err(OP))?;
    let mut bytes = [0u8; 8];
    // Synchronises the stream, so a failed kernel surfaces here.
    dev.copy_to_host(&out, &mut bytes)?;
    Ok(f64::from_le_bytes(bytes).sqrt())
}

/// Multiplies every element of every grad by `factor` in place.
pub fn scale(grads: &mut [&mut Tensor], factor: f32) -> Result<()> {
    for g in grads.iter_mut() {
        let name = format!("scale_{}", cuda::kernel_dtype(OP, g, "grad")?);
        let n = g.numel();
        if n == 0 {
            continue;
        }
        let dev = g.cuda_device(OP, "grad")?;
        let x_ptr = g.cuda_ptr(OP, "grad")?;
        let n_i64 = n as i64;
        let f = dev.function(&modules::GRAD_CLIP, &name)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&x_ptr).arg(&n_i64).arg(&factor);
        // SAFETY: the argument list matches scale_*; the tensor holds n elements.
        unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
            .map_err(cuda::launch_err(OP))?;
    }
    Ok(())
}

/// As `cpu::grad_clip::clip_grad_norm`: returns the pre-clip norm, scales
/// when max_norm/(norm + 1e-6) < 1, and leaves the grads alone when the norm
/// is not finite (the ops layer turns that into its error).
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f64) -> Result<f64> {
    let norm = {
        let views: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
        global_norm(&views)?
    };
    if norm.is_finite() {
        let coef = max_norm / (norm + crate::shared::grad_clip::CLIP_EPS);
        if coef < 1.0 {
            scale(grads, coef as f32)?;
        }
    }
    Ok(norm)
}
