//! Loading a Transformer from files written here: a tiny random model saved
//! as safetensors (with the `safetensors` crate) and as a GGUF file (bytes
//! laid out by hand, Q/K rows permuted as llama.cpp's converter does) must
//! reproduce the original's hidden states; a missing or misshaped tensor must
//! be an error naming the tensor and the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llm2comp_backbone::layers::weights::weight_specs;
use llm2comp_backbone::{Input, ModelConfig, Pass, SafetensorsFiles, Transformer};
use llm2comp_tensor::Tensor;
use llm2comp_tensor::testing::assert_close;
use safetensors::tensor::{Dtype, TensorView};

fn config(arch: &str, tied: bool) -> ModelConfig {
    let json = format!(
        r#"{{"architectures": ["{arch}"], "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 50, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": {tied}}}"#
    );
    ModelConfig::from_json(&json, Path::new("config.json")).unwrap()
}

const IDS: [u32; 9] = [3, 14, 15, 9, 2, 6, 5, 35, 49];
const CU: [u32; 3] = [0, 4, 9];

fn hidden(m: &Transformer, pass: &Pass) -> Vec<f32> {
    m.infer(Input::Ids(&IDS), &CU, pass).unwrap().to_vec_f32()
}

/// Writes `tensors` (name → f32 tensor, optionally replaced) to `dir/model.safetensors`.
fn write_safetensors(dir: &Path, tensors: &[(String, Tensor)]) -> PathBuf {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = t
                .to_vec_f32()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (n.clone(), b, t.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("model.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(views, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();
    path
}

fn weights_of(m: &Transformer) -> Vec<(String, Tensor)> {
    m.named_weights()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect()
}

#[test]
fn safetensors_round_trip_reproduces_hidden_states() {
    for (arch, tied) in [("Qwen2ForCausalLM", false), ("LlamaForCausalLM", true)] {
        let cfg = config(arch, tied);
        let model = Transformer::random(&cfg, 11).unwrap();
        let names: Vec<String> = weight_specs(&cfg).into_iter().map(|s| s.hf).collect();
        let weights = weights_of(&model);
        assert_eq!(
            weights.iter().map(|w| w.0.clone()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            weights.iter().map(|w| w.1.numel()).sum::<usize>(),
            cfg.num_parameters()
        );
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(dir.path(), &weights);
        let files = SafetensorsFiles::open(dir.path()).unwrap();
        let loaded = Transformer::from_safetensors(&cfg, &files).unwrap();
        for pass in [Pass::causal(), Pass::bidirectional()] {
            assert_eq!(hidden(&loaded, &pass), hidden(&model, &pass), "{arch}");
        }
        assert_eq!(loaded.is_tied(), tied);
    }
}

#[test]
fn missing_and_misshaped_tensors_name_tensor_and_file() {
    let cfg = config("LlamaForCausalLM", true);
    let model = Transformer::random(&cfg, 12).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut missing = weights_of(&model);
    missing.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let path = write_safetensors(dir.path(), &missing);
    let files = SafetensorsFiles::open(dir.path()).unwrap();
    let e = Transformer::from_safetensors(&cfg, &files)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("missing")
            && e.contains(&path.display().to_string()),
        "{e}"
    );

    let mut misshaped = weights_of(&model);
    for (n, t) in &mut misshaped {
        if n == "model.layers.0.self_attn.k_proj.weight" {
            *t = Tensor::from_vec(vec![0f32; 16 * 16], &[16, 16]).unwrap();
        }
    }
    let path = write_safetensors(dir.path(), &misshaped);
    let files = SafetensorsFiles::open(dir.path()).unwrap();
    let e = Transformer::from_safetensors(&cfg, &files)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("[16, 16]")
            && e.contains("[8, 16]")
            && e.contains(&path.display().to_string()),
        "{e}"
    );
}

// ---- GGUF, written byte by byte (F32 tensors, GGUF v3, alignment 32)

fn gguf_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

enum Meta {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

/// llama.cpp's converter order for Q/K rows: within each head, HF row
/// (half·two + i) goes to row (2·i + two), interleaving the two halves.
fn permute_like_llama_cpp(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for two in 0..2 {
            for i in 0..half {
                let src = (h * head_dim + two * half + i) * cols;
                let dst = (h * head_dim + 2 * i + two) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("model.layers.", "blk."),
    ];
    map.iter().fold(hf.to_string(), |s, (a, b)| s.replace(a, b))
}

fn write_gguf(path: &Path, meta: &[(&str, Meta)], tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut f = Vec::new();
    f.extend(b"GGUF");
    f.extend(3u32.to_le_bytes());
    f.extend((tensors.len() as u64).to_le_bytes());
    f.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        gguf_str(&mut f, k);
        match v {
            Meta::U32(x) => {
                f.extend(4u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                f.extend(6u32.to_le_bytes());
                f.extend(x.to_le_bytes());
            }
            Meta::Str(s) => {
                f.extend(8u32.to_le_bytes());
                gguf_str(&mut f, s);
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, _) in tensors {
        gguf_str(&mut f, name);
        f.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            f.extend((*d as u64).to_le_bytes());
        }
        f.extend(0u32.to_le_bytes()); // F32
        f.extend(offset.to_le_bytes());
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        offset += bytes.div_ceil(32) * 32;
    }
    while f.len() % 32 != 0 {
        f.push(0);
    }
    for (_, _, data) in tensors {
        let start = f.len();
        f.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        while (f.len() - start) % 32 != 0 {
            f.push(0);
        }
    }
    std::fs::write(path, f).unwrap();
}

#[test]
fn gguf_round_trip_unpermutes_qk_and_reads_the_config() {
    let cfg = config("LlamaForCausalLM", true);
    let model = Transformer::random(&cfg, 13).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .named_weights()
        .into_iter()
        .map(|(n, t)| {
            let shape = t.shape().to_vec();
            let mut data = t.to_vec_f32();
            if n.contains("q_proj") {
                data = permute_like_llama_cpp(&data, 4, 4, 16);
            } else if n.contains("k_proj") {
                data = permute_like_llama_cpp(&data, 2, 4, 16);
            }
            (gguf_name(&n), shape, data)
        })
        .collect();
    let meta = [
        ("general.architecture", Meta::Str("llama")),
        ("llama.embedding_length", Meta::U32(16)),
        ("llama.feed_forward_length", Meta::U32(24)),
        ("llama.block_count", Meta::U32(2)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.rope.dimension_count", Meta::U32(4)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.context_length", Meta::U32(64)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &meta, &tensors);
    let gguf = llm2comp_backbone::GgufFile::open(&path).unwrap();
    let gcfg = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(
        (
            gcfg.hidden_size,
            gcfg.intermediate_size,
            gcfg.num_layers,
            gcfg.num_heads
        ),
        (16, 24, 2, 4)
    );
    assert_eq!(
        (gcfg.num_kv_heads, gcfg.head_dim, gcfg.vocab_size),
        (2, 4, 50)
    );
    assert!(gcfg.tie_word_embeddings && gcfg.rope.theta == 10000.0);
    assert_eq!(
        (gcfg.bos_token_id, gcfg.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    let loaded = Transformer::from_gguf(&gguf).unwrap();
    for pass in [Pass::causal(), Pass::bidirectional()] {
        // eps went through f32 in the file: 1e-5 is not exact, hence a tolerance.
        assert_close(
            "gguf hidden",
            &hidden(&loaded, &pass),
            &hidden(&model, &pass),
            1e-5,
        );
    }

    // A misshaped tensor names itself and the file.
    let mut bad = tensors.clone();
    bad[2] = (bad[2].0.clone(), vec![16, 8], bad[2].2[..128].to_vec());
    write_gguf(&path, &meta, &bad);
    let gguf = llm2comp_backbone::GgufFile::open(&path).unwrap();
    let e = Transformer::from_gguf(&gguf).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains(&path.display().to_string()),
        "{e}"
    );
}
