//! Rotary position embedding on the CPU, in the Hugging Face Llama
//! "rotate-half" layout: element i of a head is paired with element i + D/2
//! (not with its neighbour 2i+1 as in the original paper), so checkpoints
//! converted from `transformers` work without permuting q/k projections.
//!
//! Frequencies and the cos/sin tables are computed in f64 and only then
//! rounded to the storage type: at position 10⁵ an f32 angle p·θᵢ has an
//! absolute error of ~10⁻², which a table built in f64 does not have.
//! (`transformers` builds its table in f32, so far positions differ from it
//! by that rounding; short ones agree to f32 precision.)
//!
//! The rotation is applied in place: it reads both members of a pair before
//! writing either. Backward is the same rotation by the negated angle, since
//! a rotation's Jacobian is the rotation itself and its transpose its inverse.

use rayon::prelude::*;

use crate::Real;
pub use crate::shared::rope::{RopeConfig, RopeScaling, cos_sin_tables, inv_freq};

/// Tokens per rayon task.
const TOKENS_PER_TASK: usize = 16;

/// Rotates x: [tokens, n_heads, D] in place by the angles of `positions[token]`.
/// `cos`/`sin` are [max_pos, D/2] from [`cos_sin_tables`]; every position must be < max_pos.
pub fn forward<T: Real>(x: &mut [T], head_dim: usize, positions: &[u32], cos: &[T], sin: &[T]) {
    rotate(x, head_dim, positions, cos, sin, false)
}

/// dx = R(−angle)·dy, in place on `grad` (dy in, dx out); same layout as [`forward`].
pub fn backward<T: Real>(grad: &mut [T], head_dim: usize, positions: &[u32], cos: &[T], sin: &[T]) {
    rotate(grad, head_dim, positions, cos, sin, true)
}

fn rotate<T: Real>(
    x: &mut [T],
    head_dim: usize,
    positions: &[u32],
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let tokens = positions.len();
    if tokens == 0 || x.is_empty() {
        return;
    }
    let half = head_dim / 2;
    assert!(
        head_dim.is_multiple_of(2) && x.len().is_multiple_of(tokens * head_dim),
        "rope: x has {} elements, not tokens {tokens} x heads x head_dim {head_dim}",
        x.len()
    );
    assert_eq!(cos.len(), sin.len(), "rope: cos/sin tables differ in size");
    let width = x.len() / tokens; // n_heads · D
    let max_pos = cos.len() / half;
    x.par_chunks_mut(width * TOKENS_PER_TASK)
        .zip(positions.par_chunks(TOKENS_PER_TASK))
        .for_each(|(x, pos)| {
            for (row, &p) in x.chunks_mut(width).zip(pos) {
                let p = p as usize;
                assert!(p < max_pos, "rope: position {p} >= table size {max_pos}");
                let c = &cos[p * half..(p + 1) * half];
                let s = &sin[p * half..(p + 1) * half];
                for head in row.chunks_mut(head_dim) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let sn = if inverse { -s[i] } else { s[i] };
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * c[i] - b * sn;
                        hi[i] = b * c[i] + a * sn;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};
    use rand::Rng;

    /// Pair i with i + D/2 as the complex number x[i] + j·x[i+D/2] and multiply by
    /// e^{j·p·θᵢ}, computing θᵢ from its definition with no table.
    fn naive(x: &[f64], heads: usize, d: usize, positions: &[u32], theta: f64) -> Vec<f64> {
        let half = d / 2;
        let mut y = vec![0.0; x.len()];
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * d;
                for i in 0..half {
                    let ang = p as f64 / theta.powf(2.0 * i as f64 / d as f64);
                    let (re, im) = (x[base + i], x[base + half + i]);
                    y[base + i] = re * ang.cos() - im * ang.sin();
                    y[base + half + i] = re * ang.sin() + im * ang.cos();
                }
            }
        }
        y
    }

    /// Positions of a packed batch: each sequence restarts at 0.
    fn packed_positions(lens: &[usize]) -> Vec<u32> {
        lens.iter().flat_map(|&n| 0..n as u32).collect()
    }

    fn plain(d: usize, theta: f64) -> RopeConfig {
        RopeConfig {
            head_dim: d,
            theta,
            scaling: None,
        }
    }

    #[test]
    fn forward_matches_complex_rotation() {
        let mut r = rng(1);
        for &(heads, d, theta) in &[(3, 10, 10_000.0), (2, 128, 500_000.0), (1, 2, 100.0)] {
            let pos = packed_positions(&[1, 9, 40, 3]);
            let max_pos = 64;
            let x: Vec<f64> = uniform(&mut r, pos.len() * heads * d, 1.0);
            let (cos, sin) = cos_sin_tables::<f64>(&inv_freq(&plain(d, theta)), max_pos);
            let mut y = x.clone();
            forward(&mut y, d, &pos, &cos, &sin);
            assert_close("rope f64", &y, &naive(&x, heads, d, &pos, theta), 1e-13);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let (cos, sin) = cos_sin_tables::<f32>(&inv_freq(&plain(d, theta)), max_pos);
            let mut y32 = x32.clone();
            forward(&mut y32, d, &pos, &cos, &sin);
            let want: Vec<f32> = naive(&x, heads, d, &pos, theta)
                .iter()
                .map(|&v| v as f32)
                .collect();
            assert_close("rope f32", &y32, &want, 1e-6);
        }
    }

    #[test]
    fn position_zero_is_identity_and_pair_norms_are_preserved() {
        let mut r = rng(2);
        let (heads, d) = (4, 34);
        let pos: Vec<u32> = (0..50).map(|_| r.random_range(0..1000)).collect();
        let x: Vec<f64> = uniform(&mut r, pos.len() * heads * d, 2.0);
        let (cos, sin) = cos_sin_tables::<f64>(&inv_freq(&plain(d, 10_000.0)), 1000);
        let mut y = x.clone();
        forward(&mut y, d, &pos, &cos, &sin);
        let half = d / 2;
        for (xh, yh) in x.chunks(d).zip(y.chunks(d)) {
            for i in 0..half {
                let nx = xh[i].hypot(xh[i + half]);
                let ny = yh[i].hypot(yh[i + half]);
                assert!((nx - ny).abs() < 1e-12, "pair norm {nx} -> {ny}");
            }
        }
        let mut z = x[..heads * d].to_vec();
        forward(&mut z, d, &[0], &cos, &sin);
        assert_eq!(z, x[..heads * d].to_vec());
    }

    /// Llama-3 scaling written out per band for theta 500000, factor 8,
    /// low 1, high 4, original context 8192, D 128 (Llama 3.1's values):
    /// wavelengths below 2048 keep θ, above 8192 get θ/8, in between blend.
    #[test]
    fn llama3_scaling_matches_hand_computation_in_all_three_bands() {
        let cfg = RopeConfig {
            head_dim: 128,
            theta: 500_000.0,
            scaling: Some(RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
        };
        let got = inv_freq(&cfg);
        assert_eq!(got.len(), 64);
        let tau = std::f64::consts::TAU;
        let (mut high, mut mid, mut low) = (0, 0, 0);
        for (i, &g) in got.iter().enumerate() {
            let base = (-(i as f64) * 500_000f64.ln() / 64.0).exp(); // 500000^(-2i/128)
            // Periods in tokens; the band edges are 8192/4 and 8192/1.
            let period = tau / base;
            let want = if period < 2048.0 {
                high += 1;
                base
            } else if period > 8192.0 {
                low += 1;
                base / 8.0
            } else {
                mid += 1;
                // Blend weight: 0 at period 8192, 1 at period 2048 (linear in 8192/period).
                let w = (8192.0 / period - 1.0) / 3.0;
                base * (w + (1.0 - w) / 8.0)
            };
            assert!(
                (g - want).abs() <= 1e-12 * want,
                "inv_freq[{i}] = {g:e}, want {want:e}"
            );
        }
        // Period 2π·500000^(i/64) crosses 2048 between i = 28 and 29, 8192 between 34 and 35.
        assert_eq!((high, mid, low), (29, 6, 29));
        assert_eq!(got[0], 1.0);
        assert!((got[63] - 500_000f64.powf(-126.0 / 128.0) / 8.0).abs() < 1e-18);
        // Without scaling the same config is the plain ladder.
        let unscaled = inv_freq(&RopeConfig {
            scaling: None,
            ..cfg
        });
        assert!((unscaled[40] - 500_000f64.powf(-80.0 / 128.0)).abs() < 1e-18);
    }

    #[test]
    fn backward_matches_finite_differences_and_inverts_forward() {
        let mut r = rng(3);
        let (heads, d) = (3, 14);
        let pos = packed_positions(&[5, 1, 7]);
        let cfg = RopeConfig {
            head_dim: d,
            theta: 10_000.0,
            scaling: Some(RopeScaling {
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
        };
        let (cos, sin) = cos_sin_tables::<f64>(&inv_freq(&cfg), 16);
        let x: Vec<f64> = uniform(&mut r, pos.len() * heads * d, 1.0);
        let g: Vec<f64> = uniform(&mut r, x.len(), 1.0);
        let f = |x: &[f64]| {
            let mut y = x.to_vec();
            forward(&mut y, d, &pos, &cos, &sin);
            dot(&y, &g)
        };
        let mut dx = g.clone();
        backward(&mut dx, d, &pos, &cos, &sin);
        check_grad("rope dx", f, &x, &dx, 400);
        let mut round = x.clone();
        forward(&mut round, d, &pos, &cos, &sin);
        backward(&mut round, d, &pos, &cos, &sin);
        assert_close("rope backward∘forward", &round, &x, 1e-14);
    }
}
