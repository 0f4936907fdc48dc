//! Classification by a linear probe, MTEB's protocol: for each of 10
//! experiments, draw 8 training texts per label (a seeded shuffle of the
//! training set, then the first 8 of each label), fit a multinomial logistic
//! regression (C = 1) on their embeddings, score the whole test set; report
//! the mean accuracy and macro-F1 × 100. The embeddings are used as given
//! (no normalisation), as MTEB does. The shuffle is our own SplitMix64, so
//! the draws are not MTEB's NumPy ones: numbers agree in expectation only.

use std::collections::BTreeSet;
use std::path::Path;

use rayon::prelude::*;

use super::text_list::TextList;
use super::tsv::read_tsv;
use super::{Score, subsample};

use crate::metrics::f1::{accuracy, macro_f1};
use crate::metrics::kmeans::SplitMix64;
use crate::metrics::logreg::{LogRegOptions, LogisticRegression};
use crate::{EvalError, Result};

/// Experiments averaged.
pub const EXPERIMENTS: usize = 10;
/// Training texts drawn per label in each experiment.
pub const SAMPLES_PER_LABEL: usize = 8;
/// Seed of the first experiment's draw.
pub const SEED: u64 = 42;

/// A labelled train and test split.
#[derive(Debug, Clone)]
pub struct Classification {
    texts: TextList,
    /// (text id, label id) of the training rows.
    train: Vec<(usize, usize)>,
    /// (text id, label id) of the test rows.
    test: Vec<(usize, usize)>,
    labels: Vec<String>,
}

/// Reads `label text` rows into (text, label) pairs.
pub(super) fn read_labelled(path: &Path, limit: Option<usize>) -> Result<Vec<(String, String)>> {
    let rows = read_tsv(path, &["label", "text"])?;
    // No rows would leave nothing to train on or to score (an empty test
    // set averaged to 0, a score no model earned).
    if rows.is_empty() {
        return Err(EvalError::Empty {
            path: path.to_path_buf(),
            msg: "no labelled rows".into(),
        });
    }
    Ok(subsample(rows, limit)
        .into_iter()
        .map(|(_, mut f)| {
            let text = f.pop().expect("two fields");
            (text, f.pop().expect("two fields"))
        })
        .collect())
}

impl Classification {
    /// Reads `dir/train.tsv` and `dir/test.tsv`.
    pub fn load(dir: &Path, limit: Option<usize>) -> Result<Self> {
        let train = read_labelled(&dir.join("train.tsv"), limit)?;
        let test = read_labelled(&dir.join("test.tsv"), limit)?;
        let labels: Vec<String> = train
            .iter()
            .chain(&test)
            .map(|(_, l)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut texts = TextList::default();
        let mut ids = |rows: Vec<(String, String)>| -> Vec<(usize, usize)> {
            rows.into_iter()
                .map(|(t, l)| {
                    (
                        texts.id(&t),
                        labels.binary_search(&l).expect("collected above"),
                    )
                })
                .collect()
        };
        let train = ids(train);
        let test = ids(test);
        Ok(Self {
            texts,
            train,
            test,
            labels,
        })
    }

    /// Training texts, then test texts (distinct).
    pub fn texts(&self) -> &[String] {
        self.texts.texts()
    }

    /// The training rows of experiment `e`: a shuffle, then up to
    /// [`SAMPLES_PER_LABEL`] per label in shuffled order.
    fn draw(&self, e: usize) -> Vec<(usize, usize)> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        let mut rng = SplitMix64::new(SEED + e as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut taken = vec![0usize; self.labels.len()];
        let mut out = Vec::new();
        for i in order {
            let (t, l) = self.train[i];
            if taken[l] < SAMPLES_PER_LABEL {
                taken[l] += 1;
                out.push((t, l));
            }
        }
        out
    }

    /// Mean accuracy and macro-F1 × 100 over the experiments.
    pub fn score(&self, emb: &[Vec<f32>]) -> Result<Vec<Score>> {
        let test_x: Vec<Vec<f32>> = self.test.iter().map(|&(t, _)| emb[t].clone()).collect();
        let test_y: Vec<usize> = self.test.iter().map(|&(_, l)| l).collect();
        // The experiments are independent fits: one per thread, summed in
        // experiment order afterwards so the score does not depend on timing.
        let per: Vec<(f64, f64)> = (0..EXPERIMENTS)
            .into_par_iter()
            .map(|e| {
                let rows = self.draw(e);
                let x: Vec<Vec<f32>> = rows.iter().map(|&(t, _)| emb[t].clone()).collect();
                let y: Vec<usize> = rows.iter().map(|&(_, l)| l).collect();
                let model =
                    LogisticRegression::fit(&x, &y, self.labels.len(), &LogRegOptions::default())?;
                let pred = model.predict(&test_x)?;
                Ok((accuracy(&test_y, &pred)?, macro_f1(&test_y, &pred)?))
            })
            .collect::<Result<_>>()?;
        let (mut acc, mut f1) = (0.0, 0.0);
        for (a, f) in per {
            acc += a;
            f1 += f;
        }
        let n = EXPERIMENTS as f64;
        Ok(vec![
            Score::new("accuracy", 100.0 * acc / n),
            Score::new("macro_f1", 100.0 * f1 / n),
        ])
    }
}
