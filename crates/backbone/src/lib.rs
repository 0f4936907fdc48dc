//! llm2comp's backbone layer: what a decoder-only model is and how to load it.
//!
//! The Hugging Face `config.json` of the supported architectures, validated
//! into a [`ModelConfig`] (or read from GGUF metadata), memory-mapped
//! safetensors weights ([`SafetensorsFiles`]), GGUF files ([`GgufFile`]),
//! the model layers with explicit forward and backward ([`layers`]) and
//! pooling of hidden states into sentence embeddings ([`pooling`]).

mod config;
mod dequant;
pub mod embedder;
mod error;
mod gguf;
mod gguf_config;
pub mod layers;
pub mod model;
pub mod pooling;
mod safetensors_files;

pub use config::{Architecture, AttentionBias, ModelConfig};
pub use dequant::dequantize;
pub use embedder::{EmbedOptions, Embedder};
pub use error::{BackboneError, Result};
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue, unpermute_qk_rows};
pub use layers::Pass;
pub use layers::lora::{Lora, LoraConfig, LoraGrads, LoraTarget};
pub use layers::transformer::{
    Input, Param, Trainable, Transformer, TransformerCache, TransformerGrads,
};
pub use model::{ModelFormat, ModelInfo};
pub use pooling::Pooling;
pub use safetensors_files::SafetensorsFiles;
