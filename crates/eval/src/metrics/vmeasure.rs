//! V-measure (Rosenberg & Hirschberg 2007): the harmonic mean of homogeneity
//! 1 − H(C|K)/H(C) and completeness 1 − H(K|C)/H(K), from the contingency
//! table of gold classes C and clusters K, with natural logarithms (the base
//! cancels). A degenerate side (one class, or one cluster) scores 1, as in
//! scikit-learn.

use std::collections::HashMap;

use crate::{EvalError, Result};

fn entropy(counts: &HashMap<usize, usize>, n: f64) -> f64 {
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// V-measure of `clusters` against gold `labels`.
pub fn v_measure(labels: &[usize], clusters: &[usize]) -> Result<f64> {
    if labels.len() != clusters.len() || labels.is_empty() {
        return Err(EvalError::shape(
            "v_measure",
            "labels and clusters of one non-zero length",
            format!("{} and {}", labels.len(), clusters.len()),
        ));
    }
    let n = labels.len() as f64;
    let mut by_class: HashMap<usize, usize> = HashMap::new();
    let mut by_cluster: HashMap<usize, usize> = HashMap::new();
    let mut joint: HashMap<(usize, usize), usize> = HashMap::new();
    for (&c, &k) in labels.iter().zip(clusters) {
        *by_class.entry(c).or_default() += 1;
        *by_cluster.entry(k).or_default() += 1;
        *joint.entry((c, k)).or_default() += 1;
    }
    let h_c = entropy(&by_class, n);
    let h_k = entropy(&by_cluster, n);
    // H(C|K) = −Σ n_ck/n · ln(n_ck / n_k); H(K|C) likewise with n_c.
    let (mut h_c_k, mut h_k_c) = (0.0, 0.0);
    for (&(c, k), &nck) in &joint {
        let p = nck as f64 / n;
        h_c_k -= p * (nck as f64 / by_cluster[&k] as f64).ln();
        h_k_c -= p * (nck as f64 / by_class[&c] as f64).ln();
    }
    let h = if h_c == 0.0 { 1.0 } else { 1.0 - h_c_k / h_c };
    let c = if h_k == 0.0 { 1.0 } else { 1.0 - h_k_c / h_k };
    if h + c == 0.0 {
        return Ok(0.0);
    }
    Ok(2.0 * h * c / (h + c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // Perfect up to renaming.
        assert!((v_measure(&[0, 0, 1, 1], &[5, 5, 2, 2]).unwrap() - 1.0).abs() < 1e-12);
        // Classes 0,0,1,1 in clusters 0,0,0,1:
        // H(C) = ln2; H(K) = −(.75 ln .75 + .25 ln .25) = 0.5623351446;
        // H(C|K) = −(.5 ln(2/3) + .25 ln(1/3) + .25 ln 1) = 0.4773856262;
        // H(K|C) = −(.5 ln 1 + .25 ln .5 + .25 ln .5) = 0.3465735903.
        // h = 1 − .4773856262/.6931471806 = 0.3112781245;
        // c = 1 − .3465735903/.5623351446 = 0.3836885465; v = 2hc/(h+c) = 0.3437110184.
        let v = v_measure(&[0, 0, 1, 1], &[0, 0, 0, 1]).unwrap();
        assert!((v - 0.343_711_018_4).abs() < 1e-9, "{v}");
        // Everything in one cluster: completeness 1, homogeneity 0 -> 0.
        assert_eq!(v_measure(&[0, 1], &[0, 0]).unwrap(), 0.0);
        assert!(v_measure(&[0], &[]).is_err());
    }
}
