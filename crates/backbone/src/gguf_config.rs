//! A [`ModelConfig`] from a GGUF file's metadata (`{arch}.*` keys, as
//! llama.cpp's converter writes them), so a single `.gguf` is a whole model.
//!
//! GGUF has no `tie_word_embeddings` flag: a missing `output.weight` tensor is
//! what ties the head. Llama 3.1-style RoPE scaling arrives as a
//! `rope_freqs.weight` tensor of per-frequency factors rather than as the
//! config's four numbers; it is refused by name rather than ignored.

use llm2comp_tensor::ops::rope::RopeConfig;

use crate::{Architecture, AttentionBias, BackboneError, GgufFile, GgufValue, ModelConfig, Result};

impl ModelConfig {
    /// Reads the model shape from `gguf`'s metadata (architectures `llama` and `qwen2`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let invalid = |msg: String| BackboneError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let unsupported = |what: String| BackboneError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let arch_name = match gguf.get("general.architecture") {
            Some(GgufValue::Str(s)) => s.clone(),
            _ => return Err(invalid("missing `general.architecture`".into())),
        };
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(unsupported(format!(
                    "GGUF architecture `{other}` (supported: llama, qwen2)"
                )));
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let uint = |k: &str| -> Result<Option<usize>> {
            match gguf.get(&key(k)) {
                None => Ok(None),
                Some(GgufValue::U64(v)) => Ok(Some(*v as usize)),
                Some(GgufValue::I64(v)) if *v >= 0 => Ok(Some(*v as usize)),
                Some(other) => Err(invalid(format!(
                    "`{}` must be a non-negative integer, found {other:?}",
                    key(k)
                ))),
            }
        };
        let required = |k: &str| -> Result<usize> {
            match uint(k)? {
                Some(0) => Err(invalid(format!("`{}` must be at least 1, found 0", key(k)))),
                Some(v) => Ok(v),
                None => Err(invalid(format!("missing `{}`", key(k)))),
            }
        };
        let float = |k: &str| -> Result<Option<f64>> {
            match gguf.get(&key(k)) {
                None => Ok(None),
                Some(GgufValue::F64(v)) => Ok(Some(*v)),
                Some(other) => Err(invalid(format!(
                    "`{}` must be a float, found {other:?}",
                    key(k)
                ))),
            }
        };
        let hidden_size = required("embedding_length")?;
        let num_heads = required("attention.head_count")?;
        let num_kv_heads = uint("attention.head_count_kv")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}"
            )));
        }
        let head_dim = match uint("attention.key_length")?.or(uint("rope.dimension_count")?) {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(invalid(format!(
                    "embedding_length {hidden_size} is not a multiple of head_count {num_heads}"
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 == 1 {
            return Err(invalid(format!("head dim must be even, found {head_dim}")));
        }
        if let Some(rd) = uint("rope.dimension_count")?
            && rd != head_dim
        {
            return Err(unsupported(format!(
                "partial rotary embeddings (rope.dimension_count {rd} of head dim {head_dim})"
            )));
        }
        if let Some(GgufValue::Str(kind)) = gguf.get(&key("rope.scaling.type"))
            && kind != "none"
        {
            return Err(unsupported(format!("rope scaling type `{kind}`")));
        }
        if gguf.tensor_info("rope_freqs.weight").is_some() {
            return Err(unsupported(
                "Llama-3-style RoPE frequency factors (`rope_freqs.weight`)".into(),
            ));
        }
        let theta = float("rope.freq_base")?.unwrap_or(10_000.0);
        let rms_norm_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
        if !(theta.is_finite() && theta > 0.0 && rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(invalid(format!(
                "rope.freq_base {theta} and layer_norm_rms_epsilon {rms_norm_eps} must be > 0"
            )));
        }
        let vocab_size = match uint("vocab_size")? {
            Some(v) => v,
            None => match gguf.tensor_info("token_embd.weight") {
                Some(t) => t.shape()[0],
                None => return Err(invalid("tensor `token_embd.weight` is missing".into())),
            },
        };
        let token = |k: &str| match gguf.get(k) {
            Some(GgufValue::U64(v)) => u32::try_from(*v)
                .ok()
                .filter(|&v| (v as usize) < vocab_size),
            Some(GgufValue::I64(v)) => u32::try_from(*v)
                .ok()
                .filter(|&v| (v as usize) < vocab_size),
            _ => None,
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: required("feed_forward_length")?,
            num_layers: required("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope: RopeConfig {
                head_dim,
                theta,
                scaling: None,
            },
            max_position_embeddings: required("context_length")?,
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            attention_bias: AttentionBias {
                qkv: architecture == Architecture::Qwen2,
                o: false,
            },
            sliding_window: None,
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
            torch_dtype: None,
        };
        config.check_sizes(path)?;
        Ok(config)
    }
}
