//! Errors of the backbone crate. Each names the file it came from, so a user
//! with several checkpoints on disk knows which one is wrong.

use std::path::PathBuf;

/// Everything loading a backbone can reject.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Writing, renaming or syncing a file or directory failed.
    #[error(transparent)]
    Fs(#[from] crate::atomic::FsError),
    /// The file is readable but its content is malformed or inconsistent.
    #[error("{}: {msg}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the expected and found values.
        msg: String,
    },
    /// The file describes a model or option llm2comp does not implement;
    /// refusing beats silently computing a different model.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The architecture or option, named as the file names it.
        what: String,
    },
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, BackboneError>;
