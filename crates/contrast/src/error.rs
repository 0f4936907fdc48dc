//! The contrastive crate's error type: tensor, backbone and compression
//! errors pass through with their context; data and configuration problems
//! say what was wrong.

use llm2comp_backbone::BackboneError;
use llm2comp_compress::CompressError;
use llm2comp_tensor::TensorError;

/// Errors of the contrastive stages.
#[derive(Debug, thiserror::Error)]
pub enum ContrastError {
    /// A tensor op failed (shapes, devices, dtypes).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// Loading or running the backbone failed.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// Shared compression code failed.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// The training data cannot be used as given.
    #[error("{source_name}: {message}")]
    Data {
        /// The file (or other source) the data came from, with the line.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// An option or combination of options is invalid.
    #[error("{0}")]
    Config(String),
}

/// Result with [`ContrastError`].
pub type Result<T, E = ContrastError> = std::result::Result<T, E>;
