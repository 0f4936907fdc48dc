//! `llm2comp contrast`: a contrastive stage (METHOD.md stages 2 and 3) on
//! top of the previous stage's adapter.
//!
//! The previous stage's LoRA is merged into the base weights in memory and a
//! fresh LoRA of the same rank is trained with the memory rows
//! (`llm2comp_contrast::chain_stage`). The output directory's adapter stacks
//! the two (rank r₁ + r₂ over the original base), so it is used alone, like
//! any other: `embed --adapter`, `eval --adapter`, `merge`, PEFT, or the
//! `--adapter` of the next stage.
//!
//! With `--device cuda` the chained model is built on the CPU in f32 (the
//! merge is exact there), then moved as stage 1's is: frozen weights in
//! bf16, the fresh adapters and the memory rows as f32 masters.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use llm2comp_backbone::TrainEmbeddings;
use llm2comp_compress::Exporter;
use llm2comp_contrast::data::{parse_triples_bytes, tokenize_triples};
use llm2comp_contrast::{ContrastConfig, ContrastData, ContrastTask, Encoder, chain_stage};
use llm2comp_tensor::DType;
use llm2comp_train::TrainError;
use serde_json::json;

use crate::texts::{self, InputFormat};
use crate::train_args::{StageDefaults, TrainArgs};

/// Which contrastive stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Stage 2, SimCSE: each passage twice under different dropout masks,
    /// the batch's other passages as negatives.
    Unsup,
    /// Stage 3: JSONL {"query", "positive", "negative"} triples, each query
    /// scored against every positive and negative of the batch.
    Sup,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Unsup => "unsup",
            Self::Sup => "sup",
        }
    }
}

/// Arguments of `llm2comp contrast`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model the previous stage was trained on (HF directory or .gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// The previous stage's adapter directory (a `pretrain` or `contrast` output).
    #[arg(long)]
    pub adapter: PathBuf,
    /// unsup (SimCSE on passages) or sup (query/positive/negative triples).
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Training data: passages (plain text, one a line, or JSONL) for
    /// unsup; JSONL triples for sup.
    #[arg(long)]
    pub data: String,
    /// Layout of unsup passages (by default from the extension).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// The JSONL field holding an unsup passage.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Task instruction prefixed to sup queries as `instruction: query`.
    #[arg(long)]
    pub instruction: Option<String>,
    /// Examples per micro-batch: passages (unsup) or triples (sup); the
    /// contrastive batch whose members are each other's negatives.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// GradCache mini-batch: texts run with activations at once (memory
    /// bound); the gradient is still the whole batch's. At least the batch's
    /// texts (2 per passage unsup, 2-3 per triple sup): one pass, no GradCache.
    #[arg(long, default_value_t = 32)]
    pub mini_batch: usize,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f32,
    /// Attention-probability dropout (default: 0.2 unsup, 0 sup).
    #[arg(long)]
    pub attn_dropout: Option<f32>,
    /// Dropout on each block's attention and MLP outputs.
    #[arg(long, default_value_t = 0.0)]
    pub hidden_dropout: f32,
    /// Dropout on the fresh adapters' input (default: 0.05 unsup, 0 sup).
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Longest encoder input in tokens (BOS + text + memory tokens); longer texts are cut.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Stage 2's optimiser settings (METHOD.md).
pub const UNSUP_DEFAULTS: StageDefaults = StageDefaults {
    lr: 3e-5,
    warmup: 0,
    weight_decay: 1e-3,
    clip: 1.0,
};

/// Stage 3's (the paper's 200 warm-up steps are its whole useful run; a
/// short run warms up for a tenth as long, 20).
pub const SUP_DEFAULTS: StageDefaults = StageDefaults {
    lr: 1e-4,
    warmup: 20,
    weight_decay: 3e-4,
    clip: 1.0,
};

/// Runs the command.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    let t = &args.train;
    let out = t.out_dir()?;
    let device = t.device()?;
    if args.batch_size == 0 || args.mini_batch == 0 {
        bail!("--batch-size and --mini-batch must be at least 1");
    }
    if args.mode == Mode::Unsup && args.instruction.is_some() {
        bail!("--instruction applies to --mode sup queries; unsup passages take none");
    }
    let (defaults, attn, lora_dropout) = match args.mode {
        Mode::Unsup => (UNSUP_DEFAULTS, 0.2, 0.05),
        Mode::Sup => (SUP_DEFAULTS, 0.0, 0.0),
    };
    let attn = args.attn_dropout.unwrap_or(attn);
    let lora_dropout = args.lora_dropout.unwrap_or(lora_dropout);

    let (tokenizer, mut transformer, bos) = crate::train_args::load_base(&args.model)?;
    let chained = chain_stage(&mut transformer, &args.adapter, lora_dropout, t.seed)
        .with_context(|| format!("continuing from the adapter {}", args.adapter.display()))?;
    let k = chained.meta.memory_tokens;
    if device.is_cuda() && chained.meta.train_embeddings == TrainEmbeddings::All {
        // The stage saves the table it loaded (frozen here). Moved as is, only
        // its bf16 copy would be on the device and the saved adapter would
        // lose precision; an f32 master travels with it and is what is saved.
        let table = (**transformer.embedding().table()).clone();
        transformer.embedding_mut().set_master(Some(table))?;
    }
    if args.max_length < k + 2 {
        bail!(
            "--max-length {} leaves no room for text beside BOS and {k} memory tokens",
            args.max_length
        );
    }
    let text_max = args.max_length - 1 - k;

    let (data, truncated) = match args.mode {
        Mode::Unsup => {
            let keep = tokenizer.cut_bytes(text_max + 1);
            let input = texts::read(&args.data, args.format, &args.text_field, true, Some(keep))?;
            let mut ids = tokenizer.encode_batch(&input.texts, false)?;
            let truncated = ids.iter().filter(|p| p.len() > text_max).count();
            ids.iter_mut().for_each(|p| p.truncate(text_max));
            ids.retain(|p| !p.is_empty());
            (ContrastData::Unsupervised(ids), truncated)
        }
        Mode::Sup => {
            let bytes =
                std::fs::read(&args.data).with_context(|| format!("reading {}", args.data))?;
            let raw = parse_triples_bytes(&bytes, &args.data, args.instruction.as_deref())?;
            let mut truncated = 0;
            let mut encode = |s: &str| {
                let (s, _) = tokenizer.cut_for(s, text_max + 1);
                let ids = tokenizer
                    .encode(s, false)
                    .map_err(llm2comp_contrast::ContrastError::from)?;
                truncated += usize::from(ids.len() > text_max);
                Ok(ids)
            };
            let triples = tokenize_triples(&raw, &args.data, text_max, &mut encode)?;
            (ContrastData::Supervised(triples), truncated)
        }
    };
    if data.len() < 2 {
        bail!(
            "{}: {} usable examples; a contrastive batch needs at least 2",
            args.data,
            data.len()
        );
    }
    eprintln!(
        "data: {} {} examples from {} ({truncated} texts cut to --max-length {})",
        data.len(),
        args.mode.name(),
        args.data,
        args.max_length
    );

    let cfg = ContrastConfig {
        temperature: args.temperature,
        attn_dropout: attn,
        hidden_dropout: args.hidden_dropout,
        mini_batch: Some(args.mini_batch),
        checkpoint: t.checkpoint_activations,
    };
    let mut enc = Encoder::new(transformer, bos, cfg)?;
    if device.is_cuda() {
        enc = enc
            .to_device(device, DType::BF16)
            .with_context(|| format!("moving the contrastive model to {device}"))?;
    }
    let on = if device.is_cuda() {
        format!("on {device} (bf16; adapters and memory rows f32)")
    } else {
        format!("on cpu with {threads} threads")
    };
    let n = data.len();
    let position = llm2comp_train::DataPosition::new(t.seed, args.batch_size, t.grad_accum);
    let steps = t.steps(|e| position.steps_for_epochs(e, n))?;
    let (stage, objective) = match args.mode {
        Mode::Unsup => ("ucl", "simcse"),
        Mode::Sup => ("scl", "supervised"),
    };
    let parent = args.adapter.display().to_string();
    let exporter: Exporter = {
        let chained = chained.clone();
        Box::new(move |model, dir| {
            chained
                .save(dir, model, stage, objective, &parent)
                .map_err(TrainError::task)
        })
    };
    let mut task = ContrastTask::new(enc, data, t.seed, args.batch_size, t.grad_accum)
        .with_info("base_model", json!(args.model.display().to_string()))
        .with_info("adapter", json!(args.adapter.display().to_string()))
        .with_info("max_length", json!(args.max_length))
        .with_info("lora_dropout", json!(lora_dropout))
        .with_info("instruction", json!(args.instruction))
        .with_info("data", json!(args.data))
        .with_exporter(exporter);
    let tc = t.config(&out, steps, &defaults);
    eprintln!(
        "contrast: {} (stage {stage}), k = {k}, fresh LoRA r {} over {}, {steps} steps x {} \
         examples x {} accumulation (mini-batch {}), lr {} (warm-up {}), tau {}, attention \
         dropout {attn}, {on} -> {}",
        args.mode.name(),
        chained.lora.r,
        args.adapter.display(),
        args.batch_size,
        t.grad_accum,
        args.mini_batch,
        tc.schedule.lr,
        tc.schedule.warmup_steps,
        args.temperature,
        out.display()
    );
    t.run(&mut task, &tc)?;
    Ok(())
}
