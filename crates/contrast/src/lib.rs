//! LLM2Comp's contrastive stages (METHOD.md, stages 2 and 3): the stage-1
//! encoder embeds each text as the mean of its k memory-token states, and
//! InfoNCE on cosine similarity pulls matching texts together — two dropout
//! views of one passage (SimCSE, stage 2) or a query and its positive
//! against every other positive and hard negative of the batch (stage 3).
//!
//! [`Encoder`] embeds packed texts with gradients, [`ContrastBatch`] says
//! which rows are queries and keys, [`Encoder::step`] runs the loss with or
//! without GradCache, [`chain_stage`] merges the previous stage's adapter and
//! adds a fresh one, and [`ContrastTask`] plugs it into `llm2comp-train`.

pub mod batch;
mod chain;
pub mod data;
mod encoder;
mod error;
pub mod loss;
mod task;

pub use batch::{ContrastBatch, Pairing};
pub use chain::{ChainedStage, chain_stage};
pub use data::{ContrastData, RawTriple, Triple};
pub use encoder::{ContrastConfig, EmbedCache, Encoder};
pub use error::{ContrastError, Result};
pub use task::ContrastTask;
