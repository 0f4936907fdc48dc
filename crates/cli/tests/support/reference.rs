//! What the CLI's embedding tests compare `llm2comp embed` against: an
//! independent reader of the .npy files it writes, and a naive reference
//! embedder that runs one text at a time through the library's model
//! (tokenise, cut, one forward pass on that sequence alone, pool by hand in
//! f64). The naive reference shares the model's forward pass with the CLI
//! and nothing else: no `Embedder`, no packing, no `Pooling`, no flag
//! parsing. `Reference::library` is the library's own packed path on the
//! same sequences, for the CLI-equals-library comparison.

// Each test file uses part of this module.
#![allow(dead_code)]

use std::path::Path;

use llm2comp_backbone::{
    EmbedOptions, Embedder, Input, Pass, Pooling, Tokenizer, Transformer, load_adapter, model,
};

/// Shape and values of a little-endian f32 .npy file (version 1.0, C
/// order), parsed from the format's required header fields only.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "npy magic and version");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let inside = header.split("'shape': (").nth(1).unwrap();
    let inside = &inside[..inside.find(')').unwrap()];
    let shape: Vec<usize> = inside
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let vals: Vec<f32> = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(vals.len(), shape.iter().product::<usize>(), "npy data size");
    (shape, vals)
}

/// The rows of an [N, D] .npy file.
pub fn npy_rows(path: &Path) -> Vec<Vec<f32>> {
    let (shape, v) = read_npy(path);
    assert_eq!(shape.len(), 2, "{shape:?}");
    v.chunks(shape[1].max(1)).map(<[f32]>::to_vec).collect()
}

/// The largest row-wise ‖a − b‖ / ‖b‖ (rows compared in order).
pub fn worst_row_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row widths differ");
            let num: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum();
            let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (num / den.max(1e-300)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// How the reference turns a sequence's hidden states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefPooling {
    /// Mean over every position (the text's tokens).
    Mean,
    /// The last position.
    Last,
    /// `[BOS] text <mem_0..k-1>`, mean over the k memory positions.
    Memory,
}

/// The model (and adapter) as the library loads them.
pub struct Reference {
    model: Transformer,
    tokenizer: Tokenizer,
    memory_ids: Vec<u32>,
    lora: bool,
}

impl Reference {
    /// `model_dir` with the LLM2Comp adapter in `adapter` applied, if any.
    pub fn load(model_dir: &Path, adapter: Option<&Path>) -> Self {
        let mut m = model::load_transformer(model_dir).unwrap();
        let memory_ids = adapter.map_or_else(Vec::new, |dir| {
            load_adapter(dir, &mut m).unwrap().memory_token_ids
        });
        Self {
            model: m,
            tokenizer: model::load_tokenizer(model_dir).unwrap(),
            memory_ids,
            lora: adapter.is_some(),
        }
    }

    /// The token sequences the README specifies: each text tokenised and
    /// cut so the whole fits `max_len`; with memory pooling `[BOS] text
    /// <mem_0..k-1>`, BOS from the tokenizer, else config.json, else none.
    pub fn sequences(&self, texts: &[&str], pooling: RefPooling, max_len: usize) -> Vec<Vec<u32>> {
        let bos = self.tokenizer.bos_id().or(self.model.config().bos_token_id);
        texts
            .iter()
            .map(|t| {
                let mut ids = self.tokenizer.encode(t, false).unwrap();
                if pooling == RefPooling::Memory {
                    assert!(
                        !self.memory_ids.is_empty(),
                        "memory pooling needs an adapter"
                    );
                    let head: Vec<u32> = bos.into_iter().collect();
                    ids.truncate(max_len - head.len() - self.memory_ids.len());
                    [head, ids, self.memory_ids.clone()].concat()
                } else {
                    ids.truncate(max_len);
                    ids
                }
            })
            .collect()
    }

    /// The library's packed `Embedder` on [`Self::sequences`], with a token
    /// budget of `budget` per forward pass.
    pub fn library(
        &self,
        texts: &[&str],
        pooling: RefPooling,
        causal: bool,
        max_len: usize,
        normalize: bool,
        budget: usize,
    ) -> Vec<Vec<f32>> {
        let opts = EmbedOptions {
            pooling: match pooling {
                RefPooling::Mean => Pooling::Mean,
                RefPooling::Last => Pooling::LastToken,
                RefPooling::Memory => Pooling::LastK(self.memory_ids.len()),
            },
            causal,
            lora: self.lora,
            normalize,
            token_budget: budget,
            batch_size: None,
        };
        Embedder::new(&self.model, opts)
            .embed(&self.sequences(texts, pooling, max_len), &mut |_| {})
            .unwrap()
    }

    /// One embedding per text, each from a forward pass over that text's
    /// sequence alone, pooled here in f64. With an adapter its LoRA applies
    /// whatever the pooling.
    pub fn embed(
        &self,
        texts: &[&str],
        pooling: RefPooling,
        causal: bool,
        max_len: usize,
        normalize: bool,
    ) -> Vec<Vec<f32>> {
        let pass = Pass {
            causal,
            lora: self.lora,
            ..Pass::causal()
        };
        self.sequences(texts, pooling, max_len)
            .iter()
            .map(|seq| {
                let n = seq.len();
                let h = self
                    .model
                    .infer(Input::Ids(seq), &[0, n as u32], &pass)
                    .unwrap()
                    .to_vec_f32();
                let width = h.len() / n;
                let rows: Vec<&[f32]> = h.chunks(width).collect();
                let pooled: &[&[f32]] = match pooling {
                    RefPooling::Mean => &rows,
                    RefPooling::Last => &rows[n - 1..],
                    RefPooling::Memory => &rows[n - self.memory_ids.len()..],
                };
                let mut v: Vec<f64> = (0..width)
                    .map(|j| pooled.iter().map(|r| r[j] as f64).sum::<f64>() / pooled.len() as f64)
                    .collect();
                if normalize {
                    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    v.iter_mut().for_each(|a| *a /= norm);
                }
                v.into_iter().map(|a| a as f32).collect()
            })
            .collect()
    }
}

/// Values uniform in [−bound, bound) from SplitMix64 (no RNG crate, so the
/// adapter below does not change with a dependency's version).
pub fn uniform(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut z = seed;
    (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

/// Saves into `dir` a seeded LLM2Comp adapter for `base`: rank-`r` LoRA on
/// every projection with non-zero B (so it changes the model) and `k`
/// random memory rows.
pub fn write_adapter(base: &Path, dir: &Path, r: usize, k: usize) {
    use llm2comp_backbone::{
        AdapterMeta, LoraConfig, LoraTarget::*, TrainEmbeddings, save_adapter,
    };
    use llm2comp_tensor::Tensor;
    let mut m = model::load_transformer(base).unwrap();
    let cfg = LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        dropout: 0.0,
        targets: vec![Q, K, V, O, Gate, Up, Down],
    };
    m.add_lora(&cfg, 7).unwrap();
    let mut seed = 100;
    for block in m.blocks_mut() {
        for &t in &cfg.targets {
            let lora = block.linear_mut(t).lora_mut().unwrap();
            let shape = lora.b.shape().to_vec();
            seed += 1;
            lora.b = Tensor::from_vec(uniform(seed, shape[0] * shape[1], 0.3), &shape).unwrap();
        }
    }
    let h = m.config().hidden_size;
    m.set_extra_rows(Some(
        Tensor::from_vec(uniform(9, k * h, 1.0), &[k, h]).unwrap(),
    ))
    .unwrap();
    let meta = AdapterMeta::new(
        base.display().to_string(),
        &m,
        k,
        &cfg,
        TrainEmbeddings::Memory,
    );
    save_adapter(dir, &m, &meta).unwrap();
}
