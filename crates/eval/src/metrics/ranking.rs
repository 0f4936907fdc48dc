//! Retrieval metrics over one ranked list (BEIR / pytrec_eval definitions):
//! nDCG@k with linear gain rel / log2(rank + 1) and the ideal ranking built
//! from all judged documents; recall@k counts documents with relevance > 0.

use std::collections::HashMap;

/// nDCG@k of `ranked` (document ids, best first) against graded `qrels`
/// (document id -> relevance). `None` when no judged document is relevant.
pub fn ndcg_at_k(ranked: &[&str], qrels: &HashMap<String, u32>, k: usize) -> Option<f64> {
    let mut ideal: Vec<u32> = qrels.values().copied().filter(|&r| r > 0).collect();
    if ideal.is_empty() {
        return None;
    }
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &r)| r as f64 * discount(i))
        .sum();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| qrels.get(*d).copied().unwrap_or(0) as f64 * discount(i))
        .sum();
    Some(dcg / idcg)
}

/// Fraction of the relevant documents found in the first k of `ranked`.
pub fn recall_at_k(ranked: &[&str], qrels: &HashMap<String, u32>, k: usize) -> Option<f64> {
    let relevant = qrels.values().filter(|&&r| r > 0).count();
    if relevant == 0 {
        return None;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| qrels.get(**d).is_some_and(|&r| r > 0))
        .count();
    Some(found as f64 / relevant as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    #[test]
    fn ndcg_by_hand() {
        let q = qrels(&[("a", 2), ("b", 1), ("z", 0)]);
        // Ranked x, a, b: DCG = 2/log2(3) + 1/log2(4) = 1.2618595 + .5 = 1.7618595;
        // ideal a, b: 2/1 + 1/log2(3) = 2.6309298; ratio 0.66967...
        let dcg = 2.0 / 3f64.log2() + 0.5;
        let idcg = 2.0 + 1.0 / 3f64.log2();
        let n = ndcg_at_k(&["x", "a", "b"], &q, 10).unwrap();
        assert!(
            (n - dcg / idcg).abs() < 1e-12 && (n - 0.669_679).abs() < 1e-5,
            "{n}"
        );
        assert_eq!(ndcg_at_k(&["a", "b", "x"], &q, 10).unwrap(), 1.0);
        // Cut at 1: only x counts -> 0.
        assert_eq!(ndcg_at_k(&["x", "a"], &q, 1).unwrap(), 0.0);
        assert_eq!(ndcg_at_k(&["a"], &qrels(&[("a", 0)]), 10), None);
    }

    #[test]
    fn recall_by_hand() {
        let q = qrels(&[("a", 1), ("b", 3), ("c", 0)]);
        assert_eq!(recall_at_k(&["c", "b", "x"], &q, 100).unwrap(), 0.5);
        assert_eq!(recall_at_k(&["c", "b", "a"], &q, 2).unwrap(), 0.5);
        assert_eq!(recall_at_k(&["c", "b", "a"], &q, 3).unwrap(), 1.0);
    }
}
