//! Mean pooling over index sets on the CPU: out[s] = mean of the hidden rows
//! listed for set s (CSR: `offsets` [S+1] into `indices`).
//!
//! Forward is a gather, parallel over sets. Backward is a scatter, and sets
//! may share rows (or list one row twice), so scattering in parallel over
//! sets would race. Instead backward transposes the CSR (a counting sort,
//! O(T + nnz)) and gathers again, parallel over hidden rows: each dhidden row
//! is owned by one task, and its sum runs in a fixed order, so the result is
//! deterministic.

use rayon::prelude::*;

use crate::shared::pooling::{span, transpose};

use crate::Real;

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 16;

/// out [S, h] = per-set mean of hidden [T, h] rows; duplicates in a set count twice.
pub fn forward<T: Real>(hidden: &[T], h: usize, offsets: &[u32], indices: &[u32], out: &mut [T]) {
    let sets = offsets.len() - 1;
    assert_eq!(out.len(), sets * h, "pooling: out length");
    if h == 0 {
        return;
    }
    out.par_chunks_mut(h * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, out) in out.chunks_mut(h).enumerate() {
                let idx = &indices[span(offsets, c * ROWS_PER_TASK + i)];
                assert!(!idx.is_empty(), "pooling: empty set");
                out.fill(T::zero());
                for &t in idx {
                    let row = &hidden[t as usize * h..(t as usize + 1) * h];
                    out.iter_mut().zip(row).for_each(|(o, &x)| *o += x);
                }
                let inv = T::one() / T::of(idx.len() as f64);
                out.iter_mut().for_each(|o| *o *= inv);
            }
        });
}

/// dhidden [T, h] = Σ over (set s, listed row t) of dout[s]/|s| at row t; overwritten (unlisted rows are 0).
pub fn backward<T: Real>(
    dout: &[T],
    h: usize,
    offsets: &[u32],
    indices: &[u32],
    dhidden: &mut [T],
) {
    let sets = offsets.len() - 1;
    assert_eq!(dout.len(), sets * h, "pooling: dout length");
    if h == 0 {
        return;
    }
    let tokens = dhidden.len() / h;
    let (row_start, row_sets) = transpose(offsets, indices, tokens);
    let inv_len: Vec<T> = (0..sets)
        .map(|s| T::one() / T::of(span(offsets, s).len() as f64))
        .collect();
    dhidden
        .par_chunks_mut(h * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, dh)| {
            for (i, dh) in dh.chunks_mut(h).enumerate() {
                let t = c * ROWS_PER_TASK + i;
                dh.fill(T::zero());
                for &s in &row_sets[row_start[t]..row_start[t + 1]] {
                    let s = s as usize;
                    let w = inv_len[s];
                    let g = &dout[s * h..(s + 1) * h];
                    dh.iter_mut().zip(g).for_each(|(d, &g)| *d += g * w);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};
    use rand::Rng;

    /// Random CSR: `sets` non-empty sets of up to 6 indices < `tokens`, repeats allowed.
    fn random_sets(seed: u64, sets: usize, tokens: usize) -> (Vec<u32>, Vec<u32>) {
        let mut r = rng(seed);
        let mut offsets = vec![0u32];
        let mut indices = Vec::new();
        for _ in 0..sets {
            for _ in 0..r.random_range(1..=6) {
                indices.push(r.random_range(0..tokens as u32));
            }
            offsets.push(indices.len() as u32);
        }
        (offsets, indices)
    }

    /// The mean by the definition, one set at a time, in f64.
    fn naive(hidden: &[f64], h: usize, offsets: &[u32], indices: &[u32]) -> Vec<f64> {
        let mut out = Vec::new();
        for s in 0..offsets.len() - 1 {
            let idx = &indices[offsets[s] as usize..offsets[s + 1] as usize];
            for j in 0..h {
                let sum: f64 = idx.iter().map(|&t| hidden[t as usize * h + j]).sum();
                out.push(sum / idx.len() as f64);
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive_f32() {
        let (tokens, h, sets) = (53, 37, 41);
        let (offsets, indices) = random_sets(31, sets, tokens);
        let hidden: Vec<f32> = uniform(&mut rng(32), tokens * h, 2.0);
        let mut out = vec![f32::NAN; sets * h];
        forward(&hidden, h, &offsets, &indices, &mut out);
        let h64: Vec<f64> = hidden.iter().map(|&v| v as f64).collect();
        let want: Vec<f32> = naive(&h64, h, &offsets, &indices)
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close("pooling forward", &out, &want, 1e-6);
    }

    #[test]
    fn duplicate_indices_weigh_twice() {
        let hidden = [1.0f64, 10.0, 4.0, 40.0];
        let (offsets, indices) = ([0u32, 3], [1u32, 0, 1]);
        let mut out = [f64::NAN; 2];
        forward(&hidden, 2, &offsets, &indices, &mut out);
        assert_eq!(out, [3.0, 30.0]);
        let mut dh = [f64::NAN; 4];
        backward(&[3.0, 6.0], 2, &offsets, &indices, &mut dh);
        assert_eq!(dh, [1.0, 2.0, 2.0, 4.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        // Overlapping sets with repeats; some tokens are in no set (their gradient is 0).
        let (tokens, h, sets) = (23, 5, 17);
        let (offsets, indices) = random_sets(33, sets, tokens);
        let mut r = rng(34);
        let hidden: Vec<f64> = uniform(&mut r, tokens * h, 1.0);
        let g: Vec<f64> = uniform(&mut r, sets * h, 1.0);
        let f = |x: &[f64]| {
            let mut out = vec![0.0; sets * h];
            forward(x, h, &offsets, &indices, &mut out);
            dot(&out, &g)
        };
        let mut dh = vec![f64::NAN; tokens * h];
        backward(&g, h, &offsets, &indices, &mut dh);
        check_grad("pooling dhidden", f, &hidden, &dh, 200);
        let unlisted = (0..tokens as u32).find(|t| !indices.contains(t));
        if let Some(t) = unlisted {
            assert!(dh[t as usize * h..][..h].iter().all(|&v| v == 0.0));
        }
    }
}
