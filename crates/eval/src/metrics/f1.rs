//! Accuracy and macro-F1 of predicted class ids. Macro-F1 averages over the
//! labels that occur in the gold or the predictions (scikit-learn's
//! `f1_score(average="macro")`), so a class the model never predicts counts
//! as an F1 of 0 rather than vanishing from the mean.

use std::collections::BTreeSet;

use crate::{EvalError, Result};

fn check(what: &str, gold: &[usize], pred: &[usize]) -> Result<()> {
    if gold.len() != pred.len() || gold.is_empty() {
        return Err(EvalError::shape(
            what,
            "gold and predictions of one non-zero length",
            format!("{} and {}", gold.len(), pred.len()),
        ));
    }
    Ok(())
}

/// Fraction of predictions equal to the gold label.
pub fn accuracy(gold: &[usize], pred: &[usize]) -> Result<f64> {
    check("accuracy", gold, pred)?;
    let hits = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    Ok(hits as f64 / gold.len() as f64)
}

/// Unweighted mean over labels of 2·TP / (2·TP + FP + FN).
pub fn macro_f1(gold: &[usize], pred: &[usize]) -> Result<f64> {
    check("macro_f1", gold, pred)?;
    let labels: BTreeSet<usize> = gold.iter().chain(pred).copied().collect();
    let mut sum = 0.0;
    for &l in &labels {
        let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
        for (&g, &p) in gold.iter().zip(pred) {
            match (g == l, p == l) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                _ => {}
            }
        }
        let den = 2 * tp + fp + fneg;
        if den > 0 {
            sum += 2.0 * tp as f64 / den as f64;
        }
    }
    Ok(sum / labels.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let gold = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        // 3 of 5 right.
        assert!((accuracy(&gold, &pred).unwrap() - 0.6).abs() < 1e-12);
        // label 0: tp 1, fp 1, fn 1 -> 2/4 = .5; label 1: tp 2, fp 1, fn 0 -> 4/5 = .8;
        // label 2: tp 0, fn 1 -> 0. Mean 1.3/3.
        let f = macro_f1(&gold, &pred).unwrap();
        assert!((f - 1.3 / 3.0).abs() < 1e-12, "{f}");
        // A label only predicted counts: label 3 gets F1 0.
        let f = macro_f1(&[0, 0], &[0, 3]).unwrap();
        // label 0: tp 1, fn 1 -> 2/3; label 3: fp 1 -> 0. Mean 1/3.
        assert!((f - 1.0 / 3.0).abs() < 1e-12, "{f}");
        assert!(accuracy(&[0], &[]).is_err());
    }
}
