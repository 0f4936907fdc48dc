//! The `llm2comp` command line. Library crates return typed errors; this edge
//! turns them into `anyhow` messages with context for the user.

mod adapter_export;
mod contrast;
mod embed;
mod encoder;
mod eval;
mod info;
mod merge;
mod npy;
mod output_path;
mod pipeline;
mod pipeline_config;
mod pretrain;
mod pretrain_mntp;
mod rss;
mod selftest;
mod texts;
mod train_args;

/// `println!` that returns the write error instead of panicking, so output
/// piped into a reader that stops early (`| head`) ends the run quietly.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Turn a decoder-only LLM into a text-embedding model with LLM2Comp.
#[derive(Debug, Parser)]
#[command(name = "llm2comp", version, about)]
struct Cli {
    /// Worker threads for CPU ops (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train one transformer block built from the tensor core's ops on a fixed
    /// batch: checks that every op's forward and backward compose (the loss
    /// must fall) and times each op family.
    Selftest(selftest::Args),
    /// Show a model's architecture, size, dtypes, vocabulary, special tokens
    /// and the memory it needs (reads headers only).
    Info(info::Args),
    /// Embed passages (one a line, or JSONL) into a .npy or .jsonl file.
    Embed(embed::Args),
    /// Score embeddings on the evaluation suite (STS, classification,
    /// clustering, retrieval): of --model, or precomputed (--embeddings).
    Eval(eval::Args),
    /// Fold an LLM2Comp adapter into its base model and write a Hugging Face
    /// directory (memory tokens added to the vocabulary and the tokenizer).
    Merge(merge::Args),
    /// Train the compression pretext task (LLM2Comp stage 1): LoRA adapters
    /// and k memory tokens from which the frozen model must predict the text.
    Pretrain(Box<pretrain::Args>),
    /// Train a contrastive stage (LLM2Comp stage 2, unsup SimCSE, or 3, sup
    /// triples) on top of the previous stage's adapter.
    Contrast(Box<contrast::Args>),
    /// The whole method in one resumable command: pretext, unsupervised and
    /// supervised contrastive stages, and the evaluation suite before and
    /// after each (results.json, results.md). `--config FILE.toml` reads a
    /// recipe (configs/); flags on the command line win over it.
    #[command(args_override_self = true)]
    Pipeline(Box<pipeline::Args>),
}

fn main() -> Result<()> {
    let cli = Cli::parse_from(pipeline_config::expand(std::env::args_os().collect())?);
    let threads = llm2comp_tensor::pool::init(cli.threads);
    let result = match cli.command {
        Command::Selftest(args) => selftest::run(&args, threads),
        Command::Info(args) => info::run(&args),
        Command::Embed(args) => embed::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Pretrain(args) => pretrain::run(&args, threads),
        Command::Contrast(args) => contrast::run(&args, threads),
        Command::Pipeline(args) => pipeline::run(&args, threads),
    };
    match result {
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Whether the error is stdout having been closed by its reader.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
