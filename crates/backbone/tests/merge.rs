//! Merging an adapter and writing the model back as a Hugging Face
//! directory: the merged model computes what base + adapter computes, the
//! memory tokens get the ids V..V+k in the tokenizer (fillers first where the
//! tokenizer is shorter than the vocabulary), and `transformers` itself
//! loading the merged directory gives our hidden states
//! (`fixtures/merge_golden.json`, from `scripts/golden_merge.py`).
//!
//! Regenerating the golden: the merged directories are built here from the
//! committed tiny models and a seeded adapter; the ignored test
//! `merge_write_dirs_for_golden` writes them to `$LLM2COMP_MERGE_OUT`:
//!     LLM2COMP_MERGE_OUT=/tmp/merged cargo test -p llm2comp-backbone --test merge \
//!         -- --ignored merge_write_dirs_for_golden
//!     /work/venv/bin/python scripts/golden_merge.py /tmp/merged \
//!         crates/backbone/tests/fixtures/merge_golden.json

mod support;

use std::path::{Path, PathBuf};

use llm2comp_backbone::adapter::{META_FILE, merged_meta};
use llm2comp_backbone::export::{filler_token, memory_token};
use llm2comp_backbone::{
    AdapterMeta, Input, Pass, Tokenizer, TrainEmbeddings, Transformer, load_adapter, model,
    save_adapter, write_hf_dir,
};
use llm2comp_tensor::DType;
use llm2comp_tensor::testing::rel_err;
use serde_json::Value;
use support::*;

const K: usize = 3;

/// One golden case: a committed tiny model and the tokenizer to export with.
struct Case {
    name: &'static str,
    model: PathBuf,
    tokenizer: Tokenizer,
}

/// llama: untied head, Llama-3 RoPE scaling, a tokenizer covering all 97 ids.
/// qwen2: tied head, q/k/v biases, the 89-entry tiny-embed tokenizer (the
/// gap case: fillers 89..97 come before the memory tokens).
fn cases(scratch: &Path) -> Vec<Case> {
    let golden = fixtures().join("golden");
    let tok_dir = scratch.join("llama-tokenizer");
    std::fs::create_dir_all(&tok_dir).unwrap();
    let llama_tok = Tokenizer::from_file(write_word_tokenizer(&tok_dir, 97)).unwrap();
    let qwen_tok = Tokenizer::from_file(fixtures().join("tiny-embed/tokenizer.json")).unwrap();
    assert_eq!((llama_tok.vocab_size(), qwen_tok.vocab_size()), (97, 89));
    vec![
        Case {
            name: "llama",
            model: golden.join("llama"),
            tokenizer: llama_tok,
        },
        Case {
            name: "qwen2",
            model: golden.join("qwen2"),
            tokenizer: qwen_tok,
        },
    ]
}

/// Saves the seeded adapter of `case`, loads it into a fresh base, merges and
/// exports to `out`; returns the base with the adapter loaded (unmerged).
fn merge_case(case: &Case, adapter_dir: &Path, out: &Path, dtype: DType) -> Transformer {
    let mut trained = model::load_transformer(&case.model).unwrap();
    let lc = lora_config();
    attach_adapter(&mut trained, &lc, K, 2024);
    let meta = AdapterMeta::new(
        case.model.display().to_string(),
        &trained,
        K,
        &lc,
        TrainEmbeddings::Memory,
    );
    save_adapter(adapter_dir, &trained, &meta).unwrap();
    let mut with_adapter = model::load_transformer(&case.model).unwrap();
    let meta = load_adapter(adapter_dir, &mut with_adapter).unwrap();
    let mut merged = with_adapter.clone();
    merged.merge_lora().unwrap();
    write_hf_dir(out, &merged, &case.tokenizer, Some(&meta), dtype, false).unwrap();
    with_adapter
}

#[test]
#[ignore = "writes the merged directories for scripts/golden_merge.py"]
fn merge_write_dirs_for_golden() {
    let root = PathBuf::from(
        std::env::var("LLM2COMP_MERGE_OUT").expect("set LLM2COMP_MERGE_OUT to a directory"),
    );
    let scratch = tmp_dir("merge-gen");
    for case in cases(&scratch) {
        let out = root.join(case.name);
        let _ = std::fs::remove_dir_all(&out);
        merge_case(
            &case,
            &scratch.join(format!("{}-adapter", case.name)),
            &out,
            DType::F32,
        );
        eprintln!("wrote {}", out.display());
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Our merged model against transformers on the same directory (causal, as
/// `AutoModel` runs), and against base + adapter (bidirectional with LoRA as a
/// side path): the export writes the model it was given.
#[test]
fn merge_matches_transformers_on_the_merged_directory() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("merge_golden.json")).unwrap(),
    )
    .unwrap();
    let scratch = tmp_dir("merge-golden");
    for case in cases(&scratch) {
        let g = &golden["cases"][case.name];
        let out = scratch.join(format!("{}-merged", case.name));
        let with_adapter = merge_case(
            &case,
            &scratch.join(format!("{}-adapter", case.name)),
            &out,
            DType::F32,
        );
        let merged = model::load_transformer(&out).unwrap();
        let tok = model::load_tokenizer(&out).unwrap();
        let v = with_adapter.embedding().base_vocab();
        assert_eq!(merged.config().vocab_size, v + K);
        assert_eq!(g["vocab_size"], v);
        let mems: String = (0..K).map(memory_token).collect();
        let mut worst = 0f64;
        for (i, text) in g["texts"].as_array().unwrap().iter().enumerate() {
            let text = text.as_str().unwrap();
            let ids = tok.encode(&format!("{text}{mems}"), false).unwrap();
            let want_ids: Vec<u32> = g["ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want_ids, "{}: ids of {text:?}", case.name);
            let mem_ids: Vec<u32> = (v..v + K).map(|i| i as u32).collect();
            assert_eq!(ids[ids.len() - K..], mem_ids[..]);
            let cu = [0, ids.len() as u32];
            let ours = merged
                .infer(Input::Ids(&ids), &cu, &Pass::causal())
                .unwrap()
                .to_vec_f32();
            let err = rel_err(&ours, &floats(&g["hidden"][i]));
            worst = worst.max(err);
            assert!(err <= 1e-4, "{} text {i}: rel err {err:e}", case.name);
            // The merged weights are base + adapter (bidirectional, LoRA side path).
            let side = with_adapter
                .infer(Input::Ids(&ids), &cu, &Pass::bidirectional())
                .unwrap()
                .to_vec_f32();
            let merged_bi = merged
                .infer(Input::Ids(&ids), &cu, &Pass::bidirectional())
                .unwrap()
                .to_vec_f32();
            let e = rel_err(&merged_bi, &side);
            assert!(
                e <= 1e-5,
                "{} text {i}: merged vs side path {e:e}",
                case.name
            );
        }
        eprintln!("{}: worst rel err vs transformers {worst:.2e}", case.name);
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn merge_tokenizer_gets_memory_ids_after_fillers() {
    let scratch = tmp_dir("merge-tok");
    let cs = cases(&scratch);
    let qwen = cs.iter().find(|c| c.name == "qwen2").unwrap();
    let out = scratch.join("merged");
    merge_case(qwen, &scratch.join("adapter"), &out, DType::F32);
    let tok = model::load_tokenizer(&out).unwrap();
    assert_eq!(tok.vocab_size(), 97 + K);
    for id in 89..97 {
        assert_eq!(tok.token_to_id(&filler_token(id)), Some(id as u32));
    }
    for i in 0..K {
        assert_eq!(tok.token_to_id(&memory_token(i)), Some((97 + i) as u32));
    }
    // Text keeps its ids; the memory tokens are matched whole inside text.
    let ids = tok.encode("the cat<|mem_1|>", false).unwrap();
    let base = qwen.tokenizer.encode("the cat", false).unwrap();
    assert_eq!(ids, [base, vec![98]].concat());
    let meta = merged_meta(&out).unwrap().unwrap();
    assert!(meta.merged);
    assert_eq!(meta.memory_token_ids, [97, 98, 99]);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], 100);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["torch_dtype"], "float32");
    // Tied: no lm_head tensor; the embedding holds the memory rows.
    let st = model::safetensors_in(&out).unwrap();
    assert!(st.dtype_and_shape("lm_head.weight").is_none());
    assert_eq!(
        st.dtype_and_shape("model.embed_tokens.weight").unwrap().1,
        [100, 32]
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn merge_untied_head_gets_zero_rows_and_bf16_export_rounds_only() {
    let scratch = tmp_dir("merge-head");
    let cs = cases(&scratch);
    let llama = cs.iter().find(|c| c.name == "llama").unwrap();
    let out = scratch.join("f32");
    let with_adapter = merge_case(llama, &scratch.join("a1"), &out, DType::F32);
    let merged = model::load_transformer(&out).unwrap();
    let head = merged.lm_head().to_vec_f32();
    let h = 32;
    assert!(head[97 * h..].iter().all(|&x| x == 0.0));
    assert_eq!(head[..97 * h], with_adapter.lm_head().to_vec_f32()[..]);
    let table = merged.embedding().table().to_vec_f32();
    assert_eq!(
        table[97 * h..],
        with_adapter.embedding().extra().unwrap().to_vec_f32()[..]
    );
    let out16 = scratch.join("bf16");
    merge_case(llama, &scratch.join("a2"), &out16, DType::BF16);
    let st = model::safetensors_in(&out16).unwrap();
    assert_eq!(st.dtype_and_shape("lm_head.weight").unwrap().0, "BF16");
    let m16 = model::load_transformer(&out16).unwrap();
    let ids = [1u32, 5, 9, 97, 98, 99];
    let cu = [0, 6];
    let a = merged
        .infer(Input::Ids(&ids), &cu, &Pass::causal())
        .unwrap();
    let b = m16.infer(Input::Ids(&ids), &cu, &Pass::causal()).unwrap();
    let e = rel_err(&b.to_vec_f32(), &a.to_vec_f32());
    assert!(e > 1e-6 && e < 3e-2, "bf16 vs f32 rel err {e:e}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn merge_refuses_unmerged_lora_busy_output_and_short_vocabularies() {
    let scratch = tmp_dir("merge-refuse");
    let cs = cases(&scratch);
    let llama = cs.iter().find(|c| c.name == "llama").unwrap();
    let out = scratch.join("merged");
    let with_adapter = merge_case(llama, &scratch.join("a"), &out, DType::F32);
    let meta = merged_meta(&out).unwrap().unwrap();
    let meta = AdapterMeta {
        merged: false,
        ..meta
    };
    let tok = &llama.tokenizer;
    let fresh = scratch.join("fresh");
    // LoRA still attached.
    let e = write_hf_dir(&fresh, &with_adapter, tok, Some(&meta), DType::F32, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("merge_lora"), "{e}");
    let mut merged = with_adapter.clone();
    merged.merge_lora().unwrap();
    // Memory rows but no meta.
    let e = write_hf_dir(&fresh, &merged, tok, None, DType::F32, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no adapter meta"), "{e}");
    // A tokenizer with more ids than the model has rows.
    let big_dir = scratch.join("big");
    std::fs::create_dir_all(&big_dir).unwrap();
    let big = Tokenizer::from_file(write_word_tokenizer(&big_dir, 99)).unwrap();
    let e = write_hf_dir(&fresh, &merged, &big, Some(&meta), DType::F32, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("99 ids") && e.contains("collide"), "{e}");
    assert!(!fresh.exists());
    // A non-empty output is kept unless overwriting is asked for.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let e = write_hf_dir(&out, &merged, tok, Some(&meta), DType::BF16, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    write_hf_dir(&out, &merged, tok, Some(&meta), DType::BF16, true).unwrap();
    assert!(std::fs::read(out.join("model.safetensors")).unwrap().len() < before.len());
    assert!(out.join(META_FILE).is_file());
    // An empty existing directory is filled without --force.
    let empty = scratch.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    write_hf_dir(&empty, &merged, tok, Some(&meta), DType::F32, false).unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&scratch).unwrap();
}
