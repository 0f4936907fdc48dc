//! Sentence embeddings for many texts: length-sorted, packed batches.
//!
//! Sequences are sorted by length (longest first) and packed greedily into
//! varlen batches under a token budget, so a batch costs the tokens it holds
//! and no padding is computed; long and short texts never share a batch in a
//! way that wastes work. Results are written back in input order. Sorting
//! longest-first also makes the first batch the largest, so an out-of-memory
//! shows up at once rather than at the end of a long run.
//!
//! The model may live on any device ([`Transformer::to_device`]): only the
//! pooled [B, H] rows come back to the host, as f32, where the optional L2
//! normalisation runs in f64 (B·H values, not worth a kernel).

use llm2comp_tensor::{Device, Result, TensorError};

use crate::{Input, Pass, Pooling, Transformer};

const OP: &str = "Embedder";

/// How to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOptions {
    /// How hidden states become one vector per text.
    pub pooling: Pooling,
    /// Causal (decoder-style) or bidirectional attention.
    pub causal: bool,
    /// Whether LoRA side paths (an adapter) are applied.
    pub lora: bool,
    /// L2-normalise each embedding.
    pub normalize: bool,
    /// Most tokens packed into one forward pass.
    pub token_budget: usize,
    /// Most sequences in one forward pass (`None`: only the token budget limits).
    pub batch_size: Option<usize>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            causal: false,
            lora: false,
            normalize: false,
            token_budget: 8192,
            batch_size: None,
        }
    }
}

/// Groups sequence indices into batches: longest first, each batch within
/// `token_budget` tokens (a longer sequence gets a batch of its own) and
/// `batch_size` sequences.
pub fn plan_batches(
    lens: &[usize],
    token_budget: usize,
    batch_size: Option<usize>,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    // Stable: equal lengths keep input order, so runs are reproducible.
    order.sort_by(|&a, &b| lens[b].cmp(&lens[a]));
    let cap = batch_size.unwrap_or(usize::MAX).max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0;
    for i in order {
        let fits = batches
            .last()
            .is_some_and(|b| b.len() < cap && tokens + lens[i] <= token_budget);
        if fits {
            tokens += lens[i];
            batches.last_mut().expect("checked above").push(i);
        } else {
            tokens = lens[i];
            batches.push(vec![i]);
        }
    }
    batches
}

/// Embeds token sequences with a model.
#[derive(Debug)]
pub struct Embedder<'a> {
    model: &'a Transformer,
    opts: EmbedOptions,
}

impl<'a> Embedder<'a> {
    /// An embedder over `model`.
    pub fn new(model: &'a Transformer, opts: EmbedOptions) -> Self {
        Self { model, opts }
    }

    /// The options.
    pub fn options(&self) -> &EmbedOptions {
        &self.opts
    }

    /// One embedding per sequence, in input order. Every sequence must be
    /// non-empty (the caller tokenises, truncates and rejects empty texts).
    /// `progress` is told the number of sequences finished after each batch.
    pub fn embed(
        &self,
        seqs: &[Vec<u32>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(TensorError::invalid(OP, format!("sequence {i} is empty")));
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mut out = vec![Vec::new(); seqs.len()];
        let pass = Pass {
            causal: self.opts.causal,
            lora: self.opts.lora,
            ..Pass::causal()
        };
        let mut done = 0;
        for batch in plan_batches(&lens, self.opts.token_budget, self.opts.batch_size) {
            let mut ids = Vec::new();
            let mut cu = vec![0u32];
            for &i in &batch {
                ids.extend_from_slice(&seqs[i]);
                cu.push(ids.len() as u32);
            }
            let hidden = self.model.infer(Input::Ids(&ids), &cu, &pass)?;
            let (pooled, _) = self.opts.pooling.forward(&hidden, &cu)?;
            let dim = pooled.dims2(OP, "pooled")?.1;
            let mut v = pooled.to_device(Device::Cpu)?.to_vec_f32();
            if self.opts.normalize {
                l2_normalize(&mut v, dim);
            }
            for (row, &i) in batch.iter().enumerate() {
                out[i] = v[row * dim..(row + 1) * dim].to_vec();
            }
            done += batch.len();
            progress(done);
        }
        Ok(out)
    }
}

/// Rows of width `d` scaled to unit L2 norm (a zero row stays zero).
fn l2_normalize(v: &mut [f32], d: usize) {
    for row in v.chunks_mut(d.max(1)) {
        let n = row.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|a| *a = (*a as f64 / n) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn batches_are_longest_first_within_budget_and_cover_every_index() {
        let lens = [3, 10, 1, 7, 7, 2, 12];
        let b = plan_batches(&lens, 12, None);
        assert_eq!(b[0], vec![6], "the longest alone fills the budget");
        for batch in &b {
            let t: usize = batch.iter().map(|&i| lens[i]).sum();
            assert!(t <= 12 || batch.len() == 1, "{batch:?} holds {t} tokens");
        }
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>());
        // Equal lengths keep input order; a sequence over budget gets its own batch.
        let b = plan_batches(&[5, 5, 20], 8, Some(4));
        assert_eq!(b, vec![vec![2], vec![0], vec![1]]);
        let b = plan_batches(&[1; 5], 100, Some(2));
        assert_eq!(b, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    fn tiny() -> Transformer {
        let cfg = ModelConfig::from_json(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":16,"intermediate_size":32,
                "num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":2,
                "vocab_size":50,"rms_norm_eps":1e-5,"rope_theta":10000.0,
                "max_position_embeddings":128,"tie_word_embeddings":true}"#,
            std::path::Path::new("tiny/config.json"),
        )
        .unwrap();
        Transformer::random(&cfg, 7).unwrap()
    }

    #[test]
    fn packed_batches_give_each_text_its_own_embedding_in_input_order() {
        let model = tiny();
        let seqs: Vec<Vec<u32>> =
            vec![vec![1, 2, 3], vec![4; 9], vec![5, 6], vec![7, 8, 9, 10, 11]];
        for pooling in [Pooling::Mean, Pooling::LastToken] {
            for causal in [true, false] {
                let opts = EmbedOptions {
                    pooling: pooling.clone(),
                    causal,
                    normalize: true,
                    token_budget: 12,
                    ..EmbedOptions::default()
                };
                let e = Embedder::new(&model, opts.clone());
                let mut seen = Vec::new();
                let packed = e.embed(&seqs, &mut |n| seen.push(n)).unwrap();
                assert_eq!(seen.last(), Some(&seqs.len()));
                for (i, s) in seqs.iter().enumerate() {
                    let alone = e.embed(std::slice::from_ref(s), &mut |_| {}).unwrap();
                    let err: f32 = alone[0]
                        .iter()
                        .zip(&packed[i])
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(err < 1e-5, "{pooling:?} causal={causal} text {i}: {err}");
                    let norm: f32 = packed[i].iter().map(|a| a * a).sum::<f32>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn an_empty_sequence_is_an_error_naming_it() {
        let model = tiny();
        let e = Embedder::new(&model, EmbedOptions::default());
        let err = e
            .embed(&[vec![1], vec![]], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequence 1"), "{err}");
    }
}
