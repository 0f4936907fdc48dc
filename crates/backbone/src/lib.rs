//! llm2comp's backbone layer: what a decoder-only model is and how to load it.
//!
//! Today: the Hugging Face `config.json` of the supported architectures,
//! validated into a [`ModelConfig`], and memory-mapped safetensors weights
//! ([`SafetensorsFiles`]), GGUF files ([`GgufFile`]) and the tokenizer
//! ([`Tokenizer`], from a `tokenizer.json` or a GGUF). The layers follow.

mod config;
mod dequant;
mod error;
mod gguf;
mod gguf_tokenizer;
mod safetensors_files;
mod tokenizer;

pub use config::{Architecture, AttentionBias, ModelConfig};
pub use dequant::dequantize;
pub use error::{BackboneError, Result};
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue, unpermute_qk_rows};
pub use safetensors_files::SafetensorsFiles;
pub use tokenizer::Tokenizer;
