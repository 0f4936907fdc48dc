//! llm2comp's tensor core: [`Tensor`], [`DType`], [`Device`] and the op
//! families a LoRA-trained transformer encoder/decoder needs, each with an
//! explicit `forward` and `backward` (no autograd tape).
//!
//! Layout: `ops/` is the device-independent API (validation + dispatch),
//! `cpu/` the reference kernels in plain Rust, `cuda/` the launchers of the
//! CUDA kernels in `kernels/`.

pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod fast_exp;
pub mod ops;
pub mod pool;
mod real;
pub mod shared;
mod tensor;
pub mod testing;

pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Result, TensorError};
pub use real::Real;
pub use tensor::{CpuStorage, CudaStorage, Storage, Tensor};
