//! GEMMs through cuBLAS (bf16 or f32 operands, f32 accumulation).
//!
//! Everything in the tensor core is row-major; cuBLAS is column-major. A
//! row-major X[r, c] read as column-major is Xᵀ, so row-major C = A·B is
//! column-major Cᵀ = Bᵀ·Aᵀ: [`gemm`] swaps the operands and passes each one's
//! storage as-is, flipping only the transpose flags. Callers think row-major.
//!
//! f32 GEMMs use `CUBLAS_COMPUTE_32F` (no TF32), so an f32 path is a precise
//! reference; bf16 GEMMs run on the tensor cores with f32 accumulation.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::{CudaDevice, driver_err};
use crate::{DType, Result, TensorError};

/// Row-major C[m, n] = alpha·op(A)·op(B) + beta·C with op(A) [m, k] and op(B) [k, n].
/// `a_t`: A is stored [k, m] (use its transpose); `b_t`: B is stored [n, k].
/// Pointers are device addresses; A and B share `ab`, C has `c_dtype`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// A's address.
    pub a: u64,
    /// A stored transposed ([k, m]).
    pub a_t: bool,
    /// B's address.
    pub b: u64,
    /// B stored transposed ([n, k]).
    pub b_t: bool,
    /// C's address.
    pub c: u64,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C's old contents (0 overwrites, 1 accumulates).
    pub beta: f32,
    /// dtype of A and B.
    pub ab: DType,
    /// dtype of C.
    pub c_dtype: DType,
}

fn cuda_type(d: DType) -> cudaDataType {
    match d {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
        DType::F16 => cudaDataType::CUDA_R_16F,
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

fn int(op_name: &'static str, x: usize) -> Result<i32> {
    i32::try_from(x)
        .map_err(|_| TensorError::invalid(op_name, format!("GEMM dimension {x} exceeds i32")))
}

/// Enqueues one GEMM on the device's stream (every operand packed: row stride = its width).
pub fn gemm(dev: &CudaDevice, g: &Gemm) -> Result<()> {
    gemm_lda(dev, g, if g.a_t { g.m } else { g.k })
}

/// [`gemm`] with A's row stride `lda` in elements (≥ its packed width): A is
/// then rows of a wider buffer, as the in-place gradient of the fused
/// cross-entropy's one sweep with dW (bf16 written over f32 logits) is.
pub fn gemm_lda(dev: &CudaDevice, g: &Gemm, lda: usize) -> Result<()> {
    const OP: &str = "cuda::gemm";
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let packed = if g.a_t { g.m } else { g.k };
    if lda < packed {
        return Err(TensorError::invalid(
            OP,
            format!("A's row stride {lda} is below its width {packed}"),
        ));
    }
    // Leading dimensions of the row-major storages.
    let ldb = if g.b_t { g.k } else { g.n };
    let (m, n, k) = (int(OP, g.m)?, int(OP, g.n)?, int(OP, g.k)?);
    let (lda, ldb, ldc) = (int(OP, lda.max(1))?, int(OP, ldb.max(1))?, n);
    dev.context().bind_to_thread().map_err(driver_err(OP))?;
    let blas = dev.blas()?;
    // Column-major Cᵀ[n, m] = op(B)ᵀ·op(A)ᵀ: B's storage first, then A's.
    // SAFETY: the caller guarantees each pointer addresses a live buffer of
    // the stated dtype and extent on `dev`; alpha/beta are host f32 (cuBLAS's
    // default pointer mode).
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(g.b_t),
            op(g.a_t),
            n,
            m,
            k,
            (&g.alpha) as *const f32 as *const _,
            g.b as *const _,
            cuda_type(g.ab),
            ldb,
            g.a as *const _,
            cuda_type(g.ab),
            lda,
            (&g.beta) as *const f32 as *const _,
            g.c as *mut _,
            cuda_type(g.c_dtype),
            ldc,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| TensorError::cuda(OP, format!("cublasGemmEx {m}x{n}x{k}: {e}")))
}
