//! The training loop every llm2comp trainer shares, driving a [`Task`].
//!
//! Exact resume is the design constraint: the loop keeps no state that is not
//! in a checkpoint (parameters, AdamW moments and t, the step, the task's own
//! state), the schedule is a function of the step, and the task derives all
//! data and randomness from (seed, step, micro-batch). So a run stopped at a
//! checkpoint and resumed computes bit for bit what the uninterrupted run
//! would have. A non-finite loss or gradient norm stops the run before the
//! optimiser touches the parameters, naming the last good checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llm2comp_backbone::Param;
use llm2comp_tensor::Tensor;
use llm2comp_tensor::ops::adamw::AdamWConfig;
use llm2comp_tensor::ops::grad_clip::{clip_grad_norm, global_norm};
use serde_json::{Map, Value, json};

use crate::checkpoint::{self, FORMAT_VERSION, PendingCheckpoint, TrainerState};
use crate::metrics::{MetricsWriter, StepMetrics};
use crate::progress::Progress;
use crate::resume_check;
use crate::run_dir::{self, RunLock};
use crate::svg::write_loss_svg;
use crate::{Optimizer, Result, Schedule, TrainError};

/// File name of the loss plot in the output directory.
pub const LOSS_SVG: &str = "loss.svg";

/// Config keys a resumed run may change (matched on the last component of a dotted key, in the
/// trainer's and the task's config alike): how long to train and how to save and report.
pub const FREE_CONFIG_KEYS: &[&str] = &[
    "steps",
    "total_steps",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "progress",
    "out_dir",
];

/// What one micro-batch reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MicroStats {
    /// The micro-batch's loss (before scaling by `grad_scale`).
    pub loss: f64,
    /// Tokens it processed.
    pub tokens: u64,
    /// Extra metrics: numbers are averaged over the step's micro-batches (like the loss),
    /// other values keep the last micro-batch's.
    pub extra: Map<String, Value>,
}

/// A model plus its data and loss, as the trainer drives it.
pub trait Task {
    /// Forward + backward of micro-batch `micro` (0..grad_accum) of optimizer step `step` (0-based),
    /// ADDING gradients scaled by `grad_scale` (= 1/grad_accum) into the param grad buffers.
    /// Must derive all randomness and the data it reads from (seed, step, micro) so resume is exact.
    fn micro_step(&mut self, step: u64, micro: usize, grad_scale: f32) -> Result<MicroStats>;
    /// The trainable parameters with their gradient buffers (f32, unique names).
    fn params(&mut self) -> Vec<Param<'_>>;
    /// Sets every gradient buffer to zero.
    fn zero_grads(&mut self);
    /// Settings stored in checkpoints; a resume refuses a different one (except [`FREE_CONFIG_KEYS`]).
    fn config(&self) -> Value;
    /// The task's own resumable state (data position, ...).
    fn task_state(&self) -> Value {
        Value::Null
    }
    /// Restores what [`Task::task_state`] returned.
    fn restore_task_state(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
    /// Called after each checkpoint and at the end with a directory to write user-facing outputs
    /// (adapters) into: the checkpoint's (before it is published) and then the output directory.
    fn export(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Output directory: checkpoints/, metrics.jsonl, loss.svg, the task's exports.
    pub out_dir: PathBuf,
    /// Optimiser steps to complete (in total, counting resumed ones).
    pub steps: u64,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Global gradient-norm clip, if any.
    pub clip: Option<f64>,
    /// AdamW settings; `lr` is ignored (the schedule gives it).
    pub adamw: AdamWConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Save a checkpoint every this many steps (and always at the end).
    pub save_every: Option<u64>,
    /// Checkpoints kept on disk (≥ 1).
    pub keep_checkpoints: usize,
    /// The run's seed (stored; the task derives its randomness from it).
    pub seed: u64,
    /// Steps between plain progress lines when stderr is not a terminal.
    pub log_every: u64,
    /// Show progress (bar or lines); false is quiet.
    pub progress: bool,
}

impl TrainConfig {
    /// A run of `steps` steps with defaults: no accumulation, clip 1.0, PyTorch AdamW, a
    /// checkpoint only at the end, keep 2, seed 0, a line every 10 steps.
    pub fn new(out_dir: impl Into<PathBuf>, steps: u64, schedule: Schedule) -> Self {
        Self {
            out_dir: out_dir.into(),
            steps,
            grad_accum: 1,
            clip: Some(1.0),
            adamw: AdamWConfig::default(),
            schedule,
            save_every: None,
            keep_checkpoints: 2,
            seed: 0,
            log_every: 10,
            progress: true,
        }
    }

    /// Errors on settings out of range, naming them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("steps must be >= 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum must be >= 1".into());
        }
        if let Some(c) = self.clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("clip must be finite and > 0, got {c}"));
        }
        if self.save_every == Some(0) {
            return bad("save_every must be >= 1 (leave it unset to save only at the end)".into());
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be >= 1 (resume needs one)".into());
        }
        if self.log_every == 0 {
            return bad("log_every must be >= 1".into());
        }
        self.schedule.validate()?;
        AdamWConfig {
            lr: self.schedule.lr,
            ..self.adamw
        }
        .validate()
        .map_err(|e| TrainError::Config(e.to_string()))
    }

    /// The trainer's part of the stored config (the task adds its own under "task").
    fn as_json(&self) -> Value {
        json!({
            "steps": self.steps,
            "grad_accum": self.grad_accum,
            "clip": self.clip,
            "adamw": {
                "beta1": self.adamw.beta1,
                "beta2": self.adamw.beta2,
                "eps": self.adamw.eps,
                "weight_decay": self.adamw.weight_decay,
            },
            "schedule": self.schedule,
            "seed": self.seed,
            "save_every": self.save_every,
            "keep_checkpoints": self.keep_checkpoints,
        })
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Steps completed in total (resumed ones included).
    pub steps: u64,
    /// Steps run by this call.
    pub steps_run: u64,
    /// Loss of the last step (from metrics.jsonl when this call ran none; NaN if unknown).
    pub final_loss: f64,
    /// Tokens processed by this call.
    pub tokens: u64,
    /// Wall-clock time of this call.
    pub elapsed: Duration,
    /// tokens / elapsed.
    pub tokens_per_s: f64,
    /// steps_run / elapsed.
    pub steps_per_s: f64,
    /// The newest checkpoint (the final one).
    pub last_checkpoint: Option<PathBuf>,
}

/// Where a run starts.
struct Start {
    step: u64,
    optimizer: Optimizer,
    metrics: MetricsWriter,
    losses: Vec<(u64, f64)>,
    elapsed_before: f64,
    last_checkpoint: Option<PathBuf>,
}

fn stored_config<T: Task>(task: &T, cfg: &TrainConfig) -> Value {
    json!({ "train": cfg.as_json(), "task": task.config() })
}

fn fresh_start(cfg: &TrainConfig) -> Result<Start> {
    run_dir::check_fresh(&cfg.out_dir)?;
    Ok(Start {
        step: 0,
        optimizer: Optimizer::new(cfg.adamw),
        metrics: MetricsWriter::create(&cfg.out_dir)?,
        losses: Vec::new(),
        elapsed_before: 0.0,
        last_checkpoint: None,
    })
}

fn resume_start<T: Task>(task: &mut T, cfg: &TrainConfig, from: &Path) -> Result<Start> {
    let dir = checkpoint::resolve(from)?;
    let ck = checkpoint::load(&dir)?;
    resume_check::check_step(&dir, &ck.state)?;
    let json_path = dir.join(checkpoint::TRAINER_FILE);
    let st_path = dir.join(checkpoint::STATE_FILE);
    let diffs = checkpoint::config_diff(
        &ck.state.config,
        &stored_config(task, cfg),
        FREE_CONFIG_KEYS,
    );
    if !diffs.is_empty() {
        return Err(TrainError::ConfigMismatch {
            path: json_path,
            diffs,
        });
    }
    if ck.state.step > cfg.steps {
        return Err(TrainError::Config(format!(
            "the checkpoint {} is after step {}, beyond the {} steps asked for",
            dir.display(),
            ck.state.step,
            cfg.steps
        )));
    }
    let mut tensors = ck.tensors;
    // Parameters first, by exact name; what remains must be optimiser state.
    let mut shapes = std::collections::BTreeMap::new();
    for p in task.params() {
        let t = tensors.remove(&p.name).ok_or_else(|| {
            TrainError::checkpoint(&st_path, format!("no tensor for parameter `{}`", p.name))
        })?;
        if t.shape() != p.value.shape() {
            return Err(TrainError::checkpoint(
                &st_path,
                format!(
                    "tensor `{}` has shape {:?}, the task's parameter {:?}",
                    p.name,
                    t.shape(),
                    p.value.shape()
                ),
            ));
        }
        *p.value = t.to_device(p.value.device())?;
        shapes.insert(p.name, p.value.shape().to_vec());
    }
    let is_moment = |n: &str| n.starts_with("m.") || n.starts_with("v.");
    let extras: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !is_moment(n))
        .collect();
    if !extras.is_empty() {
        return Err(TrainError::checkpoint(
            &st_path,
            format!(
                "holds `{}`, which the task does not have as parameters \
                 (was it written with other trainable parameters?)",
                extras.join("`, `")
            ),
        ));
    }
    for (name, t) in &tensors {
        match shapes.get(&name[2..]) {
            Some(shape) if shape.as_slice() == t.shape() => {}
            Some(shape) => {
                return Err(TrainError::checkpoint(
                    &st_path,
                    format!(
                        "optimizer state `{name}` has shape {:?}, the parameter {shape:?}",
                        t.shape()
                    ),
                ));
            }
            None => {
                return Err(TrainError::checkpoint(
                    &st_path,
                    format!("optimizer state `{name}` belongs to no parameter of the task"),
                ));
            }
        }
    }
    resume_check::check_moments(&st_path, ck.state.step, shapes.keys(), &tensors)?;
    let mut optimizer = Optimizer::new(cfg.adamw);
    optimizer
        .load_state(ck.state.optimizer_t, tensors)
        .map_err(|e| TrainError::checkpoint(&st_path, e.to_string()))?;
    task.restore_task_state(&ck.state.task_state)?;
    let (metrics, losses) = MetricsWriter::resume(&cfg.out_dir, ck.state.step)?;
    Ok(Start {
        step: ck.state.step,
        optimizer,
        metrics,
        losses,
        elapsed_before: ck.state.elapsed_s,
        last_checkpoint: Some(dir),
    })
}

/// Merges micro-batch extras: a key whose values are all numbers gets their mean, any other
/// key the last micro-batch's value.
#[derive(Default)]
struct ExtraAcc {
    numbers: std::collections::BTreeMap<String, (f64, u32)>,
    others: Map<String, Value>,
}

impl ExtraAcc {
    fn add(&mut self, extra: Map<String, Value>) {
        for (k, v) in extra {
            match v.as_f64() {
                Some(x) if !self.others.contains_key(&k) => {
                    let e = self.numbers.entry(k).or_insert((0.0, 0));
                    *e = (e.0 + x, e.1 + 1);
                }
                _ => {
                    self.numbers.remove(&k);
                    self.others.insert(k, v);
                }
            }
        }
    }

    fn finish(self) -> Map<String, Value> {
        let mut out = self.others;
        for (k, (sum, n)) in self.numbers {
            let mean = serde_json::Number::from_f64(sum / f64::from(n));
            out.insert(k, mean.map_or(Value::Null, Value::Number));
        }
        out
    }
}

fn save_checkpoint<T: Task>(
    task: &mut T,
    cfg: &TrainConfig,
    optimizer: &Optimizer,
    step: u64,
    metrics_lines: u64,
    elapsed_s: f64,
) -> Result<PathBuf> {
    let pending = PendingCheckpoint::begin(&cfg.out_dir, step)?;
    {
        let params = task.params();
        let mut tensors: Vec<(String, &Tensor)> =
            params.iter().map(|p| (p.name.clone(), &*p.value)).collect();
        tensors.extend(optimizer.state_tensors());
        pending.write_tensors(&tensors)?;
    }
    pending.write_state(&TrainerState {
        format_version: FORMAT_VERSION,
        step,
        optimizer_t: optimizer.t(),
        seed: cfg.seed,
        schedule: cfg.schedule,
        config: stored_config(task, cfg),
        task_state: task.task_state(),
        metrics_lines,
        elapsed_s,
    })?;
    task.export(pending.dir())?;
    pending.commit(cfg.keep_checkpoints)
}

/// Trains `task` for `cfg.steps` steps, from scratch or from the checkpoint `resume` names
/// (a run's output directory or a checkpoint directory).
pub fn train<T: Task>(
    task: &mut T,
    cfg: &TrainConfig,
    resume: Option<&Path>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let t_start = Instant::now();
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::io("create", &cfg.out_dir, e))?;
    // Held until this function returns; the OS drops it if the process dies.
    let _lock = RunLock::acquire(&cfg.out_dir)?;
    let restarted = match resume {
        None => run_dir::leftovers(&cfg.out_dir),
        Some(_) => Vec::new(),
    };
    let Start {
        step: first,
        mut optimizer,
        mut metrics,
        mut losses,
        elapsed_before,
        mut last_checkpoint,
    } = match resume {
        None => fresh_start(cfg)?,
        Some(from) => resume_start(task, cfg, from)?,
    };
    let mut progress = Progress::new(cfg.steps, first, cfg.progress, cfg.log_every);
    if let Some(dir) = &last_checkpoint {
        progress.println(&format!("resumed from {} (step {first})", dir.display()));
    }
    if !restarted.is_empty() {
        let names: Vec<String> = restarted.iter().map(|p| p.display().to_string()).collect();
        progress.println(&format!(
            "starting over: {} holds no checkpoint (a run stopped before its first one); \
             replacing {}",
            cfg.out_dir.display(),
            names.join(", ")
        ));
    }
    let svg_path = cfg.out_dir.join(LOSS_SVG);
    let title = format!("training loss ({})", cfg.out_dir.display());
    let scale = 1.0 / cfg.grad_accum as f32;
    let mut tokens_run = 0u64;

    for step in first..cfg.steps {
        let n = step + 1;
        let t0 = Instant::now();
        task.zero_grads();
        let (mut loss_sum, mut tokens) = (0.0, 0u64);
        let mut extra = ExtraAcc::default();
        for micro in 0..cfg.grad_accum {
            let s = task.micro_step(step, micro, scale)?;
            loss_sum += s.loss;
            tokens += s.tokens;
            extra.add(s.extra);
        }
        let loss = loss_sum / cfg.grad_accum as f64;
        let non_finite = |what: String| TrainError::NonFinite {
            step: n,
            what,
            last_checkpoint: last_checkpoint.clone(),
        };
        if !loss.is_finite() {
            progress.finish();
            return Err(non_finite(format!("loss ({loss})")));
        }
        // Measured separately from the clip so the norm is recorded (and checked) with or
        // without clipping; the clip's second pass over the gradients is cheap next to backward.
        let grad_norm = {
            let params = task.params();
            let grads: Vec<&Tensor> = params.iter().map(|p| &*p.grad).collect();
            global_norm(&grads)?
        };
        if !grad_norm.is_finite() {
            progress.finish();
            return Err(non_finite(format!("gradient norm ({grad_norm})")));
        }
        let lr = cfg.schedule.lr_at(step);
        {
            let mut params = task.params();
            if let Some(max) = cfg.clip {
                let mut grads: Vec<&mut Tensor> = params.iter_mut().map(|p| &mut *p.grad).collect();
                clip_grad_norm(&mut grads, max)?;
            }
            optimizer.step(&mut params, lr)?;
        }
        let step_s = t0.elapsed().as_secs_f64();
        let elapsed_s = elapsed_before + t_start.elapsed().as_secs_f64();
        let tokens_per_s = if step_s > 0.0 {
            tokens as f64 / step_s
        } else {
            0.0
        };
        tokens_run += tokens;
        metrics.append(&StepMetrics {
            step: n,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s,
            elapsed_s,
            extra: extra.finish(),
        })?;
        losses.push((n, loss));
        progress.update(n, loss, lr, tokens_per_s);

        let due = cfg.save_every.is_some_and(|k| n.is_multiple_of(k));
        if due || n == cfg.steps {
            let dir = save_checkpoint(task, cfg, &optimizer, n, metrics.lines(), elapsed_s)?;
            write_loss_svg(&svg_path, &losses, &title, Some(0.9))?;
            last_checkpoint = Some(dir);
        }
    }
    progress.finish();
    if first == cfg.steps {
        // Resumed at its last step: nothing was saved, so refresh the plot here.
        write_loss_svg(&svg_path, &losses, &title, Some(0.9))?;
    }
    task.export(&cfg.out_dir)?;

    let elapsed = t_start.elapsed();
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let steps_run = cfg.steps - first;
    Ok(TrainSummary {
        steps: cfg.steps,
        steps_run,
        final_loss: losses.last().map_or(f64::NAN, |l| l.1),
        tokens: tokens_run,
        elapsed,
        tokens_per_s: tokens_run as f64 / secs,
        steps_per_s: steps_run as f64 / secs,
        last_checkpoint,
    })
}
