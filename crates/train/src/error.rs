//! The train crate's errors. Training runs for hours and fails far from the
//! code that caused it, so every variant carries the path, parameter or step
//! a user needs to act on the message without reading the source.

use std::path::PathBuf;

/// Everything training can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is out of range or inconsistent with another.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// Reading or writing a file or directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "read", "rename", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A checkpoint file is missing, truncated or does not fit the task.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The checkpoint was written by a run with different settings.
    #[error(
        "checkpoint {} was written with a different configuration; differing keys:\n  {}\n\
         (start a new run in an empty output directory to change these)",
        path.display(), diffs.join("\n  ")
    )]
    ConfigMismatch {
        /// The checkpoint's trainer.json.
        path: PathBuf,
        /// One line per differing key: `key: checkpoint X, now Y`.
        diffs: Vec<String>,
    },
    /// The output directory already holds a run and no resume was asked for.
    #[error(
        "{} already holds a training run ({found}); pass --resume {} to continue it, \
         or choose an empty output directory",
        dir.display(), dir.display()
    )]
    RunExists {
        /// The output directory.
        dir: PathBuf,
        /// What was found there.
        found: String,
    },
    /// Another process holds the output directory's run lock.
    #[error(
        "{} is in use by another training run ({holder}); wait for it to finish or stop it \
         (two runs writing one directory would corrupt it)",
        dir.display()
    )]
    RunLocked {
        /// The output directory.
        dir: PathBuf,
        /// Who holds it (`pid N`).
        holder: String,
    },
    /// The output directory holds files that are not this tool's run files.
    #[error(
        "{} is not empty and is not an llm2comp training run (it holds {found}); \
         choose an empty or new output directory",
        dir.display()
    )]
    NotARunDir {
        /// The output directory.
        dir: PathBuf,
        /// The entries that are not run files.
        found: String,
    },
    /// metrics.jsonl could not be parsed.
    #[error("metrics file {}: {msg}", path.display())]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The optimiser's state does not fit a parameter.
    #[error("optimizer: parameter `{param}`: {msg}")]
    Optimizer {
        /// The parameter's name.
        param: String,
        /// What is wrong.
        msg: String,
    },
    /// The loss or gradient norm became NaN or infinite; nothing was updated by that step.
    #[error(
        "non-finite {what} at step {step}; the parameters were not updated by this step. {}",
        match last_checkpoint {
            Some(p) => format!("Last good checkpoint: {}", p.display()),
            None => "No checkpoint has been saved yet.".to_string(),
        }
    )]
    NonFinite {
        /// 1-based number of the failed step (as metrics.jsonl and checkpoints count steps).
        step: u64,
        /// What was non-finite, with its value (`loss (NaN)`).
        what: String,
        /// The newest checkpoint of this run, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// Writing, renaming or syncing a file failed (`llm2comp_backbone::atomic`).
    #[error(transparent)]
    Fs(#[from] llm2comp_backbone::atomic::FsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] llm2comp_tensor::TensorError),
    /// The backbone (model, layers) failed.
    #[error(transparent)]
    Backbone(#[from] llm2comp_backbone::BackboneError),
    /// The task reported an error of its own.
    #[error("task: {0}")]
    Task(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// Wraps a task's own error.
    pub fn task(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Task(e.into())
    }

    /// An [`TrainError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A [`TrainError::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
