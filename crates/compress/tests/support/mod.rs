//! What the golden tests share: reading the fixtures the Python scripts
//! write (golden.json, adapter.safetensors) and comparing against them.

use std::path::{Path, PathBuf};

use llm2comp_backbone::adapter::peft_key;
use llm2comp_backbone::{Lora, LoraConfig, LoraTarget, SafetensorsFiles, Transformer};
use serde_json::Value;

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden tensor's flattened values.
pub fn values(v: &Value) -> Vec<f64> {
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// ‖got − want‖ / ‖want‖.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

/// golden.json's `lora` entry as a config (no dropout: the goldens have none).
pub fn lora_config(g: &Value) -> LoraConfig {
    let targets = g["lora"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let n = t.as_str().unwrap();
            LoraTarget::ALL
                .into_iter()
                .find(|x| x.module_name() == n)
                .unwrap()
        })
        .collect();
    LoraConfig {
        r: g["lora"]["r"].as_u64().unwrap() as usize,
        alpha: g["lora"]["alpha"].as_f64().unwrap() as f32,
        dropout: 0.0,
        targets,
    }
}

/// Sets every adapter of `cfg` on `m` from `adapter`'s PEFT-named tensors.
pub fn attach_lora(m: &mut Transformer, cfg: &LoraConfig, adapter: &SafetensorsFiles) {
    let r = cfg.r;
    for (l, block) in m.blocks_mut().iter_mut().enumerate() {
        for &t in &cfg.targets {
            let lin = block.linear_mut(t);
            let (out, inp) = (lin.out_features(), lin.in_features());
            let a = adapter.tensor(&peft_key(l, t, "A"), &[r, inp]).unwrap();
            let b = adapter.tensor(&peft_key(l, t, "B"), &[out, r]).unwrap();
            lin.set_lora(Lora {
                a,
                b,
                scale: cfg.alpha / r as f32,
                dropout: 0.0,
            })
            .unwrap();
        }
    }
}
