//! Training infrastructure shared by every llm2comp trainer: learning-rate
//! schedules, AdamW over named parameters, gradient accumulation and clipping,
//! atomic checkpoints with bit-exact resume, metrics.jsonl, a loss plot and a
//! progress display. A trainer implements [`Task`] (forward + backward of one
//! micro-batch) and calls [`train`].

pub mod checkpoint;
mod data_position;
mod error;
pub mod metrics;
mod optimizer;
pub mod progress;
mod resume_check;
pub mod run_dir;
mod schedule;
pub mod svg;
pub mod testing;
mod trainer;

pub use data_position::DataPosition;
pub use error::{Result, TrainError};
pub use llm2comp_backbone::Param;
pub use llm2comp_tensor::ops::adamw::AdamWConfig;
pub use optimizer::Optimizer;
pub use schedule::{Decay, Schedule};
pub use trainer::{FREE_CONFIG_KEYS, LOSS_SVG, MicroStats, Task, TrainConfig, TrainSummary, train};
