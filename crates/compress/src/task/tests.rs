//! The compression task under the real trainer on a tiny random model:
//! a resumed run equals an uninterrupted one bit for bit, accumulation
//! regroups without changing the gradient, and a NaN stops the run.

use std::path::Path;

use llm2comp_backbone::{LoraConfig, LoraTarget, ModelConfig, Transformer};
use llm2comp_train::testing::{loss_bits, param_bits};
use llm2comp_train::{Decay, Schedule, TrainConfig, TrainError, train};

use super::*;
use crate::{CompressConfig, Objective, TrainEmbeddings};

const V: usize = 50;

fn model() -> Transformer {
    let json = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": {V}, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true}}"#
    );
    let cfg = ModelConfig::from_json(&json, Path::new("tiny/config.json")).unwrap();
    Transformer::random(&cfg, 3).unwrap()
}

fn corpus() -> Corpus {
    Corpus::from_ids(
        (0..7)
            .map(|i| {
                (0..20 + 3 * i)
                    .map(|j| (2 + (i * 11 + j * 7) % (V - 2)) as u32)
                    .collect()
            })
            .collect(),
    )
    .unwrap()
}

fn task(dropout: f32, batch: usize, accum: usize) -> CompressionTask {
    let cfg = CompressConfig {
        objective: Objective::Kl,
        memory_tokens: 2,
        lora: LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout,
            targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
        },
        train_embeddings: TrainEmbeddings::Memory,
        checkpoint: false,
    };
    let comp = Compressor::new(model(), 1, cfg, 5).unwrap();
    CompressionTask::new(comp, corpus(), 9, batch, accum)
}

fn run_cfg(out: &Path, steps: u64, save_every: Option<u64>) -> TrainConfig {
    let schedule = Schedule {
        lr: 1e-2,
        warmup_steps: 2,
        warmup_init_lr: 1e-3,
        total_steps: 6,
        decay: Decay::Cosine,
        min_lr: 0.0,
    };
    let mut c = TrainConfig::new(out, steps, schedule);
    c.save_every = save_every;
    c.progress = false;
    c.clip = Some(2.0);
    c.seed = 9;
    c
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut whole = task(0.1, 2, 2);
    train(&mut whole, &run_cfg(&a, 6, Some(3)), None).unwrap();
    let mut first = task(0.1, 2, 2);
    train(&mut first, &run_cfg(&b, 3, Some(3)), None).unwrap();
    // A fresh process: a new task with a different init, restored from disk.
    let mut resumed = task(0.1, 2, 2);
    train(&mut resumed, &run_cfg(&b, 6, Some(3)), Some(&b)).unwrap();
    let (la, lb) = (loss_bits(&a), loss_bits(&b));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "loss curves differ");
    assert_eq!(param_bits(&mut whole), param_bits(&mut resumed));
}

/// KL weights each passage by 1/(suffix length · batch), so two micro-batches
/// of 2 scaled by 1/2 are one batch of 4 (without dropout, whose masks are
/// drawn per micro-batch).
#[test]
fn accumulation_regroups_without_changing_the_gradient() {
    let mut one = task(0.0, 4, 1);
    let mut two = task(0.0, 2, 2);
    one.zero_grads();
    two.zero_grads();
    let l1 = one.micro_step(0, 0, 1.0).unwrap().loss;
    let l2 =
        (two.micro_step(0, 0, 0.5).unwrap().loss + two.micro_step(0, 1, 0.5).unwrap().loss) / 2.0;
    assert!((l1 - l2).abs() < 1e-5 * l1.abs().max(1e-3), "{l1} vs {l2}");
    let g1: Vec<Vec<f32>> = one.params().iter().map(|p| p.grad.to_vec_f32()).collect();
    let g2: Vec<Vec<f32>> = two.params().iter().map(|p| p.grad.to_vec_f32()).collect();
    for (a, b) in g1.iter().zip(&g2) {
        let err = llm2comp_tensor::testing::rel_err(a, b);
        assert!(err < 1e-4, "gradient rel err {err}");
    }
}

#[test]
fn a_nan_loss_stops_the_run_before_any_update() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut t = task(0.0, 2, 1);
    for p in t.params() {
        if p.name.contains("extra_rows") {
            let n = p.value.numel();
            *p.value =
                llm2comp_tensor::Tensor::from_vec(vec![f32::NAN; n], p.value.shape()).unwrap();
        }
    }
    let before = param_bits(&mut t);
    let err = train(&mut t, &run_cfg(&out, 3, Some(1)), None).unwrap_err();
    match &err {
        TrainError::NonFinite {
            step,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 1);
            assert!(last_checkpoint.is_none());
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("step 1"), "{err}");
    assert_eq!(
        before,
        param_bits(&mut t),
        "a NaN step must not update parameters"
    );
}
