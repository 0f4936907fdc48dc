//! Evaluation of text embeddings: the metrics of MTEB-style tasks and the
//! tasks themselves, read from local files.
//!
//! The crate never runs a model: a task lists its texts, something else
//! embeds them (an [`Encoder`], or a `.npy` file written by another program),
//! and the task scores the rows. So an embedding from any model is judged by
//! exactly the same code.

pub mod encoder;
pub mod error;
pub mod metrics;
pub mod tasks;

pub use encoder::{CachedEncoder, Encoder};
pub use error::{EvalError, Result};
pub use tasks::{Score, Task, TaskKind, TaskSpec};
