//! The MNTP step against an independent float64 PyTorch computation
//! (`scripts/golden_mntp.py`: transformers' Llama with hand-written LoRA, a
//! 4-D all-true mask, transformers' causal-LM label shift, cross-entropy
//! averaged over the chosen tokens) on the tiny golden Llamas (untied and
//! tied head): the loss and the gradient of every adapter tensor must agree.
//! The corruption (which tokens, what replaces them) comes from the fixture,
//! so this checks the step's rows, shift, mask and weights; the draws
//! themselves are tested in `mntp.rs`.

mod support;

use llm2comp_backbone::{SafetensorsFiles, model};
use llm2comp_compress::Mntp;
use llm2comp_compress::mntp::{Labelled, pack_labelled};
use serde_json::Value;
use support::{attach_lora, lora_config, rel_err, repo, values};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(arch: &str) {
    let dir = repo()
        .join("crates/compress/tests/fixtures/golden_mntp")
        .join(arch);
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let bos = g["bos_id"].as_u64().unwrap() as u32;
    let lora = lora_config(&g);
    let adapter = SafetensorsFiles::open(dir.join("adapter.safetensors")).unwrap();
    let passages: Vec<Labelled> = g["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Labelled {
            ids: ids(&p["corrupted"]),
            labels: p["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_i64().filter(|&x| x >= 0).map(|x| x as u32))
                .collect(),
        })
        .collect();
    let mut m = model::load_transformer(repo().join(g["model"].as_str().unwrap())).unwrap();
    attach_lora(&mut m, &lora, &adapter);
    let mut step = Mntp::with_adapters(m, false).unwrap();
    let b = pack_labelled(bos, &passages).unwrap();
    let want = g["loss"].as_f64().unwrap();
    let no_grad = step.loss(&b, None).unwrap();
    let loss = step.step(&b, None, 1.0).unwrap();
    let le = ((loss - want) / want).abs();
    eprintln!("{arch} mntp: loss {loss:.9} vs {want:.9} (rel {le:.1e})");
    assert!(le < 1e-5, "{arch}: loss {loss} vs golden {want}");
    assert!(
        ((no_grad - loss) / loss).abs() < 1e-6,
        "{no_grad} vs {loss}"
    );
    let (mut checked, mut worst) = (0, 0f64);
    for p in step.params() {
        let key = format!("base_model.model.{}", p.name);
        let w = &g["grads"][&key];
        assert!(!w.is_null(), "{arch}: no golden gradient for {key}");
        let e = rel_err(&p.grad.to_vec_f32(), &values(w));
        assert!(e < 1e-5, "{arch}: d/d{key} rel err {e:.2e}");
        worst = worst.max(e);
        checked += 1;
    }
    eprintln!("{arch} mntp: {checked} gradients, worst rel err {worst:.1e}");
    assert_eq!(checked, g["grads"].as_object().unwrap().len());
}

#[test]
fn mntp_step_matches_pytorch_on_the_untied_llama() {
    check("llama");
}

#[test]
fn mntp_step_matches_pytorch_on_the_tied_llama() {
    check("llama_tied");
}
