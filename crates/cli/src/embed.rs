//! `llm2comp embed`: texts in, one vector per text out.
//!
//! The model side (adapters, memory tokens, truncation, batching) lives in
//! [`crate::encoder`], shared with `llm2comp eval`; this file reads the
//! passages and writes the rows.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::encoder::{ModelArgs, ModelEncoder};
use crate::npy::{first_non_finite, output_format, write_embeddings};
use crate::texts::{self, InputFormat};

/// Arguments of `llm2comp embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// The model and how it embeds.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    output_format(&args.output)?;
    crate::output_path::check_file(&args.output, "--output")?;
    // Flags and device first, before reading a possibly large input.
    let encoder = ModelEncoder::load(&args.model)?;
    let input = texts::read(
        &args.input,
        args.format,
        &args.text_field,
        args.skip_empty,
        Some(encoder.keep_bytes()),
    )?;
    let locate = |i: usize| format!("{}: line {}", args.input, input.lines[i]);
    let out = encoder.embed(&input.texts, &locate, "passages")?;
    // A NaN in a written file surfaces much later, in whatever reads it.
    if let Some((i, col, x)) = first_non_finite(&out.rows) {
        bail!(
            "{}: the embedding holds {x} at dimension {col} (activations overflowed?); nothing \
             was written to {}",
            locate(i),
            args.output.display()
        );
    }
    write_embeddings(&args.output, &out.rows)?;

    let dim = out.rows.first().map_or(0, Vec::len);
    eprintln!(
        "embedded {} passages ({} tokens) on {} ({}) in {:.2} s ({:.0} tokens/s; model loaded in \
         {:.2} s) -> {} [{} x {dim}]",
        out.rows.len(),
        out.tokens,
        encoder.device,
        encoder.dtype,
        out.secs,
        out.tokens as f64 / out.secs.max(1e-9),
        encoder.loaded.as_secs_f64(),
        args.output.display(),
        out.rows.len()
    );
    if out.truncated > 0 {
        eprintln!(
            "note: {} passage(s) were longer than --max-length {} tokens and were truncated",
            out.truncated,
            encoder.max_length()
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
