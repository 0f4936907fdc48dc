//! The tasks of the suite, each read from a local file layout (the same as
//! the project's `data/eval/` and `shared/data`), each listing its texts and
//! scoring one embedding row per text. Keeping "which texts" apart from
//! "score these rows" is what lets embeddings made by another program be
//! judged by the same code.

pub mod classification;
pub mod clustering;
pub mod retrieval;
pub mod sts;
pub mod text_list;
pub mod tsv;

use std::path::Path;

use crate::{Encoder, EvalError, Result};

/// One metric's value (× 100, as MTEB reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Metric name.
    pub metric: &'static str,
    /// Value × 100.
    pub value: f64,
}

impl Score {
    /// A score.
    pub fn new(metric: &'static str, value: f64) -> Self {
        Self { metric, value }
    }
}

/// The kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Cosine vs gold similarity.
    Sts,
    /// Linear probe on labelled texts.
    Classification,
    /// k-means vs labels.
    Clustering,
    /// Ranking a corpus for queries.
    Retrieval,
}

/// A named task and where its data lives under the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    /// Name on the command line.
    pub name: &'static str,
    /// Its kind.
    pub kind: TaskKind,
    /// File or directory, relative to the data directory.
    pub path: &'static str,
}

/// Every known task.
pub const TASKS: &[TaskSpec] = &[
    TaskSpec {
        name: "stsb",
        kind: TaskKind::Sts,
        path: "sts/stsb/test.tsv",
    },
    TaskSpec {
        name: "sickr",
        kind: TaskKind::Sts,
        path: "sts/sick/test.tsv",
    },
    TaskSpec {
        name: "sts12",
        kind: TaskKind::Sts,
        path: "sts/sts12/test.tsv",
    },
    TaskSpec {
        name: "sts13",
        kind: TaskKind::Sts,
        path: "sts/sts13/test.tsv",
    },
    TaskSpec {
        name: "sts14",
        kind: TaskKind::Sts,
        path: "sts/sts14/test.tsv",
    },
    TaskSpec {
        name: "sts15",
        kind: TaskKind::Sts,
        path: "sts/sts15/test.tsv",
    },
    TaskSpec {
        name: "sts16",
        kind: TaskKind::Sts,
        path: "sts/sts16/test.tsv",
    },
    TaskSpec {
        name: "banking77",
        kind: TaskKind::Classification,
        path: "classification/banking77",
    },
    TaskSpec {
        name: "banking77-clustering",
        kind: TaskKind::Clustering,
        path: "classification/banking77/test.tsv",
    },
    TaskSpec {
        name: "scifact",
        kind: TaskKind::Retrieval,
        path: "retrieval/scifact",
    },
];

/// The tasks run when none are named (their data ships in `data/eval`).
pub const DEFAULT_TASKS: &str = "stsb,sickr,banking77,banking77-clustering";

/// The spec named `name`.
pub fn find(name: &str) -> Result<&'static TaskSpec> {
    TASKS.iter().find(|t| t.name == name).ok_or_else(|| {
        EvalError::UnknownTask(
            name.to_string(),
            TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
        )
    })
}

/// At most `limit` items spread evenly over `v` (every ⌈len/limit⌉-th), so
/// a quick run still sees every part of a file sorted by label.
pub fn subsample<T>(v: Vec<T>, limit: Option<usize>) -> Vec<T> {
    match limit {
        Some(n) if n < v.len() => {
            let stride = v.len().div_ceil(n.max(1));
            v.into_iter().step_by(stride).collect()
        }
        _ => v,
    }
}

/// A loaded task.
#[derive(Debug, Clone)]
pub enum Task {
    /// Semantic similarity.
    Sts(sts::Sts),
    /// Linear-probe classification.
    Classification(classification::Classification),
    /// Clustering.
    Clustering(clustering::Clustering),
    /// Retrieval.
    Retrieval(retrieval::Retrieval),
}

impl Task {
    /// Loads `spec` from `data_dir`, keeping about `limit` items for a quick run.
    pub fn load(spec: &TaskSpec, data_dir: &Path, limit: Option<usize>) -> Result<Self> {
        let p = data_dir.join(spec.path);
        Ok(match spec.kind {
            TaskKind::Sts => Self::Sts(sts::Sts::load(&p, limit)?),
            TaskKind::Classification => {
                Self::Classification(classification::Classification::load(&p, limit)?)
            }
            TaskKind::Clustering => Self::Clustering(clustering::Clustering::load(&p, limit)?),
            TaskKind::Retrieval => Self::Retrieval(retrieval::Retrieval::load(&p, limit)?),
        })
    }

    /// The distinct texts to embed, in the order rows are expected.
    pub fn texts(&self) -> &[String] {
        match self {
            Self::Sts(t) => t.texts(),
            Self::Classification(t) => t.texts(),
            Self::Clustering(t) => t.texts(),
            Self::Retrieval(t) => t.texts(),
        }
    }

    /// Scores one row per text (the first score is the main one).
    pub fn score(&self, emb: &[Vec<f32>]) -> Result<Vec<Score>> {
        if emb.len() != self.texts().len() {
            return Err(EvalError::shape(
                "task embeddings",
                format!("{} rows (one per text)", self.texts().len()),
                emb.len(),
            ));
        }
        if let Some(r) = emb.iter().find(|r| r.len() != emb[0].len() || r.is_empty()) {
            return Err(EvalError::shape(
                "task embeddings",
                format!("rows of {} values", emb[0].len()),
                r.len(),
            ));
        }
        for (row, r) in emb.iter().enumerate() {
            if let Some(column) = r.iter().position(|x| !x.is_finite()) {
                return Err(EvalError::NonFinite {
                    what: "task embeddings".into(),
                    row,
                    column,
                    value: r[column],
                });
            }
        }
        match self {
            Self::Sts(t) => t.score(emb),
            Self::Classification(t) => t.score(emb),
            Self::Clustering(t) => t.score(emb),
            Self::Retrieval(t) => t.score(emb),
        }
    }

    /// Embeds the texts with `encoder` and scores them.
    pub fn evaluate(&self, encoder: &mut dyn Encoder) -> Result<Vec<Score>> {
        let emb = encoder.encode(self.texts())?;
        self.score(&emb)
    }
}
