//! Sizes from headers that do not fit the file, or overflow when
//! multiplied, end in an error naming the file before anything is
//! allocated from them: a GGUF claiming 10^8 layers, head counts whose
//! product wraps, a config.json whose parameter count overflows.

use std::path::Path;

use llm2comp_backbone::{GgufFile, ModelConfig, Transformer, model};

enum V {
    U32(u32),
    U64(u64),
    Str(&'static str),
}

fn s(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

/// A GGUF v3 file with `meta` and one F32 tensor `token_embd.weight` [4, 8].
fn gguf(meta: &[(&str, V)]) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut f, k);
        match v {
            V::U32(x) => {
                f.extend(4u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            V::U64(x) => {
                f.extend(10u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            V::Str(x) => {
                f.extend(8u32.to_le_bytes());
                s(&mut f, x);
            }
        }
    }
    s(&mut f, "token_embd.weight");
    f.extend(2u32.to_le_bytes());
    f.extend(8u64.to_le_bytes());
    f.extend(4u64.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    while !f.len().is_multiple_of(32) {
        f.push(0);
    }
    f.extend([0u8; 4 * 8 * 4]);
    f
}

fn llama(extra: Vec<(&'static str, V)>) -> Vec<(&'static str, V)> {
    let mut m = vec![
        ("general.architecture", V::Str("llama")),
        ("llama.embedding_length", V::U32(8)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.feed_forward_length", V::U32(16)),
        ("llama.context_length", V::U32(64)),
    ];
    m.extend(extra);
    m
}

fn write(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_gguf_claiming_1e8_layers_is_refused_before_building_them() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        &gguf(&llama(vec![("llama.block_count", V::U32(100_000_000))])),
    );
    let g = GgufFile::open(&p).unwrap();
    let e = Transformer::from_gguf(&g).unwrap_err().to_string();
    assert!(
        e.contains("m.gguf")
            && e.contains("the config says 100000000 layers, but the weights hold only 1 tensors"),
        "{e}"
    );
    // `info` reads the same headers and says the same.
    let e = model::inspect(&p).unwrap_err().to_string();
    assert!(e.contains("100000000 layers"), "{e}");
}

#[test]
fn a_matrix_larger_than_the_whole_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        &gguf(&llama(vec![
            ("llama.block_count", V::U32(1)),
            ("llama.vocab_size", V::U64(1 << 40)),
        ])),
    );
    let e = model::inspect(&p).unwrap_err().to_string();
    assert!(
        e.contains("needs an embedding [vocabulary, hidden] matrix of 8796093022208 elements")
            && e.contains("hold only 32 elements"),
        "{e}"
    );
}

#[test]
fn head_sizes_whose_product_overflows_are_refused() {
    let d = tempfile::tempdir().unwrap();
    // 2 heads of 2^62: 2^63 query rows of hidden 8, 2^66 elements.
    let p = write(
        d.path(),
        &gguf(&llama(vec![
            ("llama.block_count", V::U32(1)),
            ("llama.attention.key_length", V::U64(1 << 62)),
        ])),
    );
    let g = GgufFile::open(&p).unwrap();
    let e = ModelConfig::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("sizes overflow"), "{e}");
}

#[test]
fn a_config_json_whose_parameter_count_overflows_is_refused() {
    let json = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4294967296,
        "intermediate_size": 4294967296, "num_hidden_layers": 4294967296,
        "num_attention_heads": 1, "vocab_size": 10, "max_position_embeddings": 64}"#;
    let e = ModelConfig::from_json(json, Path::new("config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("sizes overflow"),
        "{e}"
    );
}
