//! The k memory tokens: new vocabulary rows V..V+k the encoder appends after
//! the text, trained with the adapters.
//!
//! Rows start at the mean of the existing embedding rows plus Gaussian noise
//! of a tenth of each coordinate's spread: the mean puts them where the
//! model's inputs live (a zero or random-scale row would be out of
//! distribution for the first norm), and the noise keeps the k rows distinct
//! so they can specialise. The noise is counter-based from the run seed.

use llm2comp_tensor::Tensor;

use crate::seeds::{self, Stream};
use crate::{CompressError, Result};

/// Relative scale of the initial noise (× each coordinate's standard deviation).
pub const INIT_NOISE: f64 = 0.1;

/// Which embedding rows the encoder trains (`memory`: the k new rows only,
/// the default; `all`: also the encoder's copy of the whole table, as the
/// authors' code does — the decoder and teacher keep the original rows).
pub use llm2comp_backbone::adapter::TrainEmbeddings;

/// k initial memory rows [k, H] for the embedding `table` [V, H] (f32, host).
pub fn init_rows(table: &Tensor, k: usize, seed: u64) -> Result<Tensor> {
    let (v, h) = table.dims2("memory tokens", "embedding table")?;
    if k == 0 {
        return Err(CompressError::Config(
            "--memory-tokens must be at least 1".into(),
        ));
    }
    let t = table.to_vec_f32();
    let mut mean = vec![0f64; h];
    let mut sq = vec![0f64; h];
    for row in t.chunks_exact(h) {
        for ((m, s), &x) in mean.iter_mut().zip(&mut sq).zip(row) {
            *m += x as f64;
            *s += x as f64 * x as f64;
        }
    }
    let std: Vec<f64> = mean
        .iter_mut()
        .zip(&sq)
        .map(|(m, &s)| {
            *m /= v as f64;
            (s / v as f64 - *m * *m).max(0.0).sqrt()
        })
        .collect();
    let base = seeds::derive(seed, Stream::MemoryInit, 0, 0);
    let rows: Vec<f32> = (0..k * h)
        .map(|i| {
            let j = i % h;
            (mean[j] + INIT_NOISE * std[j] * gaussian(base, i as u64)) as f32
        })
        .collect();
    Ok(Tensor::from_vec(rows, &[k, h])?)
}

/// A standard normal draw (Box–Muller) for counter `i` of stream `seed`.
fn gaussian(seed: u64, i: u64) -> f64 {
    let a = seeds::mix(seed ^ seeds::mix(2 * i));
    let b = seeds::mix(seed ^ seeds::mix(2 * i + 1));
    // u1 in (0, 1]: never 0, so ln is finite.
    let u1 = ((a >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sit_at_the_mean_with_small_distinct_noise() {
        let (v, h) = (400, 6);
        let table: Vec<f32> = (0..v * h)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0 + (i % h) as f32)
            .collect();
        let t = Tensor::from_vec(table.clone(), &[v, h]).unwrap();
        let rows = init_rows(&t, 8, 42).unwrap().to_vec_f32();
        for j in 0..h {
            let col: Vec<f64> = table.iter().skip(j).step_by(h).map(|&x| x as f64).collect();
            let mean = col.iter().sum::<f64>() / v as f64;
            let std = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v as f64).sqrt();
            for r in 0..8 {
                let x = rows[r * h + j] as f64;
                assert!(
                    (x - mean).abs() < 5.0 * INIT_NOISE * std,
                    "row {r} col {j}: {x} vs {mean}"
                );
            }
            assert_ne!(rows[j], rows[h + j], "rows must differ");
        }
        assert_eq!(rows, init_rows(&t, 8, 42).unwrap().to_vec_f32());
        assert_ne!(rows, init_rows(&t, 8, 43).unwrap().to_vec_f32());
        assert!(init_rows(&t, 0, 1).is_err());
    }

    #[test]
    fn gaussian_has_unit_moments() {
        let n = 20000;
        let xs: Vec<f64> = (0..n).map(|i| gaussian(9, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
