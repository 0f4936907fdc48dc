//! One error type for the crate: every variant names the file or the metric
//! and what was expected, because evaluation inputs are large files made by
//! other tools and "invalid input" alone sends the user bisecting them.

use std::path::PathBuf;

/// Errors of the evaluation crate.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a data file is malformed.
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Inputs of a metric or a task do not fit together.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// The metric or task.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// An embedding row holds NaN or an infinity: every score computed from
    /// it would be meaningless, so none is.
    #[error("{what}: row {row} (0-based) holds {value} at column {column}")]
    NonFinite {
        /// The embeddings (task, file).
        what: String,
        /// The row.
        row: usize,
        /// The first non-finite column.
        column: usize,
        /// The value (NaN, inf or -inf).
        value: f32,
    },
    /// A data set leaves nothing to score (no usable query, an empty corpus).
    #[error("{path}: {msg}")]
    Empty {
        /// The file or directory.
        path: PathBuf,
        /// What is missing.
        msg: String,
    },
    /// An unknown task name.
    #[error("unknown task {0:?}; known: {1}")]
    UnknownTask(String, String),
    /// The encoder failed.
    #[error("encoder: {0}")]
    Encoder(Box<dyn std::error::Error + Send + Sync>),
}

/// Result of the evaluation crate.
pub type Result<T> = std::result::Result<T, EvalError>;

impl EvalError {
    /// A [`EvalError::Shape`] error.
    pub fn shape(what: &str, expected: impl ToString, found: impl ToString) -> Self {
        Self::Shape {
            what: what.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}
