//! A Hugging Face `config.json` for `LlamaForCausalLM`, `MistralForCausalLM`
//! or `Qwen2ForCausalLM`, validated into the numbers the layers need.
//!
//! The three share one block (pre-norm RMSNorm, RoPE attention with grouped
//! KV heads, SiLU-gated MLP) and differ in details that change the model's
//! output if ignored: Qwen2's q/k/v biases, Mistral's sliding window, Llama
//! 3's RoPE frequency scaling. Each such option is either carried into
//! [`ModelConfig`] or refused with [`BackboneError::Unsupported`]; a field we
//! do not model is never skipped silently.

use std::path::Path;

use llm2comp_tensor::ops::rope::{RopeConfig, RopeScaling};
use serde::Deserialize;
use serde_json::Value;

use crate::{BackboneError, Result};

/// The model families llm2comp runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM2, TinyLlama, ...).
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM`.
    Qwen2,
}

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttentionBias {
    /// q_proj, k_proj and v_proj (Qwen2; Llama with `attention_bias`).
    pub qkv: bool,
    /// o_proj (Llama with `attention_bias`).
    pub o: bool,
}

/// The validated shape and options of a decoder-only backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model family.
    pub architecture: Architecture,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width (gate and up projections).
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (divides `num_heads`).
    pub num_kv_heads: usize,
    /// Per-head width (even, for rotate-half RoPE).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding and the LM head).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary embedding: head dim, base and optional Llama-3 scaling.
    pub rope: RopeConfig,
    /// Longest position the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections.
    pub attention_bias: AttentionBias,
    /// Mistral's sliding attention window, if any: sequences longer than it
    /// would need windowed attention, which is not implemented.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (configs give one id or a list).
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's `torch_dtype`, if stated (informational).
    pub torch_dtype: Option<String>,
}

/// The fields we read, as the file spells them. Unknown fields are ignored
/// by serde; those that would change the model are checked in `validate`.
#[derive(Debug, Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers ≥ 5 writes theta and scaling here instead.
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    /// transformers ≥ 5's name for `torch_dtype`.
    dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BackboneError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses `text`; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| invalid(origin, e.to_string()))?;
        validate(raw, origin)
    }

    /// Errors if a sequence of `len` tokens needs something this model lacks
    /// (positions past the trained range are allowed: RoPE extrapolates).
    pub fn check_sequence_len(&self, len: usize, origin: &Path) -> Result<()> {
        match self.sliding_window {
            Some(w) if len > w => Err(BackboneError::Unsupported {
                path: origin.to_path_buf(),
                what: format!(
                    "a {len}-token sequence is longer than the sliding window of {w} tokens \
                     (sliding-window attention is not implemented; use --max-length {w} or less)"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Parameters of the backbone (embedding, blocks, final norm, untied
    /// head). Saturates at `usize::MAX` for a hand-built config whose sizes
    /// overflow; the file readers refuse those ([`ModelConfig::check_sizes`]).
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }
}

impl ModelConfig {
    /// This config as a Hugging Face `config.json` object that
    /// [`ModelConfig::from_json`] reads back to an equal config (what a merged
    /// checkpoint ships). RoPE is written both ways, `rope_theta` /
    /// `rope_scaling` for transformers 4 and `rope_parameters` for 5, with
    /// the same values, so either version loads the same model. Errors on a
    /// combination the format cannot express (a Llama with q/k/v biases but
    /// no o_proj bias, biases on Mistral).
    pub fn to_hf_json(&self) -> Result<Value> {
        use serde_json::json;
        let origin = Path::new("<config.json being written>");
        let (class, model_type) = match self.architecture {
            Architecture::Llama => ("LlamaForCausalLM", "llama"),
            Architecture::Mistral => ("MistralForCausalLM", "mistral"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let b = self.attention_bias;
        let bias_ok = match self.architecture {
            Architecture::Llama => b.qkv == b.o,
            Architecture::Mistral => !b.qkv && !b.o,
            Architecture::Qwen2 => b.qkv && !b.o,
        };
        if !bias_ok {
            return Err(unsupported(
                origin,
                format!(
                    "{class} with attention biases q/k/v {} and o {} cannot be written as a \
                     Hugging Face config",
                    b.qkv, b.o
                ),
            ));
        }
        let scaling = self.rope.scaling.as_ref().map(|s| {
            json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        let mut params = scaling
            .clone()
            .unwrap_or_else(|| json!({"rope_type": "default"}));
        params["rope_theta"] = json!(self.rope.theta);
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": scaling,
            "rope_parameters": params,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
        });
        match self.architecture {
            Architecture::Llama => v["attention_bias"] = json!(b.o),
            Architecture::Mistral => v["sliding_window"] = json!(self.sliding_window),
            Architecture::Qwen2 => {
                v["use_sliding_window"] = json!(false);
                v["sliding_window"] = Value::Null;
            }
        }
        if let Some(d) = &self.torch_dtype {
            // `torch_dtype` for transformers 4, `dtype` for 5.
            v["torch_dtype"] = json!(d);
            v["dtype"] = json!(d);
        }
        Ok(v)
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> BackboneError {
    BackboneError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn unsupported(path: &Path, what: impl Into<String>) -> BackboneError {
    BackboneError::Unsupported {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn required(v: Option<usize>, name: &str, path: &Path) -> Result<usize> {
    match v {
        Some(0) => Err(invalid(
            path,
            format!("`{name}` must be at least 1, found 0"),
        )),
        Some(n) => Ok(n),
        None => Err(invalid(path, format!("missing `{name}`"))),
    }
}

fn architecture(raw: &Raw, path: &Path) -> Result<Architecture> {
    let named = raw.architectures.as_deref().unwrap_or_default();
    let by_class = |c: &str| match c {
        "LlamaForCausalLM" => Some(Architecture::Llama),
        "MistralForCausalLM" => Some(Architecture::Mistral),
        "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
        _ => None,
    };
    if let Some(first) = named.first() {
        return by_class(first).ok_or_else(|| {
            unsupported(
                path,
                format!(
                    "architecture `{first}` (supported: LlamaForCausalLM, MistralForCausalLM, \
                     Qwen2ForCausalLM)"
                ),
            )
        });
    }
    match raw.model_type.as_deref() {
        Some("llama") => Ok(Architecture::Llama),
        Some("mistral") => Ok(Architecture::Mistral),
        Some("qwen2") => Ok(Architecture::Qwen2),
        Some(other) => Err(unsupported(path, format!("model_type `{other}`"))),
        None => Err(invalid(
            path,
            "neither `architectures` nor `model_type` is given",
        )),
    }
}

/// The scaling described by `v`, a `rope_scaling` (or `rope_parameters`,
/// named by `field`) object; `None` for plain RoPE.
fn rope_scaling(
    v: &Value,
    field: &str,
    max_pos: usize,
    path: &Path,
) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(path, format!("`{field}` has no `rope_type`")))?;
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        other => {
            return Err(unsupported(
                path,
                format!("{field} type `{other}` (only `llama3` is implemented)"),
            ));
        }
    }
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| invalid(path, format!("{field} `{key}` missing or not > 0")))
    };
    let s = RopeScaling {
        factor: num("factor")?,
        low_freq_factor: num("low_freq_factor")?,
        high_freq_factor: num("high_freq_factor")?,
        original_max_position_embeddings: v
            .get("original_max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(max_pos),
    };
    if s.high_freq_factor <= s.low_freq_factor {
        return Err(invalid(
            path,
            format!(
                "{field} high_freq_factor {} must exceed low_freq_factor {}",
                s.high_freq_factor, s.low_freq_factor
            ),
        ));
    }
    Ok(Some(s))
}

/// RoPE base and scaling: from `rope_parameters` (transformers ≥ 5, which
/// writes no top-level `rope_theta`) or the older `rope_theta` and
/// `rope_scaling`. Ignoring the new field would silently run base 10000
/// without scaling. Where both spellings are present they must agree.
fn rope(raw: &Raw, max_pos: usize, path: &Path) -> Result<(f64, Option<RopeScaling>)> {
    let legacy = match &raw.rope_scaling {
        Some(v) => rope_scaling(v, "rope_scaling", max_pos, path)?,
        None => None,
    };
    let (theta, scaling) = match raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
        None => (raw.rope_theta.unwrap_or(10_000.0), legacy),
        Some(p) => {
            if !p.is_object() || (p.get("rope_type").is_none() && p.get("type").is_none()) {
                return Err(unsupported(
                    path,
                    "`rope_parameters` without a `rope_type` (per-layer-type RoPE)",
                ));
            }
            if let Some(f) = p.get("partial_rotary_factor").and_then(Value::as_f64)
                && f != 1.0
            {
                return Err(unsupported(
                    path,
                    format!("rope_parameters partial_rotary_factor {f} (only 1.0)"),
                ));
            }
            let theta = match (p.get("rope_theta"), raw.rope_theta) {
                (Some(t), legacy_theta) => {
                    let t = t.as_f64().ok_or_else(|| {
                        invalid(path, "rope_parameters `rope_theta` is not a number")
                    })?;
                    if legacy_theta.is_some_and(|l| l != t) {
                        return Err(invalid(
                            path,
                            format!(
                                "rope_theta {} disagrees with rope_parameters rope_theta {t}",
                                legacy_theta.unwrap_or_default()
                            ),
                        ));
                    }
                    t
                }
                (None, legacy_theta) => legacy_theta.unwrap_or(10_000.0),
            };
            let scaling = rope_scaling(p, "rope_parameters", max_pos, path)?;
            if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) && legacy != scaling {
                return Err(invalid(path, "rope_scaling disagrees with rope_parameters"));
            }
            (theta, scaling)
        }
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(invalid(
            path,
            format!("rope_theta must be > 0, found {theta}"),
        ));
    }
    Ok((theta, scaling))
}

/// A token id or a list of them (`eos_token_id` is either).
fn token_ids(v: &Option<Value>, name: &str, path: &Path) -> Result<Vec<u32>> {
    let bad = || {
        invalid(
            path,
            format!("`{name}` must be a token id or a list of them"),
        )
    };
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(xs)) => xs.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

fn validate(raw: Raw, path: &Path) -> Result<ModelConfig> {
    let architecture = architecture(&raw, path)?;
    let hidden_size = required(raw.hidden_size, "hidden_size", path)?;
    let num_heads = required(raw.num_attention_heads, "num_attention_heads", path)?;
    let num_kv_heads = required(
        raw.num_key_value_heads.or(raw.num_attention_heads),
        "num_key_value_heads",
        path,
    )?;
    if !num_heads.is_multiple_of(num_kv_heads) {
        return Err(invalid(
            path,
            format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            ),
        ));
    }
    let head_dim = match raw.head_dim {
        Some(d) => d,
        None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
        None => {
            return Err(invalid(
                path,
                format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads} and no `head_dim` is given"
                ),
            ));
        }
    };
    if head_dim == 0 || head_dim % 2 == 1 {
        return Err(invalid(
            path,
            format!("head_dim must be even and at least 2 for rotary embeddings, found {head_dim}"),
        ));
    }
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(unsupported(
            path,
            format!("hidden_act `{act}` (only `silu`)"),
        ));
    }
    if raw.mlp_bias == Some(true) {
        return Err(unsupported(path, "mlp_bias = true"));
    }
    let attention_bias = match architecture {
        Architecture::Qwen2 => AttentionBias {
            qkv: true,
            o: false,
        },
        Architecture::Llama if raw.attention_bias == Some(true) => {
            AttentionBias { qkv: true, o: true }
        }
        _ => AttentionBias::default(),
    };
    let sliding_window = match architecture {
        Architecture::Mistral => raw.sliding_window,
        Architecture::Qwen2 if raw.use_sliding_window == Some(true) => {
            return Err(unsupported(
                path,
                "use_sliding_window = true (Qwen2's per-layer sliding window)",
            ));
        }
        _ => None,
    };
    let max_position_embeddings =
        required(raw.max_position_embeddings, "max_position_embeddings", path)?;
    let (theta, scaling) = rope(&raw, max_position_embeddings, path)?;
    let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
    if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
        return Err(invalid(
            path,
            format!("rms_norm_eps must be > 0, found {rms_norm_eps}"),
        ));
    }
    let bos = token_ids(&raw.bos_token_id, "bos_token_id", path)?;
    if bos.len() > 1 {
        return Err(invalid(path, "`bos_token_id` must be a single id"));
    }
    let vocab_size = required(raw.vocab_size, "vocab_size", path)?;
    let eos_token_ids = token_ids(&raw.eos_token_id, "eos_token_id", path)?;
    for (name, id) in bos
        .iter()
        .map(|b| ("bos_token_id", b))
        .chain(eos_token_ids.iter().map(|e| ("eos_token_id", e)))
    {
        if *id as usize >= vocab_size {
            return Err(invalid(
                path,
                format!("{name} {id} is outside the vocabulary of {vocab_size}"),
            ));
        }
    }
    let config = ModelConfig {
        architecture,
        hidden_size,
        intermediate_size: required(raw.intermediate_size, "intermediate_size", path)?,
        num_layers: required(raw.num_hidden_layers, "num_hidden_layers", path)?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps,
        rope: RopeConfig {
            head_dim,
            theta,
            scaling,
        },
        max_position_embeddings,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        attention_bias,
        sliding_window,
        bos_token_id: bos.first().copied(),
        eos_token_ids,
        torch_dtype: raw.torch_dtype.or(raw.dtype),
    };
    config.check_sizes(path)?;
    Ok(config)
}
