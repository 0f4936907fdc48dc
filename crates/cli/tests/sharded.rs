//! A sharded Hugging Face checkpoint (`model.safetensors.index.json` and its
//! shards) through the binary: `info`, `embed` and `pretrain` load it, and
//! `embed` gives exactly the values of the same weights in one file. The
//! shards are cut here from the committed tiny model
//! (`crates/backbone/tests/fixtures/tiny-embed`), so nothing new is vendored.

mod support;

use std::path::Path;

use serde_json::{Map, json};
use support::{
    copy_config, copy_model, fixture, llm2comp, npy_values, read_safetensors, write_safetensors,
};

fn ok(o: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        o.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The fixture's weights split into two shards plus an index, in `dst`.
fn shard_model(dst: &Path) {
    copy_config(dst);
    let tensors = read_safetensors(&std::fs::read(fixture().join("model.safetensors")).unwrap());
    assert!(
        tensors.len() >= 4,
        "the fixture has {} tensors",
        tensors.len()
    );
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = Map::new();
    for (part, file) in [first, second].into_iter().zip(names) {
        write_safetensors(&dst.join(file), part);
        for (name, _, _) in part {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let total: usize = tensors.iter().map(|t| t.2.len()).sum();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn embed(model: &Path, out: &Path) -> Vec<f32> {
    let passages = fixture().join("passages.txt");
    ok(
        llm2comp(&[
            "--threads",
            "1",
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            passages.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]),
        "embed",
    );
    npy_values(out)
}

#[test]
fn a_sharded_checkpoint_runs_info_embed_and_pretrain_like_the_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    copy_model(&single);
    let sharded = tmp.path().join("sharded");
    shard_model(&sharded);

    let info = |m: &Path| -> serde_json::Value {
        let o = ok(
            llm2comp(&["info", "--model", m.to_str().unwrap(), "--json"]),
            "info",
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (info(&single), info(&sharded));
    for key in [
        "parameters",
        "stored_elements",
        "layers",
        "vocab_size",
        "dtypes",
    ] {
        assert_eq!(a[key], b[key], "info's `{key}` differs");
    }

    let want = embed(&single, &tmp.path().join("single.npy"));
    let got = embed(&sharded, &tmp.path().join("sharded.npy"));
    assert!(!want.is_empty());
    assert_eq!(got, want, "the sharded model embeds differently");

    let out = tmp.path().join("run");
    let passages = fixture().join("passages.txt");
    ok(
        llm2comp(&[
            "--threads",
            "1",
            "pretrain",
            "--model",
            sharded.to_str().unwrap(),
            "--data",
            passages.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--memory-tokens",
            "2",
            "--lora-r",
            "4",
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--steps",
            "2",
            "--quiet",
        ]),
        "pretrain",
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(out.join("adapter_model.safetensors").is_file());
}
