//! Average precision of scores against binary labels, thresholded at each
//! distinct score (scikit-learn's `average_precision_score`): tied scores are
//! one threshold, so their order does not change the result. MTEB's
//! reranking task averages it over queries (MAP); pair classification uses
//! it over all pairs.

use crate::{EvalError, Result};

/// Σ over distinct thresholds of (recall gain) × precision; `None` when no
/// label is positive (AP is undefined).
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Result<Option<f64>> {
    if scores.len() != positive.len() {
        return Err(EvalError::shape(
            "average_precision",
            format!("{} labels", scores.len()),
            positive.len(),
        ));
    }
    let total = positive.iter().filter(|&&p| p).count();
    if total == 0 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        // Take the whole block of equal scores at once.
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            seen += 1;
            tp += usize::from(positive[order[i]]);
            i += 1;
        }
        let recall = tp as f64 / total as f64;
        ap += (recall - last_recall) * (tp as f64 / seen as f64);
        last_recall = recall;
    }
    Ok(Some(ap))
}

/// Mean of [`average_precision`] over queries that have a positive.
pub fn mean_average_precision(queries: &[(Vec<f64>, Vec<bool>)]) -> Result<f64> {
    let mut sum = 0.0;
    let mut n = 0;
    for (s, p) in queries {
        if let Some(ap) = average_precision(s, p)? {
            sum += ap;
            n += 1;
        }
    }
    if n == 0 {
        return Err(EvalError::shape(
            "mean_average_precision",
            "a query with a positive",
            "none",
        ));
    }
    Ok(sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // Ranked: .9 P, .8 N, .7 P, .1 N: precision at the hits 1 and 2/3; AP = (1 + 2/3)/2.
        let ap = average_precision(&[0.1, 0.9, 0.7, 0.8], &[false, true, true, false])
            .unwrap()
            .unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
        // Ties: .9 P; then {.5 P, .5 N} one threshold: recall .5 -> 1 at precision 2/3.
        // AP = .5*1 + .5*(2/3) = 5/6, whichever order the tie is in.
        for pos in [[true, true, false], [true, false, true]] {
            let s = [0.9, 0.5, 0.5];
            let ap = average_precision(&s, &pos).unwrap().unwrap();
            assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
        }
        // Without the tie, N first: 1*.5 + (2/3)*.5 too, but P first gives 1.
        let ap = average_precision(&[0.9, 0.6, 0.5], &[true, true, false])
            .unwrap()
            .unwrap();
        assert_eq!(ap, 1.0);
        assert_eq!(average_precision(&[0.3], &[false]).unwrap(), None);
        let map = mean_average_precision(&[
            (vec![0.9, 0.6, 0.5], vec![true, true, false]),
            (vec![0.9, 0.1], vec![false, true]),
            (vec![0.9], vec![false]),
        ])
        .unwrap();
        // (1 + 0.5) / 2; the query without a positive is skipped.
        assert!((map - 0.75).abs() < 1e-12, "{map}");
    }
}
