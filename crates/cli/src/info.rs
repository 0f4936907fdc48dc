//! `llm2comp info`: what a model is and what it needs, from headers only.

use std::path::PathBuf;

use anyhow::{Context, Result};
use llm2comp_backbone::model::{self, ModelFormat};

use crate::out;

/// Arguments of `llm2comp info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn mib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", bytes / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let source = model::ModelSource::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let info = source
        .inspect()
        .with_context(|| format!("inspecting {}", args.model.display()))?;
    // Shown even when it does not fit the model (the commands that use it
    // refuse it): `info` is where a user looks to find out why.
    let (tok, tok_file) = source
        .tokenizer_unchecked()
        .with_context(|| format!("reading the tokenizer of {}", args.model.display()))?;
    let mismatch = model::check_tokenizer_fits(&tok, info.config.vocab_size, &tok_file)
        .err()
        .map(|e| e.to_string());
    let c = &info.config;
    // `inspect` refused configs whose sizes overflow, so these are exact;
    // checked all the same, as the counts come from the file.
    let overflow = || anyhow::anyhow!("{}: model sizes overflow", args.model.display());
    let params = c.checked_num_parameters().ok_or_else(overflow)?;
    // Inference keeps weights in f32 on the CPU; training adds the LoRA and
    // optimizer state (small) and activations (per token, below).
    let f32_weights = params as f64 * 4.0;
    let per_token = c
        .checked_activation_bytes_per_token()
        .ok_or_else(overflow)? as f64;
    let special = |id: Option<u32>| match id {
        Some(i) => format!("{i} {:?}", tok.id_to_token(i).unwrap_or_default()),
        None => "none".into(),
    };
    if args.json {
        let v = serde_json::json!({
            "path": info.path,
            "format": match info.format { ModelFormat::HuggingFace => "huggingface", ModelFormat::Gguf => "gguf" },
            "architecture": format!("{:?}", c.architecture),
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.num_heads,
            "kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "tokenizer_vocab_size": tok.vocab_size(),
            "tokenizer_mismatch": mismatch,
            "tie_word_embeddings": c.tie_word_embeddings,
            "rope_theta": c.rope.theta,
            "max_position_embeddings": c.max_position_embeddings,
            "parameters": params,
            "stored_elements": info.stored_parameters,
            "dtypes": info.dtypes.iter().map(|(k, (n, e))| (k.clone(), serde_json::json!({"tensors": n, "elements": e}))).collect::<serde_json::Map<_, _>>(),
            "bos_id": tok.bos_id(),
            "eos_id": tok.eos_id(),
            "pad_id": tok.pad_id(),
            "file_bytes": info.file_bytes,
            "f32_weight_bytes": f32_weights,
            "activation_bytes_per_token": per_token,
        });
        out!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let format = match info.format {
        ModelFormat::HuggingFace => "Hugging Face directory",
        ModelFormat::Gguf => "GGUF",
    };
    out!("model        {} ({format})", info.path.display())?;
    out!("architecture {:?}", c.architecture)?;
    out!(
        "shape        {} layers, hidden {}, MLP {}, {} heads ({} KV), head dim {}",
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim
    )?;
    out!(
        "positions    RoPE theta {}{}, max {}",
        c.rope.theta,
        if c.rope.scaling.is_some() {
            " with Llama-3 scaling"
        } else {
            ""
        },
        c.max_position_embeddings
    )?;
    out!(
        "vocabulary   {} (tokenizer {}), embeddings {}",
        c.vocab_size,
        tok.vocab_size(),
        if c.tie_word_embeddings {
            "tied to the LM head"
        } else {
            "separate LM head"
        }
    )?;
    if let Some(m) = &mismatch {
        out!("             WARNING: {m}; embed and training refuse it")?;
    }
    out!(
        "special      BOS {}, EOS {}, PAD {}",
        special(tok.bos_id()),
        special(tok.eos_id()),
        special(tok.pad_id())
    )?;
    out!("parameters   {params} ({:.1} M)", params as f64 / 1e6)?;
    let dtypes: Vec<String> = info
        .dtypes
        .iter()
        .map(|(k, (n, _))| format!("{k} x{n}"))
        .collect();
    out!("stored as    {}", dtypes.join(", "))?;
    out!(
        "memory       file {}; f32 weights in memory {}; ~{} of activations per token in training",
        mib(info.file_bytes as f64),
        mib(f32_weights),
        mib(per_token)
    )?;
    Ok(())
}
