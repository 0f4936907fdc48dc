//! llm2comp's backbone layer: what a decoder-only model is and how to load it.
//!
//! Today: the Hugging Face `config.json` of the supported architectures,
//! validated into a [`ModelConfig`]. Weights (safetensors, GGUF), the
//! tokenizer and the layers follow in the same crate.

mod config;
mod error;

pub use config::{Architecture, AttentionBias, ModelConfig};
pub use error::{BackboneError, Result};
