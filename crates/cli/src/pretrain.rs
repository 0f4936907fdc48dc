//! `llm2comp pretrain`: the compression pretext task (METHOD.md, stage 1)
//! on a base model and a text corpus, with the paper's settings as defaults.
//!
//! Everything a resume needs is in the output directory's checkpoints; a
//! resumed run is started by repeating the command with `--resume OUT`
//! (the trainer refuses changed settings, listing them, except the step
//! count and saving/logging options).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use llm2comp_backbone::{LoraConfig, LoraTarget, model};
use llm2comp_compress::{
    CompressConfig, CompressionTask, Compressor, Corpus, DataOptions, Objective, TrainEmbeddings,
};
use llm2comp_tensor::Device;
use llm2comp_tensor::ops::adamw::AdamWConfig;
use llm2comp_train::{Decay, Schedule, TrainConfig, TrainError, train};
use serde_json::json;

use crate::texts::{self, InputFormat};

/// Arguments of `llm2comp pretrain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Training passages: plain text (one a line) or JSONL; empty lines are skipped.
    #[arg(long)]
    pub data: String,
    /// Data layout (by default from the extension: .jsonl is JSONL).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// The JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Output directory: adapters, checkpoints/, metrics.jsonl, loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this output directory (or from this checkpoint directory).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Pretext objective: rc (reconstruction), nll (continuation) or kl (distilled continuation).
    #[arg(long, default_value = "kl")]
    pub objective: Objective,
    /// Memory tokens k appended after the text.
    #[arg(long, default_value_t = 8)]
    pub memory_tokens: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    /// LoRA alpha (the side path is scaled by alpha / r).
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f32,
    /// Dropout on the adapters' input.
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Projections that get adapters (comma-separated PEFT names).
    #[arg(
        long,
        default_value = "q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: String,
    /// Embedding rows the encoder trains: memory (the k new rows) or all.
    #[arg(long, default_value = "memory")]
    pub train_embeddings: TrainEmbeddings,
    /// Optimiser steps (default: one epoch, or --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the data (default 1).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Passages per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Warm-up steps (linear from --warmup-init-lr to --lr).
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
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
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 2.0)]
    pub clip: f64,
    /// Longest encoder input in tokens (BOS + text + memory tokens); longer texts are cut.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Drop passages shorter than this many characters (the paper uses 1000).
    #[arg(long, default_value_t = 0)]
    pub min_chars: usize,
    /// Drop passages longer than this many tokens (the paper uses 512).
    #[arg(long)]
    pub max_tokens: Option<usize>,
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
    /// Device: cpu (training on CUDA is not implemented yet).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Steps between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Write every micro-batch's passages (token ids, split) to this JSONL
    /// file, e.g. to replay the same batches in another implementation.
    #[arg(long)]
    pub dump_batches: Option<PathBuf>,
}

fn lora_targets(list: &str) -> Result<Vec<LoraTarget>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t = LoraTarget::ALL
            .into_iter()
            .find(|t| t.module_name() == name)
            .with_context(|| {
                format!(
                    "--lora-targets: unknown projection {name:?} (expected some of q_proj, \
                     k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                )
            })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        bail!("--lora-targets lists no projection");
    }
    Ok(out)
}

/// The run directory of `--resume PATH`: PATH itself, or the run holding
/// PATH when PATH is one of its checkpoints (`OUT/checkpoints/step-N`).
fn run_dir(path: &std::path::Path) -> PathBuf {
    let parent = path.parent();
    match parent {
        Some(p) if p.file_name().is_some_and(|n| n == "checkpoints") => {
            p.parent().map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        _ => path.to_path_buf(),
    }
}

/// Runs the command.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => run_dir(r),
        (None, None) => bail!("--out DIR is required (or --resume DIR to continue a run)"),
    };
    let device = Device::parse(&args.device)?;
    if device != Device::Cpu {
        bail!(
            "--device {device}: compression training runs on the CPU for now (backward through \
             the model is not on the GPU yet); CUDA serves `embed`"
        );
    }
    if args.batch_size == 0 || args.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        targets: lora_targets(&args.lora_targets)?,
    };
    lora.validate()?;
    let cfg = CompressConfig {
        objective: args.objective,
        memory_tokens: args.memory_tokens,
        lora,
        train_embeddings: args.train_embeddings,
        checkpoint: args.checkpoint_activations,
    };

    let input = texts::read(&args.data, args.format, &args.text_field, true)?;
    let tokenizer = model::load_tokenizer(&args.model)
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let transformer = model::load_transformer(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let bos = tokenizer
        .bos_id()
        .or(transformer.config().bos_token_id)
        .context("the model has no BOS token (neither the tokenizer nor config.json names one)")?;
    let data_opts = DataOptions {
        min_chars: args.min_chars,
        max_tokens: args.max_tokens,
        max_length: args.max_length,
    };
    let corpus = Corpus::build(
        &args.data,
        &input.texts,
        &tokenizer,
        args.objective,
        args.memory_tokens,
        &data_opts,
    )?;
    let st = corpus.stats();
    eprintln!(
        "data: {} passages kept of {} ({} tokens; dropped: {} empty, {} under {} chars, {} over \
         the token limit, {} too short for {}; {} cut to --max-length {})",
        st.kept,
        st.read + input.skipped_empty,
        st.tokens,
        input.skipped_empty,
        st.too_short_chars,
        args.min_chars,
        st.too_many_tokens,
        st.too_few_tokens,
        args.objective,
        st.truncated,
        args.max_length
    );

    let model_name = args.model.display().to_string();
    let exporter =
        crate::adapter_export::exporter(model_name.clone(), args.max_length, &cfg, "pretrain");
    let comp = Compressor::new(transformer, bos, cfg, args.seed)?;
    let task = CompressionTask::new(comp, corpus, args.seed, args.batch_size, args.grad_accum)
        .with_info("base_model", json!(model_name))
        .with_info("max_length", json!(args.max_length))
        .with_info("data", json!(args.data));
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, e) => task.steps_for_epochs(e.unwrap_or(1.0)),
    };
    let mut task = task.with_exporter(exporter);
    if let Some(p) = &args.dump_batches {
        task = task.with_batch_log(p)?;
    }
    let warmup = args.warmup;
    if warmup >= steps {
        eprintln!(
            "note: --warmup {warmup} >= {steps} steps: the learning rate never reaches --lr {} \
             (pass a smaller --warmup)",
            args.lr
        );
    }
    let schedule = Schedule {
        lr: args.lr,
        warmup_steps: warmup,
        warmup_init_lr: args.warmup_init_lr,
        total_steps: args.schedule_steps.unwrap_or(steps),
        decay: args.decay,
        min_lr: 0.0,
    };
    let mut tc = TrainConfig::new(&out, steps, schedule);
    tc.grad_accum = args.grad_accum;
    tc.clip = (args.clip > 0.0).then_some(args.clip);
    tc.adamw = AdamWConfig {
        weight_decay: args.weight_decay,
        ..AdamWConfig::default()
    };
    tc.save_every = args.save_every;
    tc.keep_checkpoints = args.keep_checkpoints;
    tc.seed = args.seed;
    tc.log_every = args.log_every;
    tc.progress = !args.quiet;
    eprintln!(
        "pretrain: objective {}, k = {}, {steps} steps x {} passages x {} accumulation, lr {} \
         (warm-up {warmup} from {}, {} decay), on {device} with {} threads -> {}",
        args.objective,
        args.memory_tokens,
        args.batch_size,
        args.grad_accum,
        args.lr,
        args.warmup_init_lr,
        args.decay,
        threads,
        out.display()
    );
    let summary = match train(&mut task, &tc, args.resume.as_deref()) {
        Ok(s) => s,
        Err(e @ TrainError::NonFinite { .. }) => {
            bail!(
                "{e}\nLower --lr or raise --warmup, then rerun with --resume from that checkpoint"
            )
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "done: {} steps ({} this run) in {:.1} s, {:.3} steps/s, {:.0} tokens/s, final loss {:.4}, \
         peak RSS {}; adapters in {}",
        summary.steps,
        summary.steps_run,
        summary.elapsed.as_secs_f64(),
        summary.steps_per_s,
        summary.tokens_per_s,
        summary.final_loss,
        crate::rss::peak_rss_text(),
        out.display()
    );
    Ok(())
}
