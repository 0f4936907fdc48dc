//! Semantic textual similarity: the cosine of the two sentences' embeddings
//! against the gold score, reported as Spearman × 100 (MTEB's main score)
//! and Pearson × 100. Only ranks matter to Spearman, so the gold scale
//! (0–5 for STS, 1–5 for SICK) needs no normalisation.

use std::path::Path;

use super::text_list::TextList;
use super::tsv::read_tsv;
use super::{Score, subsample};
use crate::metrics::correlation::{pearson, spearman};
use crate::metrics::cosine::cosine;
use crate::{EvalError, Result};

/// Loaded STS pairs.
#[derive(Debug, Clone)]
pub struct Sts {
    texts: TextList,
    pairs: Vec<(usize, usize)>,
    gold: Vec<f64>,
}

impl Sts {
    /// Reads a `score sentence1 sentence2` TSV.
    pub fn load(path: &Path, limit: Option<usize>) -> Result<Self> {
        let rows = subsample(read_tsv(path, &["score", "sentence1", "sentence2"])?, limit);
        let mut texts = TextList::default();
        let mut pairs = Vec::new();
        let mut gold = Vec::new();
        for (line, f) in rows {
            // `f64::from_str` takes "NaN" and "inf": a NaN gold score
            // would poison Spearman's ranks, so only finite numbers pass.
            let score: f64 = f[0]
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| EvalError::Parse {
                    path: path.to_path_buf(),
                    line,
                    msg: format!("score {:?} is not a finite number", f[0]),
                })?;
            gold.push(score);
            pairs.push((texts.id(&f[1]), texts.id(&f[2])));
        }
        if pairs.is_empty() {
            return Err(EvalError::Empty {
                path: path.to_path_buf(),
                msg: "no sentence pairs to score".into(),
            });
        }
        Ok(Self { texts, pairs, gold })
    }

    /// The distinct sentences.
    pub fn texts(&self) -> &[String] {
        self.texts.texts()
    }

    /// Spearman and Pearson × 100 of the pairs' cosines.
    pub fn score(&self, emb: &[Vec<f32>]) -> Result<Vec<Score>> {
        let cos = self
            .pairs
            .iter()
            .map(|&(a, b)| cosine(&emb[a], &emb[b]))
            .collect::<Result<Vec<f64>>>()?;
        Ok(vec![
            Score::new("spearman", 100.0 * spearman(&cos, &self.gold)?),
            Score::new("pearson", 100.0 * pearson(&cos, &self.gold)?),
        ])
    }
}
