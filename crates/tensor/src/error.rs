//! Typed errors of the tensor core. Every variant names the operation and the
//! expected versus found value, so a caller's message can say what went wrong
//! without a debugger.

use crate::{DType, Device};

/// Everything a tensor operation can reject.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// A shape did not match what the operation needs.
    #[error("{op}: shape mismatch for {what}: expected {expected}, found {found:?}")]
    Shape {
        op: &'static str,
        what: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    /// A tensor had a dtype the operation does not accept here.
    #[error("{op}: {what} must be {expected:?}, found {found:?}")]
    DType {
        op: &'static str,
        what: &'static str,
        expected: DType,
        found: DType,
    },
    /// Two tensors live on different devices, or the op has no path for this device.
    #[error("{op}: device {found} is not supported here (expected {expected})")]
    Device {
        op: &'static str,
        expected: Device,
        found: Device,
    },
    /// An argument is out of its valid range (an index, a probability, a length table).
    #[error("{op}: invalid argument: {msg}")]
    Invalid { op: &'static str, msg: String },
    /// A byte buffer could not be read as the requested dtype and shape.
    #[error("{op}: {msg}")]
    Bytes { op: &'static str, msg: String },
    /// The CUDA driver, cuBLAS or a kernel reported an error.
    #[error("{op}: CUDA: {msg}")]
    Cuda { op: &'static str, msg: String },
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// Convenience constructor for [`TensorError::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Self::Invalid {
            op,
            msg: msg.into(),
        }
    }

    /// Convenience constructor for [`TensorError::Cuda`].
    pub fn cuda(op: &'static str, msg: impl Into<String>) -> Self {
        Self::Cuda {
            op,
            msg: msg.into(),
        }
    }

    /// Convenience constructor for [`TensorError::Shape`].
    pub fn shape(
        op: &'static str,
        what: &'static str,
        expected: impl Into<String>,
        found: &[usize],
    ) -> Self {
        Self::Shape {
            op,
            what,
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
