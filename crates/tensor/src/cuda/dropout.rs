//! Launchers for `kernels/dropout.cu`.
//!
//! The keep threshold and the 1/(1 − p) scale are computed here, on the host,
//! by the same code the CPU kernel uses (`keep_threshold`, then an f64
//! division rounded to f32), and the kernel reproduces the CPU's hash with
//! 64-bit wrapping arithmetic: a CUDA call drops exactly the elements a CPU
//! call with the same (seed, offset) drops.

use cudarc::driver::PushKernelArg;

use crate::cuda::{self, modules};
use crate::shared::dropout::SeqKeys;
use crate::{DType, Result, Tensor, TensorError};

const OP: &str = "dropout";
/// Threads per block of the grid-stride loop.
const BLOCK: u32 = 256;

/// dst = src · mask / (1 − p), a fresh tensor of src's shape and dtype (F32 or BF16).
pub fn apply(src: &Tensor, p: f32, seed: u64, offset: u64, what: &'static str) -> Result<Tensor> {
    let dst = Tensor::empty(src.shape(), src.dtype(), src.device())?;
    launch(src, &dst, 0..src.numel(), p, seed, offset, what)?;
    Ok(dst)
}

/// As [`apply`] with one mask stream per sequence of `keys` (rows
/// `cu_seqlens[s]..cu_seqlens[s + 1]` of src's leading dimension): sequence s
/// draws from `keys.seed(seed, s)` with element indices counted from its own
/// first element, exactly as the CPU's per-sequence loop, so both drop the
/// same elements. One launch of the kernel per non-empty sequence (a packed
/// contrastive batch holds at most a few hundred).
pub fn apply_keyed(
    src: &Tensor,
    p: f32,
    seed: u64,
    offset: u64,
    keys: &SeqKeys,
    what: &'static str,
) -> Result<Tensor> {
    let dst = Tensor::empty(src.shape(), src.dtype(), src.device())?;
    let width = src.numel() / keys.rows().max(1);
    for (s, w) in keys.cu_seqlens().windows(2).enumerate() {
        let range = w[0] as usize * width..w[1] as usize * width;
        launch(src, &dst, range, p, keys.seed(seed, s), offset, what)?;
    }
    Ok(dst)
}

/// Runs the kernel on elements `range` of src into the same elements of dst,
/// with the stream (seed, offset) starting at the range's first element.
fn launch(
    src: &Tensor,
    dst: &Tensor,
    range: std::ops::Range<usize>,
    p: f32,
    seed: u64,
    offset: u64,
    what: &'static str,
) -> Result<()> {
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
    let n = range.len();
    if n == 0 {
        return Ok(());
    }
    let n_i64 = n as i64;
    let thr = crate::shared::dropout::keep_threshold(p);
    // As the CPU's `T::of(1.0 / (1.0 - p as f64))` for T = f32.
    let scale = (1.0 / (1.0 - p as f64)) as f32;
    let at = (range.start * src.dtype().size_in_bytes()) as u64;
    let src_ptr = src.cuda_ptr(OP, what)? + at;
    let dst_ptr = dst.cuda_ptr(OP, "out")? + at;
    let f = dev.function(&modules::DROPOUT, name)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&src_ptr)
        .arg(&dst_ptr)
        .arg(&n_i64)
        .arg(&seed)
        .arg(&offset)
        .arg(&thr)
        .arg(&scale);
    // SAFETY: the argument list matches dropout_*; src and dst have the same
    // shape and dtype and `range` lies within them, so both pointers address n
    // elements.
    unsafe { b.launch(cuda::cfg(cuda::blocks_for(n, BLOCK), BLOCK, 0)) }
        .map_err(cuda::launch_err(OP))?;
    Ok(())
}
