//! Helpers shared by CLI tests that build model directories from the
//! committed tiny model (`crates/backbone/tests/fixtures/tiny-embed`).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value, json};

mod reference;
#[allow(unused_imports)] // each test binary uses a different subset
pub use reference::*;

/// The committed tiny Qwen2 (bf16 safetensors, word-level tokenizer).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed")
}

/// Runs the binary with `args`.
pub fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The fixture's config (with a BOS id: pretrain needs one) and tokenizer in `dst`.
pub fn copy_config(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let src = fixture();
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["bos_token_id"] = json!(2);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
}

/// The fixture model as a single-file directory at `dst`.
pub fn copy_model(dst: &Path) {
    copy_config(dst);
    std::fs::copy(
        fixture().join("model.safetensors"),
        dst.join("model.safetensors"),
    )
    .unwrap();
}

/// (name, header entry, data) of every tensor of a safetensors file, by name.
pub fn read_safetensors(bytes: &[u8]) -> Vec<(String, Value, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out: Vec<(String, Value, Vec<u8>)> = header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(name, entry)| {
            let off = &entry["data_offsets"];
            let (a, b) = (off[0].as_u64().unwrap(), off[1].as_u64().unwrap());
            (name, entry, data[a as usize..b as usize].to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes `tensors` as a safetensors file, offsets rewritten.
pub fn write_safetensors(path: &Path, tensors: &[(String, Value, Vec<u8>)]) {
    let mut header = Map::new();
    let mut data = Vec::new();
    for (name, entry, bytes) in tensors {
        let mut e = entry.clone();
        e["data_offsets"] = json!([data.len(), data.len() + bytes.len()]);
        header.insert(name.clone(), e);
        data.extend_from_slice(bytes);
    }
    let h = Value::Object(header).to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// The f32 payload of an .npy file (its header is checked by `embed_tiny.rs`).
pub fn npy_values(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
