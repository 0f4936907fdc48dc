//! The contrastive step on tiny random models: the loss's gradient w.r.t.
//! every LoRA A/B and the memory rows against finite differences (SimCSE
//! with attention and LoRA dropout, supervised without), GradCache giving
//! the same gradients as one full-batch pass, and stage chaining
//! reproducing the previous adapter's embeddings.

use std::path::Path;

use llm2comp_backbone::{
    AdapterMeta, LoraConfig, LoraTarget, ModelConfig, TrainEmbeddings, save_adapter,
};
use llm2comp_tensor::testing::{check_grad_f32_tol, rel_err, rng, uniform};

use super::*;
use crate::batch::{simcse, supervised};
use crate::{Triple, chain_stage};

const V: usize = 50;
const K: usize = 2;

/// Relative tolerance of the gradient checks. The loss is evaluated in f64
/// from f32 embeddings that went through two f32 blocks, the pooling and
/// the L2 normalisation, at τ = 0.05 (which multiplies their rounding by 20);
/// finite differences land within ~0.6% of the analytic value, far below
/// the O(1) error of a wrong or missing term.
const GRAD_TOL: f64 = 1.5e-2;

pub(crate) fn tiny_model(seed: u64) -> Transformer {
    let json = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": {V}, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true}}"#
    );
    let cfg = ModelConfig::from_json(&json, Path::new("tiny/config.json")).unwrap();
    Transformer::random(&cfg, seed).unwrap()
}

pub(crate) fn lora(dropout: f32) -> LoraConfig {
    LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout,
        targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
    }
}

/// A stage-1-like model: adapters with random B (a zero B would hide the
/// gradient w.r.t. A) and random memory rows.
pub(crate) fn staged_model(seed: u64, dropout: f32) -> Transformer {
    let mut m = tiny_model(seed);
    m.add_lora(&lora(dropout), seed + 1).unwrap();
    let mut r = rng(seed + 2);
    let rows = Tensor::from_vec(uniform::<f32>(&mut r, K * 16, 1.0), &[K, 16]).unwrap();
    m.set_extra_rows(Some(rows)).unwrap();
    let mut g = m.zero_grads(&Trainable {
        lora: true,
        ..Trainable::default()
    });
    for p in m.params(&mut g) {
        if p.name.ends_with("lora_B.weight") {
            let n = p.value.numel();
            *p.value = Tensor::from_vec(uniform::<f32>(&mut r, n, 0.3), p.value.shape()).unwrap();
        }
    }
    m
}

fn texts(n: usize, salt: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..3 + (i * 5 + salt) % 6)
                .map(|j| (2 + (i * 7 + j * 13 + salt) % (V - 2)) as u32)
                .collect()
        })
        .collect()
}

fn set_param(enc: &mut Encoder, name: &str, x: &[f32]) {
    let p = enc.params().into_iter().find(|p| p.name == name).unwrap();
    *p.value = Tensor::from_vec(x.to_vec(), p.value.shape()).unwrap();
}

fn grads(enc: &mut Encoder) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    enc.params()
        .into_iter()
        .map(|p| (p.name.clone(), p.value.to_vec_f32(), p.grad.to_vec_f32()))
        .collect()
}

fn check_batch(enc: &mut Encoder, b: &ContrastBatch, what: &str) {
    enc.zero_grads();
    let l = enc.step(b, 1.0).unwrap();
    let l2 = enc.loss(b).unwrap();
    assert!(
        (l - l2).abs() < 1e-5 * l.abs().max(1.0),
        "{what}: {l} vs {l2}"
    );
    let gs = grads(enc);
    assert_eq!(gs.len(), 2 * 2 * 3 + 1, "{what}: adapters and memory rows");
    for (name, x, g) in &gs {
        check_grad_f32_tol(
            &format!("{what} {name}"),
            |xp| {
                set_param(enc, name, xp);
                enc.loss(b).unwrap()
            },
            x,
            g,
            GRAD_TOL,
        );
        set_param(enc, name, x);
    }
}

#[test]
fn simcse_gradients_match_finite_differences_with_dropout() {
    let cfg = ContrastConfig {
        hidden_dropout: 0.1,
        ..ContrastConfig::simcse()
    };
    let mut enc = Encoder::new(staged_model(3, 0.2), 1, cfg).unwrap();
    assert!(enc.uses_dropout());
    let p = texts(3, 0);
    let refs: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
    let b = simcse(&refs, Some((5, 0, 0))).unwrap();
    check_batch(&mut enc, &b, "simcse");
}

fn triples(n: usize) -> Vec<Triple> {
    let q = texts(n, 1);
    let p = texts(n, 2);
    let neg = texts(n, 3);
    (0..n)
        .map(|i| Triple {
            query: q[i].clone(),
            positive: p[i].clone(),
            negatives: if i == 1 { vec![] } else { vec![neg[i].clone()] },
        })
        .collect()
}

#[test]
fn supervised_gradients_match_finite_differences() {
    let mut enc = Encoder::new(staged_model(4, 0.0), 1, ContrastConfig::supervised()).unwrap();
    assert!(!enc.uses_dropout());
    let t = triples(3);
    let refs: Vec<&Triple> = t.iter().collect();
    let b = supervised(&refs, None).unwrap();
    check_batch(&mut enc, &b, "supervised");
}

#[test]
fn gradcache_gives_the_full_batch_gradients() {
    for dropout in [false, true] {
        let model = staged_model(6, if dropout { 0.25 } else { 0.0 });
        let mut cfg = ContrastConfig::simcse();
        if dropout {
            cfg.hidden_dropout = 0.1;
        } else {
            cfg.attn_dropout = 0.0;
        }
        let mut full = Encoder::new(model.clone(), 1, cfg.clone()).unwrap();
        cfg.mini_batch = Some(3);
        let mut cached = Encoder::new(model, 1, cfg).unwrap();
        let p = texts(5, 4);
        let refs: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
        let b = simcse(&refs, dropout.then_some((8, 2, 1))).unwrap();
        let (l1, l2) = (full.step(&b, 0.5).unwrap(), cached.step(&b, 0.5).unwrap());
        assert!(
            (l1 - l2).abs() < 1e-5 * l1.abs(),
            "dropout={dropout}: {l1} vs {l2}"
        );
        let (g1, g2) = (grads(&mut full), grads(&mut cached));
        for ((name, _, a), (_, _, b)) in g1.iter().zip(&g2) {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "dropout={dropout} {name}: rel err {e}");
            assert!(a.iter().any(|x| *x != 0.0), "{name}: zero gradient");
        }
    }
}

#[test]
fn dropout_changes_the_views_and_evaluation_is_deterministic() {
    let enc = Encoder::new(staged_model(3, 0.1), 1, ContrastConfig::simcse()).unwrap();
    let p = texts(2, 0);
    let a = enc.embed(&p, Some(&[1, 2])).unwrap().to_vec_f32();
    let b = enc.embed(&p, Some(&[3, 4])).unwrap().to_vec_f32();
    assert!(
        rel_err(&a, &b) > 1e-3,
        "different seeds must give different views"
    );
    // A text's dropout view does not depend on what it is packed with.
    let a1 = enc.embed(&p[1..], Some(&[2])).unwrap().to_vec_f32();
    assert!(rel_err(&a[16..], &a1) < 1e-5);
    let c = enc.embed(&p, None).unwrap().to_vec_f32();
    assert_eq!(c, enc.embed(&p, None).unwrap().to_vec_f32());
    // Packed evaluation equals each text alone.
    let one = enc.embed(&p[1..], None).unwrap().to_vec_f32();
    assert!(rel_err(&c[16..], &one) < 1e-5);
}

#[test]
fn chaining_reproduces_the_previous_stage_then_trains_a_fresh_lora() {
    let dir = tempfile::tempdir().unwrap();
    let prev = staged_model(9, 0.05);
    let meta = AdapterMeta::new("tiny", &prev, K, &lora(0.05), TrainEmbeddings::Memory);
    save_adapter(dir.path(), &prev, &meta).unwrap();
    let before = Encoder::new(prev, 1, ContrastConfig::supervised()).unwrap();
    let p = texts(3, 5);
    let want = before.embed(&p, None).unwrap().to_vec_f32();

    let mut base = tiny_model(9);
    let chained = chain_stage(&mut base, dir.path(), 0.0, 17).unwrap();
    let (m, cfg) = (&chained.meta, &chained.lora);
    assert_eq!(m.memory_tokens, K);
    assert_eq!((cfg.r, cfg.dropout), (2, 0.0));
    let mut enc = Encoder::new(base, 1, ContrastConfig::supervised()).unwrap();
    let got = enc.embed(&p, None).unwrap().to_vec_f32();
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "chained embeddings differ: rel err {e}");
    // Fresh adapters (B = 0) and the carried-over memory rows are trainable.
    let names: Vec<String> = enc.params().into_iter().map(|p| p.name).collect();
    assert_eq!(names.len(), 2 * 2 * 3 + 1, "{names:?}");
    for p in enc.params() {
        if p.name.ends_with("lora_B.weight") {
            assert!(p.value.to_vec_f32().iter().all(|x| *x == 0.0));
        }
    }
    let t = triples(2);
    let refs: Vec<&Triple> = t.iter().collect();
    enc.step(&supervised(&refs, None).unwrap(), 1.0).unwrap();
    let gb: f32 = grads(&mut enc)
        .iter()
        .filter(|g| g.0.ends_with("lora_B.weight") || g.0.contains("extra"))
        .map(|g| g.2.iter().map(|x| x.abs()).sum::<f32>())
        .sum();
    assert!(
        gb > 0.0,
        "the fresh B matrices and memory rows get gradients"
    );

    // Trained a little, the stage saves as one stacked adapter that loads
    // alone onto the original base and embeds as the chained model does.
    for p in enc.params() {
        if p.name.ends_with("lora_B.weight") || p.name.contains("extra") {
            let v: Vec<f32> = p.grad.to_vec_f32().iter().map(|g| -0.5 * g).collect();
            let upd: Vec<f32> = p
                .value
                .to_vec_f32()
                .iter()
                .zip(&v)
                .map(|(a, b)| a + b)
                .collect();
            *p.value = llm2comp_tensor::Tensor::from_vec(upd, p.value.shape()).unwrap();
        }
    }
    let want = enc.embed(&p, None).unwrap().to_vec_f32();
    let out = tempfile::tempdir().unwrap();
    chained
        .save(out.path(), enc.model(), "ucl", "simcse", "prev")
        .unwrap();
    let mut fresh = tiny_model(9);
    let saved = llm2comp_backbone::load_adapter(out.path(), &mut fresh).unwrap();
    assert_eq!((saved.lora.r, saved.lora.stage_r), (4, Some(2)));
    assert_eq!(saved.parent.as_deref(), Some("prev"));
    let got = Encoder::new(fresh, 1, ContrastConfig::supervised())
        .unwrap()
        .embed(&p, None)
        .unwrap()
        .to_vec_f32();
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "stacked adapter differs from the chain: {e}");
    // Chaining from the stacked adapter starts a fresh adapter of one stage's rank.
    let mut base3 = tiny_model(9);
    let third = chain_stage(&mut base3, out.path(), 0.0, 18).unwrap();
    assert_eq!(third.lora.r, 2);
    assert_eq!(third.stacked_lora().r, 6);
}

#[test]
fn refuses_a_model_without_memory_rows_and_bad_settings() {
    let e = Encoder::new(tiny_model(1), 1, ContrastConfig::simcse()).unwrap_err();
    assert!(
        e.to_string().contains("neither memory rows nor adapters"),
        "{e}"
    );
    let mut c = ContrastConfig::simcse();
    c.temperature = 0.0;
    assert!(Encoder::new(staged_model(1, 0.0), 1, c).is_err());
    let mut c = ContrastConfig::simcse();
    c.mini_batch = Some(0);
    assert!(Encoder::new(staged_model(1, 0.0), 1, c).is_err());
    let enc = Encoder::new(staged_model(1, 0.0), 1, ContrastConfig::simcse()).unwrap();
    assert!(enc.embed(&texts(2, 0), Some(&[1])).is_err());
}

/// `to_device` builds the copy a CUDA run trains; on the CPU in f32 it must
/// step exactly as the original (same masks, same GradCache rows, scale by
/// `grad_clip::scale`), with its own fresh gradient buffers. The CUDA copy is
/// checked against this one in `tests/gpu.rs` on a GPU machine.
#[test]
fn a_moved_copy_steps_exactly_as_the_original() {
    let cfg = ContrastConfig {
        mini_batch: Some(3),
        ..ContrastConfig::simcse()
    };
    let mut enc = Encoder::new(staged_model(7, 0.1), 1, cfg).unwrap();
    let p = texts(4, 2);
    let refs: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
    let b = simcse(&refs, Some((3, 1, 0))).unwrap();
    let l1 = enc.step(&b, 0.5).unwrap();
    let mut moved = enc.to_device(Device::Cpu, DType::F32).unwrap();
    assert_eq!(moved.device(), Device::Cpu);
    assert!(
        grads(&mut moved)
            .iter()
            .all(|g| g.2.iter().all(|x| *x == 0.0)),
        "a moved encoder starts with zero gradients"
    );
    let l2 = moved.step(&b, 0.5).unwrap();
    assert_eq!(l1.to_bits(), l2.to_bits());
    for ((name, _, a), (_, _, b)) in grads(&mut enc).iter().zip(&grads(&mut moved)) {
        assert_eq!(a, b, "{name}");
        assert!(a.iter().any(|x| *x != 0.0), "{name}: zero gradient");
    }
    let e = enc.to_device(Device::Cpu, DType::BF16).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("bf16"), "{e}");
}

/// A LoRA-only model (k = 0, the MNTP baseline's adapter) embeds by the mean
/// over `[BOS] text`, and its contrastive gradient w.r.t. every adapter
/// matches finite differences.
#[test]
fn a_model_without_memory_rows_pools_the_mean_and_trains_its_adapters() {
    let mut m = staged_model(4, 0.0);
    m.set_extra_rows(None).unwrap();
    let mut enc = Encoder::new(m, 1, ContrastConfig::supervised()).unwrap();
    assert_eq!((enc.memory_tokens(), enc.pooling()), (0, Pooling::Mean));
    let t = texts(3, 1);
    let e = enc.embed(&t, None).unwrap().to_vec_f32();
    // Text 1 alone: [BOS] t, bidirectional, the mean over its rows.
    let ids: Vec<u32> = std::iter::once(1).chain(t[1].iter().copied()).collect();
    let h = enc
        .model()
        .infer(
            Input::Ids(&ids),
            &[0, ids.len() as u32],
            &Pass::bidirectional(),
        )
        .unwrap()
        .to_vec_f32();
    let want: Vec<f32> = (0..16)
        .map(|c| (0..ids.len()).map(|r| h[r * 16 + c]).sum::<f32>() / ids.len() as f32)
        .collect();
    assert!(rel_err(&e[16..32], &want) < 1e-5);
    let b = supervised(&triples(3).iter().collect::<Vec<_>>(), None).unwrap();
    enc.zero_grads();
    enc.step(&b, 1.0).unwrap();
    let gs = grads(&mut enc);
    assert_eq!(gs.len(), 2 * 2 * 3, "adapters only");
    for (name, x, g) in &gs {
        check_grad_f32_tol(
            &format!("k = 0 {name}"),
            |xp| {
                set_param(&mut enc, name, xp);
                enc.loss(&b).unwrap()
            },
            x,
            g,
            GRAD_TOL,
        );
        set_param(&mut enc, name, x);
    }
}
