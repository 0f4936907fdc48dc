//! Retrieval in the BEIR layout: every test query (one with a relevant
//! judged document) ranks the whole corpus by cosine; nDCG@10 × 100 (MTEB's
//! main score) and recall@100 × 100, averaged over queries. A document's
//! text is `title text` (as MTEB joins them). Equal scores rank by corpus
//! order, so the result does not depend on the sort.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::text_list::TextList;
use super::tsv::{read_to_string, read_tsv};
use super::{Score, subsample};
use crate::metrics::cosine::unit_rows;
use crate::metrics::ranking::{ndcg_at_k, recall_at_k};
use crate::{EvalError, Result};

/// Queries, corpus and graded judgements.
#[derive(Debug, Clone)]
pub struct Retrieval {
    texts: TextList,
    /// (text id, judgements) per query.
    queries: Vec<(usize, HashMap<String, u32>)>,
    /// (document id, text id) per document.
    docs: Vec<(String, usize)>,
}

/// (`_id`, text) of each line of a BEIR JSONL file.
fn read_jsonl(path: &Path, with_title: bool) -> Result<Vec<(String, String)>> {
    let text = read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |msg: String| EvalError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let id = field("_id").ok_or_else(|| bad("no string \"_id\"".into()))?;
        let body = field("text").ok_or_else(|| bad("no string \"text\"".into()))?;
        let t = match field("title").filter(|t| with_title && !t.is_empty()) {
            Some(title) => format!("{title} {body}"),
            None => body,
        };
        out.push((id, t.trim().to_string()));
    }
    Ok(out)
}

impl Retrieval {
    /// Reads `dir/{corpus,queries}.jsonl` and `dir/qrels.tsv`. With a limit:
    /// that many queries, their judged documents and that many others.
    pub fn load(dir: &Path, limit: Option<usize>) -> Result<Self> {
        let qrels_path = dir.join("qrels.tsv");
        let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (line, f) in read_tsv(&qrels_path, &["query-id", "corpus-id", "score"])? {
            let rel: u32 = f[2].trim().parse().map_err(|_| EvalError::Parse {
                path: qrels_path.clone(),
                line,
                msg: format!("relevance {:?} is not a non-negative integer", f[2]),
            })?;
            qrels
                .entry(f[0].clone())
                .or_default()
                .insert(f[1].clone(), rel);
        }
        let queries: Vec<(String, String)> = read_jsonl(&dir.join("queries.jsonl"), false)?
            .into_iter()
            .filter(|(id, _)| qrels.get(id).is_some_and(|q| q.values().any(|&r| r > 0)))
            .collect();
        // No usable query (or no document) would average nothing and
        // report 0.00, indistinguishable from a model that finds nothing.
        if queries.is_empty() {
            return Err(EvalError::Empty {
                path: dir.to_path_buf(),
                msg: "no query in queries.jsonl has a relevant (score > 0) judgement in qrels.tsv"
                    .into(),
            });
        }
        let queries = subsample(queries, limit);
        let mut texts = TextList::default();
        let mut judged = HashSet::new();
        let queries: Vec<(usize, HashMap<String, u32>)> = queries
            .into_iter()
            .map(|(id, t)| {
                let q = qrels.remove(&id).expect("filtered above");
                judged.extend(q.keys().cloned());
                (texts.id(&t), q)
            })
            .collect();
        let mut docs = Vec::new();
        for (i, (id, t)) in read_jsonl(&dir.join("corpus.jsonl"), true)?
            .into_iter()
            .enumerate()
        {
            if limit.is_none_or(|n| i < n || judged.contains(&id)) {
                docs.push((id, texts.id(&t)));
            }
        }
        if docs.is_empty() {
            return Err(EvalError::Empty {
                path: dir.join("corpus.jsonl"),
                msg: "the corpus has no documents".into(),
            });
        }
        Ok(Self {
            texts,
            queries,
            docs,
        })
    }

    /// Queries, then documents (distinct texts).
    pub fn texts(&self) -> &[String] {
        self.texts.texts()
    }

    /// nDCG@10 and recall@100 × 100.
    pub fn score(&self, emb: &[Vec<f32>]) -> Result<Vec<Score>> {
        let unit = unit_rows(emb);
        let (mut ndcg, mut recall) = (0.0, 0.0);
        for (q, judgements) in &self.queries {
            let qv = &unit[*q];
            let mut scored: Vec<(f32, usize)> = self
                .docs
                .iter()
                .enumerate()
                .map(|(i, (_, t))| (unit[*t].iter().zip(qv).map(|(a, b)| a * b).sum::<f32>(), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let ranked: Vec<&str> = scored
                .iter()
                .take(100)
                .map(|&(_, i)| self.docs[i].0.as_str())
                .collect();
            ndcg += ndcg_at_k(&ranked, judgements, 10).unwrap_or(0.0);
            recall += recall_at_k(&ranked, judgements, 100).unwrap_or(0.0);
        }
        if self.queries.is_empty() || self.docs.is_empty() {
            return Err(EvalError::shape(
                "retrieval",
                "at least one query and one document",
                format!(
                    "{} queries, {} documents",
                    self.queries.len(),
                    self.docs.len()
                ),
            ));
        }
        let n = self.queries.len() as f64;
        Ok(vec![
            Score::new("ndcg@10", 100.0 * ndcg / n),
            Score::new("recall@100", 100.0 * recall / n),
        ])
    }
}
