//! LLM2Comp's compression pretext task (METHOD.md, stage 1): a bidirectional
//! LoRA encoder squeezes a text into k memory tokens from which the frozen
//! causal LLM must predict — the text itself (`rc`), its continuation
//! (`nll`), or its own next-token distributions over the continuation
//! (`kl`). Gradients flow through the frozen decoder into the encoder.
//!
//! [`batch`] packs passages into the encoder / decoder / teacher batches,
//! [`Compressor`] runs a step on one copy of the base weights, [`data`]
//! tokenises and filters the corpus and draws each step's passages from the
//! seed, and [`CompressionTask`] plugs all of it into `llm2comp-train`.
//! [`mntp`] and [`Mntp`] are LLM2Vec's masked next-token prediction, the
//! baseline pretext the compression objectives are measured against.

pub mod batch;
mod compressor;
pub mod data;
pub mod encoder_input;
mod error;
pub mod memory;
pub mod mntp;
mod mntp_step;
mod mntp_task;
mod objective;
pub mod seeds;
mod task;

pub use batch::{PackedBatch, Sample, pack};
pub use compressor::{CompressConfig, Compressor, StepStats};
pub use data::{Corpus, CorpusStats, DataOptions};
pub use error::{CompressError, Result};
pub use memory::TrainEmbeddings;
pub use mntp_step::Mntp;
pub use mntp_task::MntpTask;
pub use objective::{Objective, SPLIT_MARGIN};
pub use task::{CompressionTask, Exporter};
