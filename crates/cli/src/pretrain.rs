//! `llm2comp pretrain`: the compression pretext task (METHOD.md, stage 1)
//! on a base model and a text corpus, with the paper's settings as defaults.
//!
//! Everything a resume needs is in the output directory's checkpoints; a
//! resumed run is started by repeating the command with `--resume OUT`
//! (the trainer refuses changed settings, listing them, except the step
//! count and saving/logging options).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use llm2comp_backbone::{LoraConfig, LoraTarget};
use llm2comp_compress::{
    CompressConfig, CompressionTask, Compressor, Corpus, DataOptions, Objective, TrainEmbeddings,
};
use llm2comp_tensor::DType;
use serde_json::json;

use crate::texts::{self, InputFormat};
use crate::train_args::{StageDefaults, TrainArgs};

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
    /// Pretext objective: rc (reconstruction), nll (continuation), kl (distilled
    /// continuation), mntp (LLM2Vec's masked next-token prediction, the baseline), or
    /// none (write the untrained initial adapter: the no-pretext control).
    #[arg(long, default_value = "kl")]
    pub objective: Pretext,
    /// Memory tokens k appended after the text [default: 8; mntp has none].
    #[arg(long)]
    pub memory_tokens: Option<usize>,
    /// mntp: share of text tokens chosen for prediction (LLM2Vec's for Llama).
    #[arg(long, default_value_t = llm2comp_compress::mntp::MNTP_MASK_RATE)]
    pub mask_rate: f32,
    /// mntp: the token that replaces a chosen one (LLM2Vec's "blank" mask for
    /// tokenizers without a mask token).
    #[arg(long, default_value = "_")]
    pub mask_token: String,
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
    /// Passages per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Longest encoder input in tokens (BOS + text + memory tokens); longer texts are cut.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Drop passages shorter than this many characters (the paper uses 1000).
    #[arg(long, default_value_t = 0)]
    pub min_chars: usize,
    /// Drop passages longer than this many tokens (the paper uses 512).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Write every micro-batch's passages (token ids, split) to this JSONL
    /// file, e.g. to replay the same batches in another implementation.
    #[arg(long)]
    pub dump_batches: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// A stage-1 objective: one of the compression pretexts, or the MNTP baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pretext {
    /// rc, nll or kl.
    Compress(Objective),
    /// LLM2Vec's masked next-token prediction.
    Mntp,
    /// No pretext: the freshly initialised adapter (LoRA with B = 0, memory
    /// rows as stage 1 initialises them), written without training: the
    /// "no pretext" control's start for stages 2 and 3.
    None,
}

impl std::str::FromStr for Pretext {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("mntp") {
            return Ok(Self::Mntp);
        }
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::None);
        }
        s.parse::<Objective>()
            .map(Self::Compress)
            .map_err(|_| format!("unknown objective {s:?}: expected rc, nll, kl, mntp or none"))
    }
}

impl std::fmt::Display for Pretext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Compress(o) => o.fmt(f),
            Self::Mntp => f.write_str("mntp"),
            Self::None => f.write_str("none"),
        }
    }
}

/// Stage 1's optimiser settings (METHOD.md).
pub const DEFAULTS: StageDefaults = StageDefaults {
    lr: 1e-4,
    warmup: 10,
    weight_decay: 1e-5,
    clip: 2.0,
};

/// The adapters `args` ask for, validated.
pub fn lora_config(args: &Args) -> Result<LoraConfig> {
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        targets: lora_targets(&args.lora_targets)?,
    };
    lora.validate()?;
    Ok(lora)
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

/// Runs the command.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    let objective = match args.objective {
        Pretext::Compress(o) => o,
        Pretext::Mntp => return crate::pretrain_mntp::run(args, threads),
        Pretext::None => return write_untrained(args),
    };
    let memory_tokens = args.memory_tokens.unwrap_or(8);
    let t = &args.train;
    let out = t.out_dir()?;
    let device = t.device()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let lora = lora_config(args)?;
    let cfg = CompressConfig {
        objective,
        memory_tokens,
        lora,
        train_embeddings: args.train_embeddings,
        checkpoint: t.checkpoint_activations,
    };

    // Passages are cut to what their tokens need in Corpus::build.
    let input = texts::read(&args.data, args.format, &args.text_field, true, None)?;
    let (tokenizer, transformer, bos) = crate::train_args::load_base(&args.model)?;
    let data_opts = DataOptions {
        min_chars: args.min_chars,
        max_tokens: args.max_tokens,
        max_length: args.max_length,
    };
    let corpus = Corpus::build(
        &args.data,
        &input.texts,
        &tokenizer,
        objective,
        memory_tokens,
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
    let mut comp = Compressor::new(transformer, bos, cfg, t.seed)?;
    if device.is_cuda() {
        // Built on the CPU in f32 (adapter init, memory rows), then moved:
        // frozen weights in bf16, the trainable tensors as f32 masters.
        comp = comp
            .to_device(device, DType::BF16)
            .with_context(|| format!("moving the compression model to {device}"))?;
    }
    let on = if device.is_cuda() {
        format!("on {device} (bf16; adapters and memory rows f32)")
    } else {
        format!("on cpu with {threads} threads")
    };
    let task = CompressionTask::new(comp, corpus, t.seed, args.batch_size, t.grad_accum)
        .with_info("base_model", json!(model_name))
        .with_info("max_length", json!(args.max_length))
        .with_info("data", json!(args.data));
    let steps = t.steps(|e| task.steps_for_epochs(e))?;
    let mut task = task.with_exporter(exporter);
    if let Some(p) = &args.dump_batches {
        task = task.with_batch_log(p)?;
    }
    let tc = t.config(&out, steps, &DEFAULTS);
    eprintln!(
        "pretrain: objective {}, k = {}, {steps} steps x {} passages x {} accumulation, lr {} \
         (warm-up {} from {}, {} decay), {on} -> {}",
        objective,
        memory_tokens,
        args.batch_size,
        t.grad_accum,
        tc.schedule.lr,
        tc.schedule.warmup_steps,
        t.warmup_init_lr,
        t.decay,
        out.display()
    );
    t.run(&mut task, &tc)?;
    Ok(())
}

/// `--objective none`: the adapter a compression run starts from (its LoRA
/// B = 0, so the model computes as the base; memory rows as stage 1
/// initialises them from --seed), saved untrained into --out. Stages 2 and 3
/// then train from it: the "no pretext" control.
fn write_untrained(args: &Args) -> Result<()> {
    let t = &args.train;
    if t.resume.is_some() {
        bail!("--objective none trains nothing, so there is nothing to resume");
    }
    let out = t.out_dir()?;
    let memory_tokens = args.memory_tokens.unwrap_or(8);
    let cfg = CompressConfig {
        objective: Objective::Rc,
        memory_tokens,
        lora: lora_config(args)?,
        train_embeddings: args.train_embeddings,
        checkpoint: false,
    };
    let (_, transformer, bos) = crate::train_args::load_base(&args.model)?;
    let comp = Compressor::new(transformer, bos, cfg.clone(), t.seed)?;
    let model_name = args.model.display().to_string();
    let mut export = crate::adapter_export::exporter_for(crate::adapter_export::Provenance {
        base_model: model_name,
        max_length: args.max_length,
        memory_tokens,
        lora: cfg.lora.clone(),
        train_embeddings: cfg.train_embeddings,
        objective: "none".into(),
        stage: "pretrain".into(),
    });
    export(comp.model(), &out)?;
    eprintln!(
        "pretrain: objective none: the untrained adapter (k = {memory_tokens}, LoRA r {} with B = \
         0, seed {}) written to {}",
        cfg.lora.r,
        t.seed,
        out.display()
    );
    Ok(())
}
