//! Pearson and Spearman correlation, in f64.
//!
//! Spearman is Pearson on ranks, with tied values given the average of the
//! ranks they span (what SciPy's `spearmanr` does); STS gold scores are tied
//! often (many pairs score exactly 4.0), so the tie rule changes the number.

use crate::{EvalError, Result};

/// Pearson correlation of `x` and `y` (0 when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return Err(EvalError::shape(
            "pearson",
            "two series of one length >= 2",
            format!("{} and {}", x.len(), y.len()),
        ));
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return Ok(0.0);
    }
    Ok(sxy / (sxx * syy).sqrt())
}

/// 1-based ranks of `x`, ties sharing the mean of their ranks.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // Positions i..=j hold one value: ranks i+1 ..= j+1, mean (i+j)/2 + 1.
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation of `x` and `y`.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        return Err(EvalError::shape(
            "spearman",
            "two series of one length",
            format!("{} and {}", x.len(), y.len()),
        ));
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        // 10 < 20 = 20 < 30 = 30 = 30: ranks 1, 2.5, 2.5, 5, 5, 5.
        let r = average_ranks(&[20.0, 30.0, 10.0, 30.0, 20.0, 30.0]);
        assert_eq!(r, vec![2.5, 5.0, 1.0, 5.0, 2.5, 5.0]);
    }

    #[test]
    fn pearson_by_hand() {
        // x = 1,2,3,4 (mean 2.5), y = 2,1,4,3 (mean 2.5):
        // dx = -1.5,-.5,.5,1.5; dy = -.5,-1.5,1.5,.5; sxy = .75+.75+.75+.75 = 3;
        // sxx = syy = 5 -> r = 0.6.
        let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]).unwrap();
        assert!((r - 0.6).abs() < 1e-12, "{r}");
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), 0.0);
        assert!(pearson(&[1.0], &[1.0]).is_err());
    }

    #[test]
    fn spearman_with_ties_by_hand() {
        // x = 1,2,2,3 -> ranks 1,2.5,2.5,4; y = 1,3,2,4 -> ranks 1,3,2,4.
        // dx = -1.875+... use means 2.5: dx = -1.5,0,0,1.5; dy = -1.5,.5,-.5,1.5.
        // sxy = 2.25+0+0+2.25 = 4.5; sxx = 4.5; syy = 2.25+.25+.25+2.25 = 5.
        // rho = 4.5 / sqrt(4.5*5) = 0.9486832980505138.
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((r - 0.948_683_298_050_513_8).abs() < 1e-12, "{r}");
        // Monotone but non-linear: Spearman 1, Pearson below 1.
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &y).unwrap() - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y).unwrap() < 0.99);
        assert!((spearman(&x, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
    }
}
