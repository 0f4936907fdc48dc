//! Clustering: k-means on the embeddings of labelled texts with k = the
//! number of labels, scored by V-measure × 100 against the labels. Every
//! row is clustered, so a text that occurs twice counts twice, as in the
//! data. Three seeded k-means++ restarts keep the number stable.

use std::collections::BTreeSet;
use std::path::Path;

use super::Score;
use super::classification::read_labelled;
use super::text_list::TextList;
use crate::Result;
use crate::metrics::kmeans::{KMeansOptions, kmeans};
use crate::metrics::vmeasure::v_measure;

/// Labelled texts to cluster.
#[derive(Debug, Clone)]
pub struct Clustering {
    texts: TextList,
    rows: Vec<(usize, usize)>,
    k: usize,
}

impl Clustering {
    /// Reads a `label text` TSV.
    pub fn load(path: &Path, limit: Option<usize>) -> Result<Self> {
        let data = read_labelled(path, limit)?;
        let labels: Vec<String> = data
            .iter()
            .map(|(_, l)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut texts = TextList::default();
        let rows = data
            .iter()
            .map(|(t, l)| {
                (
                    texts.id(t),
                    labels.binary_search(l).expect("collected above"),
                )
            })
            .collect();
        Ok(Self {
            texts,
            rows,
            k: labels.len(),
        })
    }

    /// The distinct texts.
    pub fn texts(&self) -> &[String] {
        self.texts.texts()
    }

    /// V-measure × 100.
    pub fn score(&self, emb: &[Vec<f32>]) -> Result<Vec<Score>> {
        let x: Vec<Vec<f32>> = self.rows.iter().map(|&(t, _)| emb[t].clone()).collect();
        let labels: Vec<usize> = self.rows.iter().map(|&(_, l)| l).collect();
        let opts = KMeansOptions {
            k: self.k,
            restarts: 3,
            max_iter: 100,
            seed: 42,
        };
        let c = kmeans(&x, &opts)?;
        Ok(vec![Score::new(
            "v_measure",
            100.0 * v_measure(&labels, &c.assignment)?,
        )])
    }
}
