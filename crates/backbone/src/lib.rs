//! llm2comp's backbone layer: what a decoder-only model is and how to load it.
//!
//! Today: the Hugging Face `config.json` of the supported architectures,
//! validated into a [`ModelConfig`], and memory-mapped safetensors weights
//! ([`SafetensorsFiles`]). GGUF, the tokenizer and the layers follow.

mod config;
mod dequant;
mod error;
mod gguf;
mod safetensors_files;

pub use config::{Architecture, AttentionBias, ModelConfig};
pub use dequant::dequantize;
pub use error::{BackboneError, Result};
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue, unpermute_qk_rows};
pub use safetensors_files::SafetensorsFiles;
