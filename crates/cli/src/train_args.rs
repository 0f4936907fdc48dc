//! The training flags every stage shares (`pretrain`, `contrast`), flattened
//! into each command, and the one way they become a `llm2comp-train` run.
//!
//! The optimiser settings differ by stage in the paper (METHOD.md: stage 1
//! lr 1e-4 / wd 1e-5 / clip 2.0, stage 2 lr 3e-5 / wd 1e-3 / clip 1.0, stage
//! 3 lr 1e-4 / wd 3e-4), so those flags are optional here and each command
//! supplies its stage's defaults ([`StageDefaults`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use llm2comp_backbone::{Tokenizer, Transformer, model};
use llm2comp_tensor::Device;
use llm2comp_tensor::ops::adamw::AdamWConfig;
use llm2comp_train::{Decay, Schedule, Task, TrainConfig, TrainError, TrainSummary, train};

/// Optimiser and schedule defaults of one stage.
#[derive(Debug, Clone, Copy)]
pub struct StageDefaults {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global-norm clip (0: none).
    pub clip: f64,
}

/// Flags of a training run, shared by every stage.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Output directory: adapters, checkpoints/, metrics.jsonl, loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this output directory (or from this checkpoint directory).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Optimiser steps (default: one epoch, or --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the data (default 1).
    #[arg(long, value_parser = parse_epochs)]
    pub epochs: Option<f64>,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (default: the stage's, as in the paper).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps, linear from --warmup-init-lr to --lr (default: the stage's).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Learning rate at the start of warm-up.
    #[arg(long, default_value_t = 1e-5)]
    pub warmup_init_lr: f64,
    /// Learning rate after warm-up: constant (the paper's), or a linear or
    /// cosine decay to 0 at --schedule-steps.
    #[arg(long, default_value = "constant")]
    pub decay: Decay,
    /// Step at which a decay reaches 0 (default: --steps). Set it when a run
    /// will be extended with --resume, so the schedule does not change.
    #[arg(long)]
    pub schedule_steps: Option<u64>,
    /// AdamW weight decay (default: the stage's).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this, 0 for none (default: the stage's).
    #[arg(long)]
    pub clip: Option<f64>,
    /// Save a checkpoint every N steps (always at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Checkpoints kept on disk.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Seed of everything random: initialisation, data order, splits, dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Recompute each block in backward instead of keeping activations (less memory, ~1.3x the time).
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Device: cpu, or cuda / cuda:N (frozen weights in bf16, adapters and
    /// memory rows as f32 masters with their gradients and AdamW moments on
    /// the device).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Steps between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// Most optimiser steps a run may have: `--epochs 1e30` used to saturate
/// to 2^64 steps, a run that never ends; 2^32 is far past any real one.
const MAX_STEPS: u64 = 1 << 32;

/// `--epochs`: a finite number > 0 (clap takes "NaN" and "inf" as floats).
fn parse_epochs(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(e) if e.is_finite() && e > 0.0 => Ok(e),
        Ok(e) => Err(format!("{e} passes: give a finite number > 0")),
        Err(e) => Err(e.to_string()),
    }
}

/// The base model a training stage starts from: its tokenizer, its weights
/// and its BOS id (the tokenizer's, else config.json's).
pub fn load_base(path: &Path) -> Result<(Tokenizer, Transformer, u32)> {
    let source =
        model::ModelSource::open(path).with_context(|| format!("opening {}", path.display()))?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let transformer = source
        .transformer()
        .with_context(|| format!("loading {}", path.display()))?;
    let bos = tokenizer
        .bos_id()
        .or(transformer.config().bos_token_id)
        .context("the model has no BOS token (neither the tokenizer nor config.json names one)")?;
    Ok((tokenizer, transformer, bos))
}

/// The run directory of `--resume PATH`: PATH itself, or the run holding
/// PATH when PATH is one of its checkpoints (`OUT/checkpoints/step-N`).
pub fn run_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == "checkpoints") => {
            p.parent().map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        _ => path.to_path_buf(),
    }
}

impl TrainArgs {
    /// The output directory (`--out`, or the run `--resume` names), after
    /// checking the flags that need no data: the device (a CUDA device must
    /// be present), the accumulation.
    pub fn out_dir(&self) -> Result<PathBuf> {
        let out = match (&self.out, &self.resume) {
            (Some(o), _) => o.clone(),
            (None, Some(r)) => run_dir(r),
            (None, None) => bail!("--out DIR is required (or --resume DIR to continue a run)"),
        };
        let device = self.device()?;
        // Before reading any data: a missing driver or device is the first thing to say.
        device
            .check()
            .with_context(|| format!("--device {device}"))?;
        if self.grad_accum == 0 {
            bail!("--grad-accum must be at least 1");
        }
        Ok(out)
    }

    /// The `--device` flag, parsed.
    pub fn device(&self) -> Result<Device> {
        Ok(Device::parse(&self.device)?)
    }

    /// Steps of the run: --steps, or --epochs (default 1) of
    /// `steps_for_epochs(e)` (which may saturate: refused here).
    pub fn steps(&self, steps_for_epochs: impl FnOnce(f64) -> u64) -> Result<u64> {
        let steps = match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, e) => steps_for_epochs(e.unwrap_or(1.0)),
        };
        if steps > MAX_STEPS {
            match self.epochs {
                // `steps` may have saturated at u64::MAX: say "more than".
                Some(e) if self.steps.is_none() => bail!(
                    "--epochs {e} would run more than {MAX_STEPS} optimiser steps; use fewer \
                     epochs or --steps"
                ),
                _ => bail!("--steps {steps} is more than {MAX_STEPS}"),
            }
        }
        Ok(steps)
    }

    /// The peak learning rate, this stage's default unless given.
    pub fn lr(&self, d: &StageDefaults) -> f64 {
        self.lr.unwrap_or(d.lr)
    }

    /// The trainer's configuration for `steps` steps into `out`.
    pub fn config(&self, out: &Path, steps: u64, d: &StageDefaults) -> TrainConfig {
        let warmup = self.warmup.unwrap_or(d.warmup);
        let lr = self.lr(d);
        if warmup >= steps && warmup > 0 {
            eprintln!(
                "note: --warmup {warmup} >= {steps} steps: the learning rate never reaches --lr \
                 {lr} (pass a smaller --warmup)"
            );
        }
        let schedule = Schedule {
            lr,
            warmup_steps: warmup,
            warmup_init_lr: self.warmup_init_lr,
            total_steps: self.schedule_steps.unwrap_or(steps),
            decay: self.decay,
            min_lr: 0.0,
        };
        let clip = self.clip.unwrap_or(d.clip);
        let mut tc = TrainConfig::new(out, steps, schedule);
        tc.grad_accum = self.grad_accum;
        tc.clip = (clip > 0.0).then_some(clip);
        tc.adamw = AdamWConfig {
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            ..AdamWConfig::default()
        };
        tc.save_every = self.save_every;
        tc.keep_checkpoints = self.keep_checkpoints;
        tc.seed = self.seed;
        tc.log_every = self.log_every;
        tc.progress = !self.quiet;
        tc
    }

    /// Runs `task` under `tc`, resuming when asked, and reports the outcome.
    pub fn run<T: Task>(&self, task: &mut T, tc: &TrainConfig) -> Result<TrainSummary> {
        let summary = match train(task, tc, self.resume.as_deref()) {
            Ok(s) => s,
            Err(e @ TrainError::NonFinite { .. }) => bail!(
                "{e}\nLower --lr or raise --warmup, then rerun with --resume from that checkpoint"
            ),
            Err(e) => return Err(e.into()),
        };
        eprintln!(
            "done: {} steps ({} this run) in {:.1} s, {:.3} steps/s, {:.0} tokens/s, final loss \
             {:.4}, peak RSS {}; adapters in {}",
            summary.steps,
            summary.steps_run,
            summary.elapsed.as_secs_f64(),
            summary.steps_per_s,
            summary.tokens_per_s,
            summary.final_loss,
            crate::rss::peak_rss_text(),
            tc.out_dir.display()
        );
        Ok(summary)
    }
}
