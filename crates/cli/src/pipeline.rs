//! `llm2comp pipeline`: the whole method in one command: pretext (stage 1)
//! → unsupervised contrastive (stage 2) → supervised contrastive (stage 3)
//! → the evaluation suite on the raw model and after every stage.
//!
//! Each stage runs exactly as its own command would (`pretrain`, `contrast`,
//! `eval`), from an argument list built here and printed, so any stage can
//! be rerun or changed by hand. The output directory holds every stage's
//! run (adapters, checkpoints, metrics, loss curve), every evaluation's JSON
//! and the final `results.json` / `results.md`. Rerunning the same command
//! continues where it stopped: an interrupted stage resumes from its last
//! checkpoint, finished stages and evaluations are kept.
//!
//! `--device` goes to every stage and every evaluation alike: on CUDA each
//! trains and embeds with bf16 frozen weights (f32 adapters and memory rows),
//! which is what a later rerun on the same device resumes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use crate::npy::write_atomic;
use crate::{contrast, eval, out, pretrain};

/// Arguments of `llm2comp pipeline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A recipe: a TOML file of this command's flags without the dashes
    /// (configs/); flags given here win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The base model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (continued when it already holds a run of this pipeline).
    #[arg(long)]
    pub out: PathBuf,
    /// Pretext objective of stage 1: rc, nll or kl; or a control: mntp
    /// (LLM2Vec's, mean pooling after) or none (the untrained adapter).
    #[arg(long, default_value = "kl")]
    pub objective: String,
    /// Stage 1 passages (plain text, one a line).
    #[arg(long, default_value = "data/pretrain/wikitext2_test_paragraphs.txt")]
    pub pretrain_data: PathBuf,
    /// Stage 1 steps (default: one epoch).
    #[arg(long)]
    pub pretrain_steps: Option<u64>,
    /// Stage 1 passages per step.
    #[arg(long, default_value_t = 4)]
    pub pretrain_batch_size: usize,
    /// Stage 2 (SimCSE) sentences, one a line.
    #[arg(long, default_value = "data/contrast/wiki1m_head.txt")]
    pub ucl_data: PathBuf,
    /// Stage 2 steps (default: one epoch; 0 skips stages 2 and 3).
    #[arg(long)]
    pub ucl_steps: Option<u64>,
    /// Stage 2 sentences per step.
    #[arg(long, default_value_t = 128)]
    pub ucl_batch_size: usize,
    /// Stage 3 JSONL triples {"query", "positive", "negative"}.
    #[arg(long, default_value = "data/contrast/snli_triples_no_stsb.jsonl")]
    pub scl_data: PathBuf,
    /// Stage 3 steps (default: one epoch; 0 skips stage 3).
    #[arg(long)]
    pub scl_steps: Option<u64>,
    /// Stage 3 triples per step.
    #[arg(long, default_value_t = 128)]
    pub scl_batch_size: usize,
    /// Task instruction for stage 3 queries (`instruction: query`).
    #[arg(long)]
    pub instruction: Option<String>,
    /// GradCache mini-batch of the contrastive stages.
    #[arg(long, default_value_t = 32)]
    pub mini_batch: usize,
    /// Memory tokens k.
    #[arg(long, default_value_t = 8)]
    pub memory_tokens: usize,
    /// LoRA rank of each stage.
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    /// Longest input in tokens (text + BOS + memory tokens), in training and evaluation.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Seed of every stage.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Device of every stage and evaluation: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Evaluation tasks (comma-separated; see `llm2comp eval --help`).
    #[arg(long, default_value = llm2comp_eval::tasks::DEFAULT_TASKS)]
    pub eval_tasks: String,
    /// Where the evaluation data sets are.
    #[arg(long, default_value = "data/eval")]
    pub eval_data_dir: PathBuf,
    /// Keep about N items of each evaluation file (a quicker, noisier score).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Extra flags for stage 1, e.g. "--lr 2e-4 --warmup 5" (split on spaces).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub pretrain_args: String,
    /// Extra flags for stage 2 (split on spaces).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub ucl_args: String,
    /// Extra flags for stage 3 (split on spaces).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub scl_args: String,
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct PretrainCmd {
    #[command(flatten)]
    args: pretrain::Args,
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct ContrastCmd {
    #[command(flatten)]
    args: contrast::Args,
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct EvalCmd {
    #[command(flatten)]
    args: eval::Args,
}

/// An argument list under construction.
#[derive(Debug, Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn flag(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.push(name.into());
        self.0.push(value.as_ref().to_owned());
        self
    }

    fn opt<T: ToString>(self, name: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.flag(name, v.to_string()),
            None => self,
        }
    }

    fn extra(mut self, words: &str) -> Self {
        self.0.extend(words.split_whitespace().map(OsString::from));
        self
    }

    /// The command line a user would type, for the log.
    fn show(&self, command: &str) -> String {
        let mut s = format!("llm2comp {command}");
        for a in &self.0 {
            let a = a.to_string_lossy();
            if a.contains(' ') || a.is_empty() {
                s.push_str(&format!(" '{a}'"));
            } else {
                s.push(' ');
                s.push_str(&a);
            }
        }
        s
    }
}

/// A contrastive stage's settings.
#[derive(Debug, Clone, Copy)]
struct Contrastive<'a> {
    on: bool,
    mode: &'a str,
    key: &'a str,
    label: &'a str,
    dir: &'a Path,
    prev: &'a Path,
    data: &'a Path,
    steps: Option<u64>,
    batch: usize,
    extra: &'a str,
}

/// `--resume DIR` when DIR holds a checkpoint, so a rerun continues.
fn resume_flag(argv: Argv, dir: &Path) -> Argv {
    if dir.join("checkpoints").join("latest").is_file() {
        argv.flag("--resume", dir)
    } else {
        argv
    }
}

fn banner(what: &str, line: &str) {
    eprintln!("\n=== {what} ===\n$ {line}");
}

/// One evaluation: reuses `json` when a previous run wrote it.
fn evaluate(args: &Args, label: &str, adapter: Option<&Path>, json: &Path) -> Result<Value> {
    if json.is_file() {
        eprintln!("\n=== eval {label}: reusing {} ===", json.display());
        let text = std::fs::read_to_string(json)?;
        return serde_json::from_str(&text).with_context(|| format!("reading {}", json.display()));
    }
    let mut argv = Argv::default()
        .flag("--model", &args.model)
        .flag("--tasks", &args.eval_tasks)
        .flag("--data-dir", &args.eval_data_dir)
        .flag("--max-length", args.max_length.to_string())
        .flag("--json", json)
        .flag("--device", &args.device)
        .opt("--limit", args.eval_limit);
    argv = match adapter {
        Some(a) => argv.flag("--adapter", a),
        // The raw model's baseline: mean pooling, causal (as pretrained).
        None => argv.flag("--pooling", "mean"),
    };
    banner(&format!("eval {label}"), &argv.show("eval"));
    let cmd = EvalCmd::try_parse_from(&argv.0)?;
    let ev = eval::evaluate(&cmd.args)?.context("evaluation wrote no scores")?;
    Ok(ev.doc)
}

/// Runs the command.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    // Before any data or stage: a missing device is the first thing to say.
    let device = llm2comp_tensor::Device::parse(&args.device)?;
    device
        .check()
        .with_context(|| format!("--device {device}"))?;
    for (what, p) in [
        ("--pretrain-data", &args.pretrain_data),
        ("--eval-data-dir", &args.eval_data_dir),
    ] {
        if !p.exists() {
            bail!(
                "{what} {}: not found (run from the repository root, or pass the path)",
                p.display()
            );
        }
    }
    let ucl_on = args.ucl_steps != Some(0);
    let scl_on = ucl_on && args.scl_steps != Some(0);
    for (on, what, p) in [
        (ucl_on, "--ucl-data", &args.ucl_data),
        (scl_on, "--scl-data", &args.scl_data),
    ] {
        if on && !p.exists() {
            bail!("{what} {}: not found", p.display());
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let start = Instant::now();
    let stage1 = args.out.join("1-pretext");
    let stage2 = args.out.join("2-ucl");
    let stage3 = args.out.join("3-scl");
    let evals = args.out.join("eval");
    std::fs::create_dir_all(&evals)?;
    let mut rows: Vec<(String, Value)> = Vec::new();

    rows.push((
        "raw model, mean pooling".into(),
        evaluate(args, "raw model", None, &evals.join("base.json"))?,
    ));

    // MNTP's adapter has no memory tokens: it is pooled by the mean, as LLM2Vec pools.
    let mntp = args.objective.eq_ignore_ascii_case("mntp");
    let mut argv = Argv::default()
        .flag("--model", &args.model)
        .flag("--data", &args.pretrain_data)
        .flag("--objective", &args.objective);
    if !mntp {
        argv = argv.flag("--memory-tokens", args.memory_tokens.to_string());
    }
    let argv = argv
        .flag("--lora-r", args.lora_r.to_string())
        .flag("--lora-alpha", (2 * args.lora_r).to_string())
        .flag("--batch-size", args.pretrain_batch_size.to_string())
        .flag("--max-length", args.max_length.to_string())
        .flag("--seed", args.seed.to_string())
        .flag("--device", &args.device)
        .opt("--steps", args.pretrain_steps)
        .flag("--out", &stage1)
        .extra(&args.pretrain_args);
    let argv = resume_flag(argv, &stage1);
    banner("stage 1: pretext", &argv.show("pretrain"));
    pretrain::run(&PretrainCmd::try_parse_from(&argv.0)?.args, threads)?;
    rows.push((
        format!(
            "+ {} pretext ({} pooling)",
            args.objective,
            if mntp { "mean" } else { "memory" }
        ),
        evaluate(
            args,
            "after stage 1",
            Some(&stage1),
            &evals.join("pretext.json"),
        )?,
    ));

    let stages = [
        Contrastive {
            on: ucl_on,
            mode: "unsup",
            key: "ucl",
            label: "+ UCL (SimCSE)",
            dir: &stage2,
            prev: &stage1,
            data: &args.ucl_data,
            steps: args.ucl_steps,
            batch: args.ucl_batch_size,
            extra: &args.ucl_args,
        },
        Contrastive {
            on: scl_on,
            mode: "sup",
            key: "scl",
            label: "+ SCL (triples)",
            dir: &stage3,
            prev: &stage2,
            data: &args.scl_data,
            steps: args.scl_steps,
            batch: args.scl_batch_size,
            extra: &args.scl_args,
        },
    ];
    for st in stages.iter().filter(|s| s.on) {
        let Contrastive {
            mode,
            key,
            label,
            dir,
            prev,
            data,
            steps,
            batch,
            extra,
            ..
        } = *st;
        let mut argv = Argv::default()
            .flag("--model", &args.model)
            .flag("--adapter", prev)
            .flag("--mode", mode)
            .flag("--data", data)
            .flag("--batch-size", batch.to_string())
            .flag("--mini-batch", args.mini_batch.to_string())
            .flag("--max-length", args.max_length.to_string())
            .flag("--seed", args.seed.to_string())
            .flag("--device", &args.device)
            .opt("--steps", steps)
            .flag("--out", dir);
        if mode == "sup" {
            argv = argv.opt("--instruction", args.instruction.as_deref());
        }
        let argv = resume_flag(argv.extra(extra), dir);
        banner(&format!("stage {key}"), &argv.show("contrast"));
        contrast::run(&ContrastCmd::try_parse_from(&argv.0)?.args, threads)?;
        rows.push((
            label.to_string(),
            evaluate(
                args,
                &format!("after {key}"),
                Some(dir),
                &evals.join(format!("{key}.json")),
            )?,
        ));
    }
    report(args, &rows, start.elapsed().as_secs_f64())
}

/// Writes results.json and results.md and prints the table.
fn report(args: &Args, rows: &[(String, Value)], secs: f64) -> Result<()> {
    let tasks: Vec<&str> = args
        .eval_tasks
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let score = |doc: &Value, t: &str| doc["tasks"][t]["main_score"].as_f64();
    let mut md = String::from("| model |");
    for t in &tasks {
        md.push_str(&format!(" {t} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(tasks.len()));
    md.push('\n');
    for (label, doc) in rows {
        md.push_str(&format!("| {label} |"));
        for t in &tasks {
            match score(doc, t) {
                Some(v) => md.push_str(&format!(" {v:.2} |")),
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    let metrics: Vec<String> = tasks
        .iter()
        .map(|t| {
            let m = rows
                .first()
                .and_then(|(_, d)| d["tasks"][*t]["main_metric"].as_str())
                .unwrap_or("?");
            format!("{t}: {m}")
        })
        .collect();
    md.push_str(&format!(
        "\nMain metric per task (x100): {}. Evaluation limit: {}.\n",
        metrics.join(", "),
        args.eval_limit
            .map_or("none (full test sets)".to_string(), |l| format!(
                "about {l} items a file"
            ))
    ));
    let doc = json!({
        "model": args.model.display().to_string(),
        "objective": args.objective,
        "config": args.config.as_ref().map(|c| c.display().to_string()),
        "seed": args.seed,
        "eval_limit": args.eval_limit,
        "seconds_this_run": secs,
        "rows": rows.iter().map(|(l, d)| json!({"model": l, "scores": d["tasks"].clone()})).collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    write_atomic(&args.out.join("results.json"), &bytes)?;
    write_atomic(&args.out.join("results.md"), md.as_bytes())?;
    out!("\n{md}")?;
    eprintln!(
        "pipeline done in {:.1} min this run; results in {} (results.json, results.md)",
        secs / 60.0,
        args.out.display()
    );
    Ok(())
}
