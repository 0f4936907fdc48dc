//! The contrastive task under the real trainer on a tiny random model: a
//! resumed run equals an uninterrupted one bit for bit, in both modes.

use std::path::Path;

use llm2comp_train::testing::{loss_bits, param_bits};
use llm2comp_train::{Decay, Schedule, TrainConfig, train};

use super::*;
use crate::ContrastConfig;
use crate::encoder::tests::staged_model;

fn data(sup: bool) -> ContrastData {
    let seq = |i: usize, s: usize| -> Vec<u32> {
        (0..3 + (i + s) % 4)
            .map(|j| (2 + (i * 11 + j * 7 + s * 3) % 48) as u32)
            .collect()
    };
    if sup {
        ContrastData::Supervised(
            (0..5)
                .map(|i| Triple {
                    query: seq(i, 0),
                    positive: seq(i, 1),
                    negatives: vec![seq(i, 2)],
                })
                .collect(),
        )
    } else {
        ContrastData::Unsupervised((0..5).map(|i| seq(i, 0)).collect())
    }
}

fn task(sup: bool) -> ContrastTask {
    let mut cfg = ContrastConfig::simcse();
    cfg.temperature = 0.1;
    cfg.mini_batch = Some(3);
    let enc = Encoder::new(staged_model(3, 0.1), 1, cfg).unwrap();
    ContrastTask::new(enc, data(sup), 9, 2, 2)
}

fn run_cfg(out: &Path, steps: u64) -> TrainConfig {
    let schedule = Schedule {
        lr: 1e-2,
        warmup_steps: 1,
        warmup_init_lr: 1e-3,
        total_steps: 4,
        decay: Decay::Cosine,
        min_lr: 0.0,
    };
    let mut c = TrainConfig::new(out, steps, schedule);
    c.save_every = Some(2);
    c.progress = false;
    c.seed = 9;
    c
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    for sup in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut whole = task(sup);
        train(&mut whole, &run_cfg(&a, 4), None).unwrap();
        let mut first = task(sup);
        train(&mut first, &run_cfg(&b, 2), None).unwrap();
        let mut resumed = task(sup);
        train(&mut resumed, &run_cfg(&b, 4), Some(&b)).unwrap();
        let (la, lb) = (loss_bits(&a), loss_bits(&b));
        assert_eq!(la.len(), 4);
        assert_eq!(la, lb, "sup={sup}: loss curves differ");
        assert_eq!(
            param_bits(&mut whole),
            param_bits(&mut resumed),
            "sup={sup}"
        );
        assert_ne!(
            param_bits(&mut whole),
            param_bits(&mut task(sup)),
            "training changed nothing"
        );
    }
}

#[test]
fn batches_are_pure_functions_of_the_step() {
    let t = task(false);
    assert_eq!(t.batch(3, 1).unwrap(), t.batch(3, 1).unwrap());
    assert_ne!(t.batch(3, 1).unwrap(), t.batch(3, 0).unwrap());
    let s = task(true).batch(0, 0).unwrap();
    assert_eq!(s.pairing.keys.len(), 4, "2 positives and 2 negatives");
}
