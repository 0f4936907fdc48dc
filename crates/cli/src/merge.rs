//! `llm2comp merge`: a base model plus an LLM2Comp adapter in, one Hugging
//! Face directory out (LoRA folded into the weights, memory tokens appended
//! to the vocabulary), loadable by `transformers` and by `llm2comp embed
//! --model`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use llm2comp_backbone::{export, load_adapter, model};
use llm2comp_tensor::DType;

/// Storage dtype of the merged weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeDType {
    /// float32 (exact: what the adapter was applied in).
    F32,
    /// bfloat16 (half the size; rounds every weight).
    Bf16,
}

/// Arguments of `llm2comp merge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (llm2comp.json, adapter_config.json, ...).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of the merged weights.
    #[arg(long, value_enum, default_value_t = MergeDType::F32)]
    pub dtype: MergeDType,
    /// Replace `--out` if it exists and is not empty.
    #[arg(long)]
    pub force: bool,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let source = model::ModelSource::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let mut m = source
        .transformer()
        .with_context(|| format!("loading {}", args.model.display()))?;
    drop(source);
    let meta = load_adapter(&args.adapter, &mut m)
        .with_context(|| format!("loading the adapter {}", args.adapter.display()))?;
    m.merge_lora().context("merging the LoRA adapters")?;
    let dtype = match args.dtype {
        MergeDType::F32 => DType::F32,
        MergeDType::Bf16 => DType::BF16,
    };
    export::write_hf_dir(&args.out, &m, &tokenizer, Some(&meta), dtype, args.force)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "merged {} + {} ({} memory tokens, LoRA r {} on {}) -> {} ({dtype})",
        args.model.display(),
        args.adapter.display(),
        meta.memory_tokens,
        meta.lora.r,
        meta.lora.targets.join(","),
        args.out.display()
    );
    Ok(())
}
