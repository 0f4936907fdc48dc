//! Element types. The CPU computes in f32 (and f64 inside gradient checks);
//! bf16 and f16 are storage formats that model files and the CUDA path use.

use half::{bf16, f16};

/// The element type of a tensor's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// bfloat16: f32's exponent range with an 8-bit mantissa.
    BF16,
    /// IEEE 754 binary16.
    F16,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The lower-case name used in model files and messages (`f32`, `bf16`, `f16`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust element type that can back a tensor.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The matching runtime dtype.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
