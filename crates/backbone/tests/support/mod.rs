//! Deterministic adapters and tokenizers for the adapter and merge tests.
//! The numbers come from a SplitMix64 stream written here, not from an RNG
//! crate, so the committed merge golden stays valid whatever `rand` is linked.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use llm2comp_backbone::{LoraConfig, LoraTarget, ModelConfig, Transformer};
use llm2comp_tensor::Tensor;

/// `n` values uniform in [−bound, bound) from SplitMix64 seeded with `seed`.
pub fn uniform(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut z = seed;
    (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            let u = (x >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * bound
        })
        .collect()
}

/// The adapter the tests train nothing into: r 4, alpha 8, on every projection but k_proj.
pub fn lora_config() -> LoraConfig {
    use LoraTarget::*;
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        targets: vec![Q, V, O, Gate, Up, Down],
    }
}

/// Attaches a seeded adapter to `model`: A from `add_lora`, B non-zero
/// (a fresh B is zero and would hide a wrong A), and `k` memory rows.
pub fn attach_adapter(model: &mut Transformer, cfg: &LoraConfig, k: usize, seed: u64) {
    model.add_lora(cfg, seed).unwrap();
    for (l, block) in model.blocks_mut().iter_mut().enumerate() {
        for &t in &cfg.targets {
            let lora = block.linear_mut(t).lora_mut().unwrap();
            let shape = lora.b.shape().to_vec();
            let n = shape.iter().product();
            let s = seed ^ ((l as u64) << 8) ^ ((t as u64 + 1) * 0x1234_5678);
            lora.b = Tensor::from_vec(uniform(s, n, 0.3), &shape).unwrap();
        }
    }
    let h = model.config().hidden_size;
    let rows = Tensor::from_vec(uniform(seed ^ 0xabcd, k * h, 1.0), &[k, h]).unwrap();
    model.set_extra_rows(Some(rows)).unwrap();
}

/// A tiny random Llama (2 layers, GQA) with vocabulary `vocab`, tied or not.
pub fn tiny_config(vocab: usize, tied: bool) -> ModelConfig {
    ModelConfig::from_json(
        &format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":16,"intermediate_size":24,
                "num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":2,
                "vocab_size":{vocab},"rms_norm_eps":1e-5,"rope_theta":10000.0,
                "max_position_embeddings":128,"tie_word_embeddings":{tied},
                "bos_token_id":1,"eos_token_id":2}}"#
        ),
        Path::new("tiny/config.json"),
    )
    .unwrap()
}

/// A fresh directory under the system temp dir.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llm2comp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a word-level `tokenizer.json` (`[UNK]`, `<s>`, `</s>`, then
/// `w3`.. up to `n` entries) and a `tokenizer_config.json` naming BOS/EOS
/// into `dir`; returns the tokenizer.json path.
pub fn write_word_tokenizer(dir: &Path, n: usize) -> PathBuf {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["[UNK]", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    for i in 3..n {
        vocab.insert(format!("w{i}"), i.into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[UNK]"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    path
}

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
