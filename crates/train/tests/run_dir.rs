//! Who may train into an output directory: a directory of other files is
//! refused, a directory another run holds is refused naming its pid, a
//! stale lock file is no obstacle, and a run stopped before its first
//! checkpoint starts over (it has nothing to resume).

use std::fs;
use std::path::Path;

use llm2comp_tensor::{DType, Device, Tensor};
use llm2comp_train::run_dir::{LOCK_FILE, RunLock};
use llm2comp_train::{MicroStats, Param, Schedule, Task, TrainConfig, TrainError, train};
use serde_json::{Value, json};

/// Minimises (w - 1)^2 for a 2-vector w.
struct Quad {
    w: Tensor,
    g: Tensor,
}

impl Quad {
    fn new() -> Self {
        Self {
            w: Tensor::zeros(&[2], DType::F32, Device::Cpu),
            g: Tensor::zeros(&[2], DType::F32, Device::Cpu),
        }
    }
}

impl Task for Quad {
    fn micro_step(&mut self, _: u64, _: usize, scale: f32) -> Result<MicroStats, TrainError> {
        let w = self.w.to_vec_f32();
        let g: Vec<f32> = w.iter().map(|x| 2.0 * (x - 1.0) * scale).collect();
        self.g = Tensor::from_vec(g, &[2])?;
        let loss = w.iter().map(|x| f64::from((x - 1.0) * (x - 1.0))).sum();
        Ok(MicroStats {
            loss,
            tokens: 1,
            ..Default::default()
        })
    }
    fn params(&mut self) -> Vec<Param<'_>> {
        vec![Param {
            name: "w".into(),
            value: &mut self.w,
            grad: &mut self.g,
        }]
    }
    fn zero_grads(&mut self) {
        self.g = Tensor::zeros(&[2], DType::F32, Device::Cpu);
    }
    fn config(&self) -> Value {
        json!({ "quad": 2 })
    }
}

fn cfg(out: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        progress: false,
        ..TrainConfig::new(out, steps, Schedule::constant(0.1, steps))
    }
}

fn lines(out: &Path) -> usize {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_directory_of_other_files_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mine");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("notes.txt"), "keep").unwrap();
    let err = train(&mut Quad::new(), &cfg(&out, 2), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "{} is not empty and is not an llm2comp training run (it holds notes.txt)",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "keep");
    assert!(!out.join("metrics.jsonl").exists());
}

#[test]
fn a_locked_directory_is_refused_naming_the_holder_and_a_stale_lock_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    fs::create_dir(&out).unwrap();
    // flock locks belong to the open file, so a second open in this process conflicts as a
    // second process would.
    let held = RunLock::acquire(&out).unwrap();
    let err = train(&mut Quad::new(), &cfg(&out, 2), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "{} is in use by another training run (pid {})",
            out.display(),
            std::process::id()
        )),
        "{err}"
    );
    assert!(!out.join("metrics.jsonl").exists());
    drop(held);
    // The lock file stays with a pid in it, but nobody holds it: a dead run's stale lock.
    assert!(out.join(LOCK_FILE).is_file());
    train(&mut Quad::new(), &cfg(&out, 2), None).unwrap();
    assert_eq!(lines(&out), 2);
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // What a run killed at step 3 of 10 leaves: metrics lines, a half-built checkpoint, a
    // lock file naming a dead pid.
    fs::create_dir_all(out.join("checkpoints/.tmp-step-00000010-4242")).unwrap();
    fs::write(
        out.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.0}\n{\"step\":2,",
    )
    .unwrap();
    fs::write(out.join(LOCK_FILE), "4242\n").unwrap();

    // Nothing to resume: --resume says so and points at a fresh start.
    let err = train(&mut Quad::new(), &cfg(&out, 2), Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("it holds no checkpoint yet")
            && err.contains("run the same command without --resume to start over"),
        "{err}"
    );
    // A fresh start replaces the run's leftovers.
    let s = train(&mut Quad::new(), &cfg(&out, 2), None).unwrap();
    assert_eq!((s.steps, s.steps_run), (2, 2));
    assert_eq!(lines(&out), 2);
    let ck: Vec<String> = fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!ck.iter().any(|n| n.starts_with(".tmp")), "{ck:?}");
    // Now it has a checkpoint: a second fresh start is refused as before.
    let err = train(&mut Quad::new(), &cfg(&out, 2), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a training run"), "{err}");
}
