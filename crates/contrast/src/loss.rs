//! The contrastive loss over a batch's embeddings: gather the query and key
//! rows, InfoNCE on cosine / τ (`ops::infonce`, which backpropagates through
//! the L2 normalisation), and scatter dq and dk back onto the embedding rows
//! (a row can be both a query and a key elsewhere, so the scatter adds).

use llm2comp_tensor::Tensor;
use llm2comp_tensor::ops::{embedding, infonce};

use crate::{ContrastError, Pairing, Result};

fn rows(ix: &[usize]) -> Vec<u32> {
    ix.iter().map(|&r| r as u32).collect()
}

/// The mean InfoNCE loss of `pairing` over `emb` [N, H] at temperature
/// `tau`, computed on the host in f64: `ops::infonce` reports its loss in
/// f32, whose rounding (× 1/τ) would swamp the finite differences that
/// check the gradient, and B·M·H is small next to the model.
pub fn value(emb: &Tensor, pairing: &Pairing, tau: f32) -> Result<f64> {
    let (n, h) = emb.dims2("contrastive loss", "embeddings")?;
    check(pairing, n, tau)?;
    let e = emb.to_device(llm2comp_tensor::Device::Cpu)?.to_vec_f32();
    let unit = |r: usize| -> Vec<f64> {
        let v: Vec<f64> = e[r * h..(r + 1) * h].iter().map(|&x| x as f64).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|x| x / norm).collect()
    };
    let keys: Vec<Vec<f64>> = pairing.keys.iter().map(|&k| unit(k)).collect();
    let mut total = 0.0;
    for (&q, &label) in pairing.queries.iter().zip(&pairing.labels) {
        let qv = unit(q);
        let s: Vec<f64> = keys
            .iter()
            .map(|k| k.iter().zip(&qv).map(|(a, b)| a * b).sum::<f64>() / tau as f64)
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - s[label as usize];
    }
    Ok(total / pairing.queries.len() as f64)
}

fn check(p: &Pairing, n: usize, tau: f32) -> Result<()> {
    let bad_row = p.queries.iter().chain(&p.keys).find(|&&r| r >= n);
    let bad_label = p.labels.iter().find(|&&l| l as usize >= p.keys.len());
    if p.queries.is_empty() || p.keys.is_empty() || p.labels.len() != p.queries.len() {
        return Err(ContrastError::Config(format!(
            "contrastive loss: {} queries, {} keys, {} labels",
            p.queries.len(),
            p.keys.len(),
            p.labels.len()
        )));
    }
    if let Some(r) = bad_row {
        return Err(ContrastError::Config(format!(
            "contrastive loss: row {r} of {n} embeddings"
        )));
    }
    if let Some(l) = bad_label {
        return Err(ContrastError::Config(format!(
            "contrastive loss: label {l} of {} keys",
            p.keys.len()
        )));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(ContrastError::Config(format!(
            "contrastive loss: temperature {tau}"
        )));
    }
    Ok(())
}

/// The loss and its gradient w.r.t. `emb` [N, H] (fresh, f32).
pub fn value_and_grad(emb: &Tensor, pairing: &Pairing, tau: f32) -> Result<(f64, Tensor)> {
    check(pairing, emb.dims2("contrastive loss", "embeddings")?.0, tau)?;
    let (qi, ki) = (rows(&pairing.queries), rows(&pairing.keys));
    let q = embedding::forward(&qi, emb)?;
    let k = embedding::forward(&ki, emb)?;
    let out = infonce::forward(&q, &k, &pairing.labels, tau)?;
    let g = infonce::backward(&out, &pairing.labels, tau)?;
    let mut demb = Tensor::try_zeros(emb.shape(), g.dq.dtype(), emb.device())?;
    embedding::backward(&qi, &g.dq, &mut demb)?;
    embedding::backward(&ki, &g.dk, &mut demb)?;
    Ok((out.loss as f64, demb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm2comp_tensor::testing::{check_grad_f32_tol, rng, uniform};

    /// Independent f64 reference: −mean log softmax over cosines / τ.
    fn reference(e: &[f32], h: usize, p: &Pairing, tau: f64) -> f64 {
        let row = |r: usize| -> Vec<f64> {
            let v: Vec<f64> = e[r * h..(r + 1) * h].iter().map(|&x| x as f64).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect()
        };
        let mut total = 0.0;
        for (qi, &q) in p.queries.iter().enumerate() {
            let qv = row(q);
            let s: Vec<f64> = p
                .keys
                .iter()
                .map(|&k| row(k).iter().zip(&qv).map(|(a, b)| a * b).sum::<f64>() / tau)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - s[p.labels[qi] as usize];
        }
        total / p.queries.len() as f64
    }

    #[test]
    fn loss_matches_reference_and_gradient_matches_differences() {
        let (n, h) = (7, 5);
        // Row 1 is both a query and a key: its gradient has two parts.
        let p = Pairing {
            queries: vec![0, 1, 2],
            keys: vec![3, 4, 1, 5, 6],
            labels: vec![0, 1, 4],
        };
        let x = uniform::<f32>(&mut rng(3), n * h, 1.0);
        let emb = Tensor::from_vec(x.clone(), &[n, h]).unwrap();
        let tau = 0.5;
        let (l, d) = value_and_grad(&emb, &p, tau).unwrap();
        let l64 = value(&emb, &p, tau).unwrap();
        assert!((l - l64).abs() < 1e-5 * l.abs().max(1.0), "{l} vs {l64}");
        let r = reference(&x, h, &p, tau as f64);
        assert!((l - r).abs() < 1e-5 * r.abs().max(1.0), "{l} vs {r}");
        let f = |xp: &[f32]| reference(xp, h, &p, tau as f64);
        check_grad_f32_tol("contrastive loss", f, &x, &d.to_vec_f32(), 1e-2);
    }
}
