//! `llm2comp eval`: score embeddings on the evaluation suite.
//!
//! Three modes over one task list: embed with our model (`--model`, through
//! the same encoder as `llm2comp embed`, with a by-text cache so a text shared
//! by two tasks is embedded once); score rows computed elsewhere
//! (`--embeddings DIR`, one `<task>.npy` per task); or write each task's
//! texts (`--list-texts DIR`, `<task>.txt`, one a line) for another program
//! to embed. The last two together judge any model by exactly our code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use llm2comp_eval::tasks::{DEFAULT_TASKS, find};
use llm2comp_eval::{CachedEncoder, Encoder, EvalError, Score, Task};

use crate::encoder::{ModelArgs, ModelEncoder};
use crate::npy::{read_npy_rows, write_atomic};
use crate::out;

/// Arguments of `llm2comp eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated tasks: stsb, sickr, sts12..sts16, banking77,
    /// banking77-clustering, scifact.
    #[arg(long, default_value = DEFAULT_TASKS)]
    pub tasks: String,
    /// Where the data sets are (layout of data/eval/README.md).
    #[arg(long, default_value = "data/eval")]
    pub data_dir: PathBuf,
    /// Also write the scores to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep about N items of each file, spread evenly (a quick run).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Score precomputed embeddings: DIR/<task>.npy, float [N, D], rows in the
    /// order of the task's text list (see --list-texts).
    #[arg(long, conflicts_with_all = ["list_texts", "model"])]
    pub embeddings: Option<PathBuf>,
    /// Write each task's texts to DIR/<task>.txt (one a line) and stop.
    #[arg(long, conflicts_with = "model")]
    pub list_texts: Option<PathBuf>,
    /// The model to evaluate and how it embeds.
    #[command(flatten)]
    pub model: Option<ModelArgs>,
}

/// [`ModelEncoder`] as the evaluation crate's [`Encoder`].
struct ModelSource<'a> {
    encoder: &'a ModelEncoder,
    task: String,
}

impl Encoder for ModelSource<'_> {
    fn encode(&mut self, texts: &[String]) -> llm2comp_eval::Result<Vec<Vec<f32>>> {
        let task = self.task.clone();
        let locate = |i: usize| format!("task {task}: text {i} ({:?})", texts[i]);
        let out = self
            .encoder
            .embed(texts, &locate, "texts")
            .map_err(|e| EvalError::Encoder(e.into()))?;
        eprintln!(
            "  {task}: embedded {} texts ({} tokens) in {:.1} s{}",
            texts.len(),
            out.tokens,
            out.secs,
            if out.truncated > 0 {
                format!(", {} truncated to --max-length", out.truncated)
            } else {
                String::new()
            }
        );
        Ok(out.rows)
    }
}

/// Rows of DIR/<task>.npy, checked against the task's text list.
fn precomputed(dir: &Path, name: &str, task: &Task) -> Result<Vec<Vec<f32>>> {
    let listed = dir.join(format!("{name}.txt"));
    if listed.exists() {
        // The list the embeddings were made from must be ours, line for line.
        let text = std::fs::read_to_string(&listed)
            .with_context(|| format!("reading {}", listed.display()))?;
        let theirs: Vec<&str> = text.split_terminator('\n').collect();
        if theirs != task.texts() {
            bail!(
                "{} differs from the text list of task {name} (regenerate it with --list-texts, \
                 same --limit)",
                listed.display()
            );
        }
    }
    let path = dir.join(format!("{name}.npy"));
    let rows = read_npy_rows(&path)?;
    if rows.len() != task.texts().len() {
        bail!(
            "{}: {} rows, but task {name} has {} texts (with --limit, use the same limit as \
             --list-texts)",
            path.display(),
            rows.len(),
            task.texts().len()
        );
    }
    Ok(rows)
}

/// Scores of one evaluation: per task, its scores (main metric first) and
/// seconds; and the same as the `--json` document.
#[derive(Debug)]
pub struct Evaluation {
    /// (task, scores, seconds) in task-list order.
    pub results: Vec<(String, Vec<Score>, f64)>,
    /// The `--json` document.
    pub doc: serde_json::Value,
}

/// Runs the command: scores, a table on stdout, and the JSON when asked.
pub fn run(args: &Args) -> Result<()> {
    let Some(ev) = evaluate(args)? else {
        return Ok(());
    };
    out!("{:<22} {:<12} {:>7}", "task", "metric", "score")?;
    for (name, scores, _) in &ev.results {
        for s in scores {
            out!("{name:<22} {:<12} {:>7.2}", s.metric, s.value)?;
        }
    }
    Ok(())
}

/// Evaluates as `args` says and returns the scores as the `--json` document
/// (also written there when given); `None` after `--list-texts`.
pub fn evaluate(args: &Args) -> Result<Option<Evaluation>> {
    if args.model.is_none() && args.embeddings.is_none() && args.list_texts.is_none() {
        bail!("say what to evaluate: --model M, --embeddings DIR, or --list-texts DIR");
    }
    let names: Vec<&str> = args
        .tasks
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        bail!("--tasks names no task");
    }
    let specs = names
        .iter()
        .map(|n| find(n))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.json {
        crate::output_path::check_file(path, "--json")?;
    }
    let encoder = match &args.model {
        Some(m) => Some(ModelEncoder::load(m)?),
        None => None,
    };
    let mut tasks = Vec::new();
    for spec in &specs {
        let task = Task::load(spec, &args.data_dir, args.limit).with_context(|| {
            format!(
                "loading task {} from {}",
                spec.name,
                args.data_dir.display()
            )
        })?;
        eprintln!("{}: {} texts", spec.name, task.texts().len());
        tasks.push((spec.name, task));
    }

    if let Some(dir) = &args.list_texts {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, task) in &tasks {
            let mut body = task.texts().join("\n");
            body.push('\n');
            let path = dir.join(format!("{name}.txt"));
            write_atomic(&path, body.as_bytes())?;
            eprintln!("wrote {} ({} texts)", path.display(), task.texts().len());
        }
        return Ok(None);
    }

    let mut cache = encoder.as_ref().map(|e| {
        CachedEncoder::new(ModelSource {
            encoder: e,
            task: String::new(),
        })
    });
    let mut results: Vec<(String, Vec<Score>, f64)> = Vec::new();
    for (name, task) in &tasks {
        let start = Instant::now();
        let scores = match (&args.embeddings, cache.as_mut()) {
            (Some(dir), _) => task.score(&precomputed(dir, name, task)?),
            (None, Some(c)) => {
                c.inner_mut().task = name.to_string();
                task.evaluate(c)
            }
            (None, None) => unreachable!("checked at the start"),
        }
        .with_context(|| format!("task {name}"))?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{name}: {} = {:.2} ({secs:.1} s)",
            scores[0].metric, scores[0].value
        );
        results.push((name.to_string(), scores, secs));
    }

    {
        let mut per_task = serde_json::Map::new();
        for (name, scores, secs) in &results {
            let mut m = serde_json::Map::new();
            m.insert("main_metric".into(), scores[0].metric.into());
            m.insert("main_score".into(), scores[0].value.into());
            for s in scores {
                m.insert(s.metric.into(), s.value.into());
            }
            m.insert("seconds".into(), (*secs).into());
            per_task.insert(name.clone(), m.into());
        }
        let source = match (&args.embeddings, &args.model) {
            (Some(d), _) => serde_json::json!({"embeddings": d.display().to_string()}),
            (None, Some(m)) => serde_json::json!({
                "model": m.model.display().to_string(),
                "adapter": m.adapter.as_ref().map(|a| a.display().to_string()),
                "max_length": m.max_length,
            }),
            (None, None) => serde_json::Value::Null,
        };
        let doc = serde_json::json!({
            "source": source,
            "data_dir": args.data_dir.display().to_string(),
            "limit": args.limit,
            "tasks": per_task,
        });
        if let Some(path) = &args.json {
            let mut bytes = serde_json::to_vec_pretty(&doc)?;
            bytes.push(b'\n');
            write_atomic(path, &bytes)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(Some(Evaluation { results, doc }))
    }
}
