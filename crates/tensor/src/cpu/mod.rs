//! CPU kernels: plain Rust over slices, generic over [`crate::Real`] so the
//! gradient checks run the shipping code in f64. Parallel work goes to the
//! rayon pool (`crate::pool`); GEMMs to the `gemm` crate. Each file holds one
//! op family's forward, backward and their tests against a naive reference.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod grad_clip;
pub mod infonce;
pub mod linear_kl;
pub mod linear_xent;
pub mod matmul;
pub mod pooling;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
