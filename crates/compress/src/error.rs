//! The compression crate's error type: tensor and backbone errors pass
//! through with their context; data and configuration problems say what was
//! wrong and how to fix it.

use llm2comp_backbone::BackboneError;
use llm2comp_tensor::TensorError;

/// Errors of the compression pretext task.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A tensor op failed (shapes, devices, dtypes).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// Loading or running the backbone failed.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// The training data cannot be used as given.
    #[error("{source_name}: {message}")]
    Data {
        /// The file (or other source) the data came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// An option or combination of options is invalid.
    #[error("{0}")]
    Config(String),
}

/// Result with [`CompressError`].
pub type Result<T, E = CompressError> = std::result::Result<T, E>;
