//! llm2comp's backbone layer: what a decoder-only model is and how to load it.
//!
//! The Hugging Face `config.json` of the supported architectures, validated
//! into a [`ModelConfig`] (or read from GGUF metadata), memory-mapped
//! safetensors weights ([`SafetensorsFiles`]), GGUF files ([`GgufFile`]),
//! the tokenizer ([`Tokenizer`], from a `tokenizer.json` or a GGUF), the model
//! layers with explicit forward and backward ([`layers`]), pooling of hidden
//! states into sentence embeddings ([`pooling`]) and batched embedding
//! ([`Embedder`]), LLM2Comp adapters on disk ([`adapter`]) and merged
//! models written back as Hugging Face directories ([`export`]).

pub mod adapter;
mod adapter_swap;
pub mod atomic;
mod config;
mod config_sizes;
mod dequant;
pub mod embedder;
mod error;
pub mod export;
mod export_replace;
pub mod finite;
mod gguf;
mod gguf_config;
mod gguf_tokenizer;
pub mod layers;
pub mod model;
pub mod pooling;
mod safetensors_files;
mod tokenizer;

pub use adapter::{AdapterMeta, LoraMeta, TrainEmbeddings, load_adapter, save_adapter};
pub use config::{Architecture, AttentionBias, ModelConfig};
pub use dequant::dequantize;
pub use embedder::{EmbedOptions, Embedder};
pub use error::{BackboneError, Result};
pub use export::write_hf_dir;
pub use gguf::{GgufArray, GgufFile, GgufTensorInfo, GgufValue, StrArray, unpermute_qk_rows};
pub use layers::Pass;
pub use layers::lora::{Lora, LoraConfig, LoraGrads, LoraTarget};
pub use layers::transformer::{
    Input, Param, Trainable, Transformer, TransformerCache, TransformerGrads,
};
pub use model::{ModelFormat, ModelInfo, ModelSource};
pub use pooling::Pooling;
pub use safetensors_files::SafetensorsFiles;
pub use tokenizer::Tokenizer;
