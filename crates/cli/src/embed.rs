//! `llm2comp embed`: texts in, one vector per text out.
//!
//! With an LLM2Comp adapter (`--adapter`) or a merged model (a directory with
//! an `llm2comp.json`), each text becomes `[BOS] text <mem_0> .. <mem_k-1>`,
//! the text truncated so the whole fits `--max-length`, and the embedding is
//! the mean of the k memory positions under bidirectional attention: what the
//! compression encoder was trained to do. The adapter's LoRA runs as a side
//! path on the CPU; for a GPU it is merged into the weights before the copy
//! (LoRA side paths do not run on CUDA).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use llm2comp_backbone::{AdapterMeta, EmbedOptions, Embedder, Pooling, adapter, model};
use llm2comp_compress::encoder_input::encoder_sequence;
use llm2comp_tensor::{DType, Device};

use crate::npy::{output_format, write_embeddings};
use crate::texts::{self, InputFormat};

/// How hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolingArg {
    /// Mean over the text's tokens.
    Mean,
    /// The last token's hidden state.
    Last,
    /// Mean over the k memory tokens appended by an LLM2Comp adapter.
    Memory,
}

/// Compute dtype of the model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    /// bfloat16 (CUDA only; the tensor-core attention kernels need it).
    Bf16,
    /// float32 (the CPU's only dtype; exact reference on CUDA).
    F32,
}

/// Attention mask of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionArg {
    /// Each token sees the tokens before it (the model as pretrained).
    Causal,
    /// Every token sees the whole text (LLM2Comp's encoder).
    Bidirectional,
}

/// Arguments of `llm2comp embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Passages: plain text (one a line) or JSONL; `-` reads stdin.
    #[arg(long)]
    pub input: String,
    /// Where to write the embeddings: `.npy` (float32 [N, D]) or `.jsonl`.
    #[arg(long)]
    pub output: PathBuf,
    /// Input layout (by default from the extension: .jsonl is JSONL).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// The JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Drop empty passages instead of refusing the input.
    #[arg(long)]
    pub skip_empty: bool,
    /// An LLM2Comp adapter directory to apply to --model (default pooling
    /// memory, attention bidirectional).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Pooling of the hidden states (default: memory with an adapter or a
    /// merged model, else mean).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingArg>,
    /// Attention mask (default: bidirectional with an adapter or a merged
    /// model, else causal).
    #[arg(long, value_enum)]
    pub attention: Option<AttentionArg>,
    /// Longest passage in tokens; longer ones are truncated (and counted).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// L2-normalise the embeddings.
    #[arg(long)]
    pub normalize: bool,
    /// Most passages per forward pass (default: limited by --max-batch-tokens only).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Most tokens per forward pass (passages are packed, no padding).
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype (default: bf16 on CUDA, f32 on the CPU, which has only f32).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    if args.max_length == 0 || args.max_batch_tokens == 0 || args.batch_size == Some(0) {
        bail!("--max-length, --max-batch-tokens and --batch-size must be at least 1");
    }
    output_format(&args.output)?;
    let device = Device::parse(&args.device)?;
    let dtype = match (args.dtype, device) {
        (Some(DTypeArg::F32), _) | (None, Device::Cpu) => DType::F32,
        (Some(DTypeArg::Bf16), Device::Cpu) => {
            bail!("--dtype bf16 needs --device cuda: the CPU kernels compute in f32")
        }
        (Some(DTypeArg::Bf16) | None, _) => DType::BF16,
    };
    // Before reading any file: a missing driver or device is the first thing to say.
    device.check()?;
    let merged = adapter::merged_meta(&args.model)?;
    if merged.is_some() && args.adapter.is_some() {
        bail!(
            "{} is a merged LLM2Comp model (it has an llm2comp.json): its adapter is already \
             applied, drop --adapter",
            args.model.display()
        );
    }
    let has_memory = merged.is_some() || args.adapter.is_some();
    let pooling_arg = args.pooling.unwrap_or(if has_memory {
        PoolingArg::Memory
    } else {
        PoolingArg::Mean
    });
    let attention = args.attention.unwrap_or(if has_memory {
        AttentionArg::Bidirectional
    } else {
        AttentionArg::Causal
    });
    if pooling_arg == PoolingArg::Memory && !has_memory {
        bail!(
            "--pooling memory needs an LLM2Comp adapter with memory tokens (--adapter DIR, or a \
             merged model directory with an llm2comp.json); a base model has none: use mean or \
             last"
        );
    }
    let input = texts::read(&args.input, args.format, &args.text_field, args.skip_empty)?;
    let start = Instant::now();
    let tokenizer = model::load_tokenizer(&args.model)
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let mut transformer = model::load_transformer(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut lora = false;
    let meta: Option<AdapterMeta> = match &args.adapter {
        Some(dir) => {
            let meta = llm2comp_backbone::load_adapter(dir, &mut transformer)
                .with_context(|| format!("loading the adapter {}", dir.display()))?;
            if device == Device::Cpu {
                lora = true;
            } else {
                // LoRA side paths run on the CPU only; merged weights are the same model.
                transformer.merge_lora().context("merging the adapter")?;
            }
            Some(meta)
        }
        None => merged,
    };
    if let Some(m) = meta.as_ref().filter(|m| m.merged) {
        let v = transformer.config().vocab_size;
        if v != m.vocab_size + m.memory_tokens {
            bail!(
                "{}: llm2comp.json says {} base ids + {} memory tokens, but the model has {v} \
                 ids",
                args.model.display(),
                m.vocab_size,
                m.memory_tokens
            );
        }
    }
    let memory: Option<&[u32]> = match pooling_arg {
        PoolingArg::Memory => meta.as_ref().map(|m| m.memory_token_ids.as_slice()),
        _ => None,
    };
    let pooling = match pooling_arg {
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::Last => Pooling::LastToken,
        PoolingArg::Memory => Pooling::LastK(memory.map_or(0, <[u32]>::len)),
    };
    // [BOS] text <mem>: the text gets what --max-length leaves.
    // BOS as `pretrain` finds it (tokenizer, else config.json), so the
    // encoder sees what it was trained on; a model with none gets none.
    let bos = memory.and(tokenizer.bos_id().or(transformer.config().bos_token_id));
    let prefix: Vec<u32> = bos.into_iter().collect();
    let suffix = memory.unwrap_or_default();
    let text_max = args
        .max_length
        .checked_sub(prefix.len() + suffix.len())
        .filter(|&n| n > 0)
        .with_context(|| {
            format!(
                "--max-length {} leaves no room for text after the {} memory token(s) and BOS",
                args.max_length,
                suffix.len()
            )
        })?;
    if device != Device::Cpu {
        // The host copy is dropped at once: one copy of the weights, on the device.
        transformer = transformer
            .to_device(device, dtype)
            .with_context(|| format!("moving the model to {device} as {dtype}"))?;
    }
    let vocab = transformer.config().vocab_size as u32;
    let loaded = start.elapsed();

    let mut seqs = Vec::with_capacity(input.texts.len());
    let mut truncated = 0;
    for (text, line) in input.texts.iter().zip(&input.lines) {
        let mut ids = tokenizer
            .encode(text, false)
            .with_context(|| format!("{}: tokenizing line {line}", args.input))?;
        if ids.is_empty() {
            bail!("{}: line {line} produced no tokens", args.input);
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!(
                "{}: line {line}: token id {bad} is outside the model's vocabulary ({vocab}); \
                 the tokenizer does not match the model",
                args.input
            );
        }
        if ids.len() > text_max {
            ids.truncate(text_max);
            truncated += 1;
        }
        if memory.is_some() {
            ids = match bos {
                Some(b) => encoder_sequence(b, &ids, suffix),
                None => [ids.as_slice(), suffix].concat(),
            };
        }
        seqs.push(ids);
    }
    let tokens: usize = seqs.iter().map(Vec::len).sum();

    let opts = EmbedOptions {
        pooling,
        causal: attention == AttentionArg::Causal,
        lora,
        normalize: args.normalize,
        token_budget: args.max_batch_tokens,
        batch_size: args.batch_size,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(seqs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} passages ({per_sec}, eta {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let embed_start = Instant::now();
    let rows = Embedder::new(&transformer, opts).embed(&seqs, &mut |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = embed_start.elapsed().as_secs_f64();
    write_embeddings(&args.output, &rows)?;

    let dim = rows.first().map_or(0, Vec::len);
    eprintln!(
        "embedded {} passages ({tokens} tokens) on {device} ({dtype}) in {secs:.2} s ({:.0} \
         tokens/s; model loaded in {:.2} s) -> {} [{} x {dim}]",
        rows.len(),
        tokens as f64 / secs.max(1e-9),
        loaded.as_secs_f64(),
        args.output.display(),
        rows.len()
    );
    if truncated > 0 {
        eprintln!(
            "note: {truncated} passage(s) were longer than --max-length {} tokens and were truncated",
            args.max_length
        );
    }
    if input.skipped_empty > 0 {
        eprintln!(
            "note: {} empty passage(s) were skipped",
            input.skipped_empty
        );
    }
    Ok(())
}
