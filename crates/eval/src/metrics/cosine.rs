//! Cosine similarity in f64: embeddings may come unnormalised from any
//! model, so the norms are divided out here rather than assumed to be 1.

use crate::{EvalError, Result};

/// Cosine similarity of `a` and `b` (0 when either is the zero vector).
pub fn cosine(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(EvalError::shape(
            "cosine",
            format!("vectors of one length ({})", a.len()),
            b.len(),
        ));
    }
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return Ok(0.0);
    }
    Ok(ab / (aa.sqrt() * bb.sqrt()))
}

/// Each row scaled to unit L2 norm, so a matrix product gives cosines.
pub fn unit_rows(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let n = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            if n == 0.0 {
                r.clone()
            } else {
                r.iter().map(|&v| (v as f64 / n) as f32).collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_by_hand() {
        // (1,2,2).(2,0,1) = 4; norms 3 and sqrt(5): 4/(3*2.2360679775) = 0.596284794.
        let c = cosine(&[1.0, 2.0, 2.0], &[2.0, 0.0, 1.0]).unwrap();
        assert!((c - 0.596_284_793_999_944).abs() < 1e-9, "{c}");
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]).unwrap(), 0.0);
        assert!((cosine(&[3.0, 0.0], &[-1.0, 0.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0], &[1.0, 2.0]).is_err());
        let u = unit_rows(&[vec![3.0, 4.0], vec![0.0, 0.0]]);
        assert_eq!(u, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
    }
}
