//! The model side of `llm2comp embed` and `llm2comp eval`: build an encoder
//! from `--model` / `--adapter` and turn texts into vectors.
//!
//! With an LLM2Comp adapter (`--adapter`) or a merged model (a directory with
//! an `llm2comp.json`), each text becomes `[BOS] text <mem_0> .. <mem_k-1>`,
//! the text truncated so the whole fits `--max-length`, and the embedding is
//! the mean of the k memory positions under bidirectional attention: what the
//! compression encoder was trained to do. The adapter's LoRA runs as a side
//! path on the CPU; for a GPU it is merged into the weights before the copy
//! (one GEMM per projection instead of three, and no per-call casts of the
//! adapter). Both commands share this one path,
//! so what `eval` scores is exactly what `embed` writes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use llm2comp_backbone::{
    AdapterMeta, EmbedOptions, Embedder, Pooling, Tokenizer, Transformer, adapter, model,
};
use llm2comp_compress::encoder_input::encoder_sequence;
use llm2comp_tensor::{DType, Device};

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

/// The model flags shared by `embed` and `eval`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
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

/// A loaded model ready to embed texts.
#[derive(Debug)]
pub struct ModelEncoder {
    tokenizer: Tokenizer,
    transformer: Transformer,
    opts: EmbedOptions,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    text_max: usize,
    max_length: usize,
    /// Where it runs.
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
    /// Time spent loading.
    pub loaded: Duration,
}

/// Embeddings of a list of texts and what it cost.
#[derive(Debug)]
pub struct Embedded {
    /// One row per text, in order.
    pub rows: Vec<Vec<f32>>,
    /// Tokens run through the model.
    pub tokens: usize,
    /// Texts cut to fit --max-length.
    pub truncated: usize,
    /// Seconds in the forward passes.
    pub secs: f64,
}

impl ModelEncoder {
    /// Validates the flags and loads the model (and adapter).
    pub fn load(args: &ModelArgs) -> Result<Self> {
        if args.max_length == 0 || args.max_batch_tokens == 0 || args.batch_size == Some(0) {
            bail!("--max-length, --max-batch-tokens and --batch-size must be at least 1");
        }
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
        // An adapter of LoRA alone (k = 0, the MNTP baseline's) is trained
        // bidirectionally like the others but has nothing to pool but text.
        // An unreadable meta is left for load_adapter to report.
        let adapter_k = args
            .adapter
            .as_ref()
            .map(|d| AdapterMeta::read(&d.join(adapter::META_FILE)).map_or(1, |m| m.memory_tokens));
        let adapted = merged.is_some() || args.adapter.is_some();
        let has_memory = merged
            .as_ref()
            .map_or(adapter_k.unwrap_or(0), |m| m.memory_tokens)
            > 0;
        let pooling_arg = args.pooling.unwrap_or(if has_memory {
            PoolingArg::Memory
        } else {
            PoolingArg::Mean
        });
        let attention = args.attention.unwrap_or(if adapted {
            AttentionArg::Bidirectional
        } else {
            AttentionArg::Causal
        });
        if pooling_arg == PoolingArg::Memory && !has_memory {
            bail!(
                "--pooling memory needs an LLM2Comp adapter with memory tokens (--adapter DIR, or \
                 a merged model directory with an llm2comp.json); {} has none: use mean or last",
                if adapted {
                    "this adapter (LoRA only)"
                } else {
                    "a base model"
                }
            );
        }
        let start = Instant::now();
        let source = model::ModelSource::open(&args.model)
            .with_context(|| format!("opening {}", args.model.display()))?;
        let tokenizer = source
            .tokenizer()
            .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
        let mut transformer = source
            .transformer()
            .with_context(|| format!("loading {}", args.model.display()))?;
        drop(source);
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
                    "{}: llm2comp.json says {} base ids + {} memory tokens, but the model has \
                     {v} ids",
                    args.model.display(),
                    m.vocab_size,
                    m.memory_tokens
                );
            }
        }
        let memory: Option<Vec<u32>> = match pooling_arg {
            PoolingArg::Memory => meta.as_ref().map(|m| m.memory_token_ids.clone()),
            _ => None,
        };
        let pooling = match pooling_arg {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Last => Pooling::LastToken,
            PoolingArg::Memory => Pooling::LastK(memory.as_ref().map_or(0, Vec::len)),
        };
        // [BOS] text <mem>: the text gets what --max-length leaves. BOS as
        // `pretrain` finds it (tokenizer, else config.json), so the encoder
        // sees what it was trained on; a model with none gets none.
        // A LoRA-only adapter was trained on `[BOS] text` (MNTP) and reads the same.
        let bos = (memory.is_some() || (adapted && !has_memory))
            .then(|| tokenizer.bos_id().or(transformer.config().bos_token_id))
            .flatten();
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
        let opts = EmbedOptions {
            pooling,
            causal: attention == AttentionArg::Causal,
            lora,
            normalize: args.normalize,
            token_budget: args.max_batch_tokens,
            batch_size: args.batch_size,
        };
        Ok(Self {
            tokenizer,
            transformer,
            opts,
            prefix,
            suffix,
            text_max,
            max_length: args.max_length,
            device,
            dtype,
            loaded: start.elapsed(),
        })
    }

    /// The bytes of a passage worth reading: more holds more tokens than
    /// `--max-length` keeps (`Tokenizer::cut_bytes`).
    pub fn keep_bytes(&self) -> usize {
        self.tokenizer.cut_bytes(self.text_max + 1)
    }

    /// The --max-length the texts are cut to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Embeds `texts`; `locate(i)` names text i in error messages (a file and
    /// line), and the progress bar counts `unit`.
    pub fn embed(
        &self,
        texts: &[String],
        locate: &dyn Fn(usize) -> String,
        unit: &str,
    ) -> Result<Embedded> {
        let vocab = self.transformer.config().vocab_size as u32;
        let mut seqs = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for (i, text) in texts.iter().enumerate() {
            // Only the first text_max tokens are used: tokenise no more text than holds them.
            let (text, cut) = self.tokenizer.cut_for(text, self.text_max + 1);
            let mut ids = self
                .tokenizer
                .encode(text, false)
                .with_context(|| format!("{}: tokenizing", locate(i)))?;
            if ids.is_empty() {
                bail!("{} produced no tokens", locate(i));
            }
            if let Some(&bad) = ids.iter().find(|&&t| t >= vocab) {
                bail!(
                    "{}: token id {bad} is outside the model's vocabulary ({vocab}); the \
                     tokenizer does not match the model",
                    locate(i)
                );
            }
            if cut || ids.len() > self.text_max {
                ids.truncate(self.text_max);
                truncated += 1;
            }
            if !self.suffix.is_empty() {
                ids = match self.prefix.first() {
                    Some(&bos) => encoder_sequence(bos, &ids, &self.suffix),
                    None => [ids.as_slice(), &self.suffix].concat(),
                };
            }
            seqs.push(ids);
        }
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(seqs.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
                ))
                .expect("static template")
                .progress_chars("=> "),
            );
            Some(b)
        } else {
            None
        };
        let start = Instant::now();
        let rows =
            Embedder::new(&self.transformer, self.opts.clone()).embed(&seqs, &mut |done| {
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                }
            })?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        Ok(Embedded {
            rows,
            tokens,
            truncated,
            secs: start.elapsed().as_secs_f64(),
        })
    }
}
