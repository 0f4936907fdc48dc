//! Size arithmetic on a [`ModelConfig`], checked: every count in a config
//! comes from a file (`config.json`, GGUF metadata), and a product of two
//! absurd counts must be an error naming the file, not a wrapped number
//! (release builds) or a panic (debug builds).

use std::path::Path;

use crate::{BackboneError, ModelConfig, Result};

/// `a * b` or `None` on overflow, over any number of factors.
fn mul(xs: &[usize]) -> Option<usize> {
    xs.iter().try_fold(1usize, |a, &x| a.checked_mul(x))
}

/// The sum of `xs`, `None` on overflow.
fn add(xs: &[Option<usize>]) -> Option<usize> {
    xs.iter().try_fold(0usize, |a, &x| a.checked_add(x?))
}

impl ModelConfig {
    /// Parameters of the backbone (embedding, blocks, final norm, untied
    /// head), `None` when the count overflows a `usize`.
    pub fn checked_num_parameters(&self) -> Option<usize> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = mul(&[self.num_heads, self.head_dim])?;
        let kv = mul(&[self.num_kv_heads, self.head_dim])?;
        let b = self.attention_bias;
        let qkv_bias = if b.qkv {
            add(&[Some(q), mul(&[2, kv])])
        } else {
            Some(0)
        };
        let attn = add(&[
            mul(&[h, q]),
            mul(&[2, h, kv]),
            mul(&[q, h]),
            qkv_bias,
            Some(if b.o { h } else { 0 }),
        ])?;
        let block = add(&[Some(attn), mul(&[3, h, i]), mul(&[2, h])])?;
        let head = if self.tie_word_embeddings {
            Some(0)
        } else {
            mul(&[self.vocab_size, h])
        };
        add(&[
            mul(&[self.vocab_size, h]),
            mul(&[self.num_layers, block]),
            Some(h),
            head,
        ])
    }

    /// f32 activations a training step keeps per token (all layers), in
    /// bytes, `None` on overflow (what `llm2comp info` estimates).
    pub fn checked_activation_bytes_per_token(&self) -> Option<usize> {
        let per_layer = add(&[
            mul(&[4, self.hidden_size]),
            mul(&[3, self.intermediate_size]),
        ])?;
        mul(&[self.num_layers, per_layer, 4])
    }

    /// Errors unless every size derived from the config fits a `usize`;
    /// `origin` names the file the config came from.
    pub fn check_sizes(&self, origin: &Path) -> Result<()> {
        if self.checked_num_parameters().is_none()
            || self.checked_activation_bytes_per_token().is_none()
        {
            return Err(BackboneError::Invalid {
                path: origin.to_path_buf(),
                msg: format!(
                    "sizes overflow: {} layers, hidden {}, MLP {}, {} heads ({} KV) of {}, \
                     vocabulary {}; corrupt file?",
                    self.num_layers,
                    self.hidden_size,
                    self.intermediate_size,
                    self.num_heads,
                    self.num_kv_heads,
                    self.head_dim,
                    self.vocab_size
                ),
            });
        }
        Ok(())
    }

    /// Errors unless weights of `tensors` tensors holding `elements`
    /// elements in all can be this model: every layer is several tensors,
    /// and every weight matrix's elements are stored (quantised formats
    /// count logical elements). Checked before any per-layer list is built,
    /// so a header claiming 10^8 layers or a hidden size of 10^12 is refused
    /// at once instead of running out of memory. A config that passes can
    /// still lack a tensor; loading names that one.
    pub fn check_holds(&self, tensors: usize, elements: usize, origin: &Path) -> Result<()> {
        let err = |msg: String| BackboneError::Invalid {
            path: origin.to_path_buf(),
            msg,
        };
        if self.num_layers > tensors {
            return Err(err(format!(
                "the config says {} layers, but the weights hold only {tensors} tensors",
                self.num_layers
            )));
        }
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = mul(&[self.num_heads, self.head_dim]);
        let matrices = [
            ("embedding [vocabulary, hidden]", mul(&[v, h])),
            ("MLP [intermediate, hidden]", mul(&[i, h])),
            (
                "query [heads x head_dim, hidden]",
                q.and_then(|q| mul(&[q, h])),
            ),
        ];
        for (what, n) in matrices {
            if n.is_none_or(|n| n > elements) {
                return Err(err(format!(
                    "the config ({} layers, hidden {h}, MLP {i}, {} heads of {}, vocabulary {v}) \
                     needs an {what} matrix of {} elements, but the weights hold only \
                     {elements} elements in all",
                    self.num_layers,
                    self.num_heads,
                    self.head_dim,
                    n.map_or("more than 2^64".to_string(), |n| n.to_string())
                )));
            }
        }
        Ok(())
    }
}
