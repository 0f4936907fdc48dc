//! Building a [`Transformer`] from a checkpoint: Hugging Face safetensors,
//! a GGUF file, or seeded random weights for tests.
//!
//! All three walk one list of tensors (named in Hugging Face terms, with
//! each one's GGUF name beside it) and ask a source for each with its
//! expected shape, so presence and shape are checked the same way for every
//! format and errors name the tensor and the file. Weights are widened to
//! f32 (the CPU compute dtype). GGUF's Q and K rows are un-permuted back to
//! the rotate-half layout (llama arch only: llama.cpp's converter permutes
//! them for its interleaved RoPE; Qwen2 is stored unpermuted).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llm2comp_tensor::{DType, Tensor};

use super::attention::Attention;
use super::block::Block;
use super::linear::Linear;
use super::mlp::Mlp;
use super::rmsnorm::RmsNorm;
use super::transformer::Transformer;
use crate::finite::check_finite;
use crate::{Architecture, BackboneError, GgufFile, ModelConfig, Result, SafetensorsFiles};

/// One tensor the model needs.
#[derive(Debug, Clone)]
pub struct WeightSpec {
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub hf: String,
    /// GGUF name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Heads of a Q or K projection (GGUF rows to un-permute), else `None`.
    pub qk_heads: Option<usize>,
}

fn spec(hf: String, gguf: String, shape: Vec<usize>, qk_heads: Option<usize>) -> WeightSpec {
    WeightSpec {
        hf,
        gguf,
        shape,
        qk_heads,
    }
}

/// The tensors of layer `l`, in the order [`assemble`] consumes them.
fn layer_specs(c: &ModelConfig, l: usize) -> Vec<WeightSpec> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * d, c.num_kv_heads * d);
    let hf = |s: &str| format!("model.layers.{l}.{s}");
    let gg = |s: &str| format!("blk.{l}.{s}");
    let mut v = vec![
        spec(
            hf("input_layernorm.weight"),
            gg("attn_norm.weight"),
            vec![h],
            None,
        ),
        spec(
            hf("self_attn.q_proj.weight"),
            gg("attn_q.weight"),
            vec![q, h],
            Some(c.num_heads),
        ),
        spec(
            hf("self_attn.k_proj.weight"),
            gg("attn_k.weight"),
            vec![kv, h],
            Some(c.num_kv_heads),
        ),
        spec(
            hf("self_attn.v_proj.weight"),
            gg("attn_v.weight"),
            vec![kv, h],
            None,
        ),
        spec(
            hf("self_attn.o_proj.weight"),
            gg("attn_output.weight"),
            vec![h, q],
            None,
        ),
        spec(
            hf("post_attention_layernorm.weight"),
            gg("ffn_norm.weight"),
            vec![h],
            None,
        ),
        spec(
            hf("mlp.gate_proj.weight"),
            gg("ffn_gate.weight"),
            vec![i, h],
            None,
        ),
        spec(
            hf("mlp.up_proj.weight"),
            gg("ffn_up.weight"),
            vec![i, h],
            None,
        ),
        spec(
            hf("mlp.down_proj.weight"),
            gg("ffn_down.weight"),
            vec![h, i],
            None,
        ),
    ];
    if c.attention_bias.qkv {
        v.push(spec(
            hf("self_attn.q_proj.bias"),
            gg("attn_q.bias"),
            vec![q],
            Some(c.num_heads),
        ));
        v.push(spec(
            hf("self_attn.k_proj.bias"),
            gg("attn_k.bias"),
            vec![kv],
            Some(c.num_kv_heads),
        ));
        v.push(spec(
            hf("self_attn.v_proj.bias"),
            gg("attn_v.bias"),
            vec![kv],
            None,
        ));
    }
    if c.attention_bias.o {
        v.push(spec(
            hf("self_attn.o_proj.bias"),
            gg("attn_output.bias"),
            vec![h],
            None,
        ));
    }
    v
}

/// Every tensor a model of `config` reads, with its shape (the LM head only when untied).
pub fn weight_specs(config: &ModelConfig) -> Vec<WeightSpec> {
    let (v, h) = (config.vocab_size, config.hidden_size);
    let mut out = vec![spec(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        vec![v, h],
        None,
    )];
    for l in 0..config.num_layers {
        out.extend(layer_specs(config, l));
    }
    out.push(spec(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        vec![h],
        None,
    ));
    if !config.tie_word_embeddings {
        out.push(spec(
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![v, h],
            None,
        ));
    }
    out
}

/// Builds the model, asking `get` for each tensor of [`weight_specs`]; `origin` names the source in errors.
fn assemble(
    config: &ModelConfig,
    origin: &Path,
    get: &mut dyn FnMut(&WeightSpec) -> Result<Tensor>,
) -> Result<Transformer> {
    let wrap = |e: llm2comp_tensor::TensorError| BackboneError::Invalid {
        path: origin.to_path_buf(),
        msg: e.to_string(),
    };
    let mut load = |s: &WeightSpec| -> Result<Arc<Tensor>> { Ok(Arc::new(get(s)?)) };
    let specs = weight_specs(config);
    let mut it = specs.iter();
    let mut next = || {
        it.next()
            .expect("weight_specs lists every tensor assemble reads")
    };
    let eps = config.rms_norm_eps as f32;
    let embedding = load(next())?;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        let norm1 = load(next())?;
        let (wq, wk, wv, wo) = (load(next())?, load(next())?, load(next())?, load(next())?);
        let norm2 = load(next())?;
        let (wg, wu, wd) = (load(next())?, load(next())?, load(next())?);
        let (mut bq, mut bk, mut bv, mut bo) = (None, None, None, None);
        if config.attention_bias.qkv {
            bq = Some(load(next())?);
            bk = Some(load(next())?);
            bv = Some(load(next())?);
        }
        if config.attention_bias.o {
            bo = Some(load(next())?);
        }
        let lin = |w, b| Linear::shared(w, b).map_err(wrap);
        let attn = Attention::new(
            lin(wq, bq)?,
            lin(wk, bk)?,
            lin(wv, bv)?,
            lin(wo, bo)?,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        .map_err(wrap)?;
        let mlp = Mlp {
            gate: lin(wg, None)?,
            up: lin(wu, None)?,
            down: lin(wd, None)?,
        };
        blocks.push(Block {
            attn_norm: RmsNorm::new(norm1, eps).map_err(wrap)?,
            attn,
            mlp_norm: RmsNorm::new(norm2, eps).map_err(wrap)?,
            mlp,
        });
    }
    let norm = RmsNorm::new(load(next())?, eps).map_err(wrap)?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(load(next())?)
    };
    Transformer::from_parts(config.clone(), embedding, blocks, norm, lm_head).map_err(wrap)
}

/// 64-bit FNV-1a of a name, to seed each random tensor by what it is.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Transformer {
    /// Loads the weights `config` names from safetensors files (widened to f32).
    pub fn from_safetensors(config: &ModelConfig, files: &SafetensorsFiles) -> Result<Self> {
        let origin = files
            .file_of("model.embed_tokens.weight")
            .or_else(|| files.paths().first().copied())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let stored = files
            .names()
            .iter()
            .filter_map(|n| files.dtype_and_shape(n))
            .fold(0usize, |a, (_, shape)| {
                a.saturating_add(shape.iter().fold(1usize, |p, &d| p.saturating_mul(d)))
            });
        config.check_holds(files.names().len(), stored, &origin)?;
        assemble(config, &origin, &mut |s| {
            // One copy out of the mmap (a Tensor owns its Vec); f32 tensors
            // are used as read, never converted to themselves (a second copy).
            let t = files.tensor(&s.hf, &s.shape)?;
            // Checked in the stored dtype, naming the shard that holds it.
            check_finite(&t, &s.hf, files.file_of(&s.hf).unwrap_or(&origin))?;
            Ok(if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32)
            })
        })
    }

    /// Loads a model from a GGUF file: its config from the metadata and its
    /// tensors dequantised to f32, Q/K rows un-permuted for the llama arch.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let config = ModelConfig::from_gguf(gguf)?;
        Self::from_gguf_with_config(&config, gguf)
    }

    /// As [`Transformer::from_gguf`], with a config given (or adjusted) by the caller.
    pub fn from_gguf_with_config(config: &ModelConfig, gguf: &GgufFile) -> Result<Self> {
        let path: PathBuf = gguf.path().to_path_buf();
        let stored = gguf.tensors.iter().fold(0usize, |a, t| {
            a.saturating_add(
                t.dims
                    .iter()
                    .fold(1usize, |p, &d| p.saturating_mul(d as usize)),
            )
        });
        config.check_holds(gguf.tensors.len(), stored, &path)?;
        let unpermute = config.architecture == Architecture::Llama;
        assemble(config, &path.clone(), &mut |s| {
            let info = gguf
                .tensor_info(&s.gguf)
                .ok_or_else(|| BackboneError::Invalid {
                    path: path.clone(),
                    msg: format!("tensor `{}` is missing", s.gguf),
                })?;
            if info.shape() != s.shape {
                return Err(BackboneError::Invalid {
                    path: path.clone(),
                    msg: format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        s.gguf,
                        info.shape(),
                        s.shape
                    ),
                });
            }
            let mut t = gguf.tensor_f32(&s.gguf)?;
            check_finite(&t, &s.gguf, &path)?;
            if let (Some(heads), true) = (s.qk_heads, unpermute) {
                let cols = if s.shape.len() == 2 { s.shape[1] } else { 1 };
                let data = t
                    .as_slice_mut::<f32>()
                    .map_err(|e| BackboneError::Invalid {
                        path: path.clone(),
                        msg: format!("tensor `{}`: {e}", s.gguf),
                    })?;
                crate::unpermute_qk_rows(data, heads, config.head_dim, cols);
            }
            Ok(t)
        })
    }

    /// Every base weight under its Hugging Face name, in [`weight_specs`] order
    /// (what a merged checkpoint is written from; adapters are not included).
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let specs = weight_specs(self.config());
        let mut tensors: Vec<&Tensor> = vec![self.embedding().table()];
        for b in self.blocks() {
            let a = &b.attn;
            tensors.extend([
                &**b.attn_norm.weight(),
                a.q.weight(),
                a.k.weight(),
                a.v.weight(),
                a.o.weight(),
                b.mlp_norm.weight(),
                b.mlp.gate.weight(),
                b.mlp.up.weight(),
                b.mlp.down.weight(),
            ]);
            tensors.extend(
                [&a.q, &a.k, &a.v, &a.o]
                    .into_iter()
                    .filter_map(|l| l.bias().map(|b| &**b)),
            );
        }
        tensors.push(self.final_norm().weight());
        if !self.is_tied() {
            tensors.push(self.lm_head());
        }
        debug_assert_eq!(specs.len(), tensors.len());
        specs.into_iter().map(|s| s.hf).zip(tensors).collect()
    }

    /// A model of `config` with seeded random weights (tests, benches): matrices
    /// uniform with bound 1/√in (activations stay O(1) at any width), norm
    /// weights near 1, embedding rows and biases uniform in ±1 and ±0.1.
    pub fn random(config: &ModelConfig, seed: u64) -> Result<Self> {
        assemble(config, Path::new("<random weights>"), &mut |s| {
            let n = s.shape.iter().product();
            let seed = super::mix(seed ^ name_seed(&s.hf));
            let data: Vec<f32> = if s.hf.ends_with("norm.weight") {
                super::uniform_from_seed(seed, n, 0.2)
                    .into_iter()
                    .map(|v| 1.0 + v)
                    .collect()
            } else if s.hf.ends_with(".bias") {
                super::uniform_from_seed(seed, n, 0.1)
            } else if s.hf.contains("embed_tokens") || s.hf == "lm_head.weight" {
                super::uniform_from_seed(seed, n, 1.0)
            } else {
                super::uniform_from_seed(seed, n, 1.0 / (s.shape[1] as f32).sqrt())
            };
            Tensor::from_vec(data, &s.shape).map_err(|e| BackboneError::Invalid {
                path: PathBuf::from("<random weights>"),
                msg: e.to_string(),
            })
        })
    }
}
