//! Which texts a contrastive micro-batch embeds and which embedding rows
//! are queries and keys. SimCSE puts both dropout views of every passage in
//! one batch (query = view 0, its key = view 1, the other passages' views
//! are the negatives); the supervised stage embeds queries, then all
//! positives, then all hard negatives, and scores each query against every
//! positive and negative (label = its own positive).
//!
//! Dropout seeds are drawn per *text* from (seed, step, micro, role, index),
//! never per forward call, so the masks a passage sees do not depend on how
//! the batch is cut into mini-batches (GradCache) — only on its place in
//! the step.

use llm2comp_compress::seeds::{self, Stream};

use crate::data::Triple;
use crate::{ContrastError, Result};

/// Query rows, key rows and each query's positive key (indices into the
/// batch's embedding rows; `labels` index into `keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    /// Embedding rows used as queries.
    pub queries: Vec<usize>,
    /// Embedding rows used as keys (positives and negatives).
    pub keys: Vec<usize>,
    /// Per query, the position in `keys` of its positive.
    pub labels: Vec<u32>,
}

/// The texts of one micro-batch, their dropout seeds and the pairing.
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastBatch {
    /// Text token ids (no BOS, no memory tokens: the encoder adds them).
    pub texts: Vec<Vec<u32>>,
    /// One dropout seed per text, or `None` for no dropout.
    pub dropout: Option<Vec<u64>>,
    /// Which rows are compared with which.
    pub pairing: Pairing,
}

/// Roles of a text, for its dropout seed.
const ROLE_VIEW0: u64 = 0;
const ROLE_VIEW1: u64 = 1;
const ROLE_QUERY: u64 = 2;
const ROLE_POSITIVE: u64 = 3;
const ROLE_NEGATIVE: u64 = 4;

/// The seed of text `index` in role `role` of micro-batch (step, micro).
pub fn text_seed(seed: u64, step: u64, micro: usize, role: u64, index: u64) -> u64 {
    let mb = seeds::derive(seed, Stream::Dropout, step, micro as u64);
    seeds::derive(mb, Stream::Dropout, role, index)
}

/// Where dropout seeds come from: `Some((seed, step, micro))` in training.
pub type SeedAt = Option<(u64, u64, usize)>;

fn seed_of(at: SeedAt, role: u64, index: usize) -> Option<u64> {
    at.map(|(s, step, micro)| text_seed(s, step, micro, role, index as u64))
}

/// SimCSE: every passage twice (rows i and B + i); query i's key is row B + i.
pub fn simcse(passages: &[&[u32]], dropout: SeedAt) -> Result<ContrastBatch> {
    let b = passages.len();
    if b < 2 {
        return Err(ContrastError::Config(format!(
            "SimCSE needs at least 2 passages per batch (in-batch negatives), got {b}"
        )));
    }
    let texts: Vec<Vec<u32>> = passages
        .iter()
        .chain(passages)
        .map(|p| p.to_vec())
        .collect();
    let dropout = dropout.map(|_| {
        (0..b)
            .map(|i| seed_of(dropout, ROLE_VIEW0, i).expect("some"))
            .chain((0..b).map(|i| seed_of(dropout, ROLE_VIEW1, i).expect("some")))
            .collect()
    });
    Ok(ContrastBatch {
        texts,
        dropout,
        pairing: Pairing {
            queries: (0..b).collect(),
            keys: (b..2 * b).collect(),
            labels: (0..b as u32).collect(),
        },
    })
}

/// Supervised: rows are the B queries, the B positives, then every hard
/// negative; query i is scored against all positives and negatives, its
/// label is positive i.
pub fn supervised(examples: &[&Triple], dropout: SeedAt) -> Result<ContrastBatch> {
    let b = examples.len();
    if b == 0 {
        return Err(ContrastError::Config(
            "a batch needs at least one example".into(),
        ));
    }
    let mut texts: Vec<Vec<u32>> = examples.iter().map(|e| e.query.clone()).collect();
    texts.extend(examples.iter().map(|e| e.positive.clone()));
    let mut seeds: Vec<Option<u64>> = (0..b)
        .map(|i| seed_of(dropout, ROLE_QUERY, i))
        .chain((0..b).map(|i| seed_of(dropout, ROLE_POSITIVE, i)))
        .collect();
    for e in examples {
        for n in &e.negatives {
            seeds.push(seed_of(dropout, ROLE_NEGATIVE, texts.len() - 2 * b));
            texts.push(n.clone());
        }
    }
    if b == 1 && texts.len() == 2 {
        return Err(ContrastError::Config(
            "one example without negatives leaves nothing to contrast with".into(),
        ));
    }
    let n = texts.len();
    Ok(ContrastBatch {
        texts,
        dropout: dropout.map(|_| seeds.into_iter().map(|s| s.expect("some")).collect()),
        pairing: Pairing {
            queries: (0..b).collect(),
            keys: (b..n).collect(),
            labels: (0..b as u32).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simcse_pairs_each_view_with_its_twin() {
        let p: Vec<Vec<u32>> = vec![vec![5, 6], vec![7], vec![8, 9, 10]];
        let refs: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
        let b = simcse(&refs, Some((1, 2, 0))).unwrap();
        assert_eq!(b.texts.len(), 6);
        assert_eq!(b.texts[4], vec![7]);
        assert_eq!(b.pairing.queries, [0, 1, 2]);
        assert_eq!(b.pairing.keys, [3, 4, 5]);
        assert_eq!(b.pairing.labels, [0, 1, 2]);
        let s = b.dropout.unwrap();
        // Two views of one passage get different masks; all seeds differ.
        let mut u = s.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 6);
        assert!(simcse(&refs, None).unwrap().dropout.is_none());
        assert!(simcse(&refs[..1], None).is_err());
        // Another micro-batch draws other seeds.
        assert_ne!(simcse(&refs, Some((1, 2, 1))).unwrap().dropout.unwrap(), s);
    }

    #[test]
    fn supervised_scores_queries_against_all_positives_and_negatives() {
        let t = |q: u32, n: usize| Triple {
            query: vec![q],
            positive: vec![q + 100],
            negatives: (0..n).map(|j| vec![q + 200 + j as u32]).collect(),
        };
        let ex = [t(1, 2), t(2, 0), t(3, 1)];
        let refs: Vec<&Triple> = ex.iter().collect();
        let b = supervised(&refs, None).unwrap();
        let flat: Vec<u32> = b.texts.iter().map(|x| x[0]).collect();
        assert_eq!(flat, [1, 2, 3, 101, 102, 103, 201, 202, 203]);
        assert_eq!(b.pairing.queries, [0, 1, 2]);
        assert_eq!(b.pairing.keys, (3..9).collect::<Vec<_>>());
        assert_eq!(b.pairing.labels, [0, 1, 2]);
        assert!(supervised(&refs[1..2], None).is_err());
        assert!(supervised(&[], None).is_err());
    }
}
