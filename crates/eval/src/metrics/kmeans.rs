//! k-means (Lloyd's iterations) with k-means++ seeding and restarts, fully
//! determined by a seed: the generator is a SplitMix64 written here, so the
//! clusters do not change with a dependency's version. The restart with the
//! lowest inertia wins (ties: the earliest), which makes the V-measure of a
//! clustering task a function of the embeddings alone.

use crate::{EvalError, Result};

/// SplitMix64: a tiny, well-mixed 64-bit generator; enough for seeding.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n
    }
}

/// Settings of [`kmeans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KMeansOptions {
    /// Number of clusters.
    pub k: usize,
    /// Independent k-means++ starts; the lowest inertia wins.
    pub restarts: usize,
    /// Most Lloyd iterations per start.
    pub max_iter: usize,
    /// Seed of the first start (start r uses seed + r).
    pub seed: u64,
}

/// A clustering: the cluster of each point and the summed squared distance
/// of points to their centres.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Cluster id of each point, in 0..k.
    pub assignment: Vec<usize>,
    /// Σ ‖x − centre‖².
    pub inertia: f64,
    /// The centres, [k][D].
    pub centres: Vec<Vec<f64>>,
}

fn dist2(x: &[f32], c: &[f64]) -> f64 {
    x.iter().zip(c).map(|(&a, &b)| (a as f64 - b).powi(2)).sum()
}

fn seed_centres(x: &[Vec<f32>], k: usize, rng: &mut SplitMix64) -> Vec<Vec<f64>> {
    let to64 = |r: &Vec<f32>| r.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let mut centres = vec![to64(&x[rng.below(x.len())])];
    let mut d2: Vec<f64> = x.iter().map(|r| dist2(r, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        // D² sampling; if every point sits on a centre, any point will do.
        let pick = if total > 0.0 {
            let mut u = rng.next_f64() * total;
            let mut chosen = x.len() - 1;
            for (i, &d) in d2.iter().enumerate() {
                if u < d {
                    chosen = i;
                    break;
                }
                u -= d;
            }
            chosen
        } else {
            rng.below(x.len())
        };
        let c = to64(&x[pick]);
        for (d, r) in d2.iter_mut().zip(x) {
            *d = d.min(dist2(r, &c));
        }
        centres.push(c);
    }
    centres
}

fn lloyd(x: &[Vec<f32>], mut centres: Vec<Vec<f64>>, max_iter: usize) -> Clustering {
    let k = centres.len();
    let dim = x[0].len();
    let mut assignment = vec![usize::MAX; x.len()];
    for _ in 0..max_iter.max(1) {
        let mut changed = false;
        for (a, r) in assignment.iter_mut().zip(x) {
            let best = (0..k)
                .map(|c| (dist2(r, &centres[c]), c))
                .min_by(|p, q| p.0.total_cmp(&q.0))
                .expect("k >= 1")
                .1;
            changed |= *a != best;
            *a = best;
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0.0f64; dim]; k];
        let mut counts = vec![0usize; k];
        for (&a, r) in assignment.iter().zip(x) {
            counts[a] += 1;
            for (s, &v) in sums[a].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            // An emptied cluster keeps its old centre rather than becoming NaN.
            if counts[c] > 0 {
                centres[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            }
        }
    }
    let inertia = assignment
        .iter()
        .zip(x)
        .map(|(&a, r)| dist2(r, &centres[a]))
        .sum();
    Clustering {
        assignment,
        inertia,
        centres,
    }
}

/// Clusters the rows of `x` into `opts.k` groups.
pub fn kmeans(x: &[Vec<f32>], opts: &KMeansOptions) -> Result<Clustering> {
    if opts.k == 0 || opts.k > x.len() {
        return Err(EvalError::shape(
            "kmeans",
            format!("1 <= k <= {} points", x.len()),
            opts.k,
        ));
    }
    if let Some(r) = x.iter().find(|r| r.len() != x[0].len()) {
        return Err(EvalError::shape(
            "kmeans",
            format!("rows of {}", x[0].len()),
            r.len(),
        ));
    }
    let mut best: Option<Clustering> = None;
    for r in 0..opts.restarts.max(1) {
        let mut rng = SplitMix64::new(opts.seed.wrapping_add(r as u64));
        let c = lloyd(x, seed_centres(x, opts.k, &mut rng), opts.max_iter);
        if best.as_ref().is_none_or(|b| c.inertia < b.inertia) {
            best = Some(c);
        }
    }
    Ok(best.expect("at least one restart"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[[f32; 2]]) -> Vec<Vec<f32>> {
        v.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn two_groups_by_hand() {
        let x = pts(&[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 1.0], [0.0, 1.0]]);
        for seed in 0..5 {
            let opts = KMeansOptions {
                k: 2,
                restarts: 3,
                max_iter: 50,
                seed,
            };
            let c = kmeans(&x, &opts).unwrap();
            let a = &c.assignment;
            assert!(
                a[0] == a[1] && a[1] == a[4] && a[2] == a[3] && a[0] != a[2],
                "{a:?}"
            );
            // Centres (1/3, 1/3) and (10.5, .5); inertia:
            // (1/9+1/9) + (4/9+1/9) + (1/9+4/9) = 12/9; (.25+.25)*2 = 1 -> 7/3.
            assert!((c.inertia - 7.0 / 3.0).abs() < 1e-9, "{}", c.inertia);
            let left = &c.centres[a[0]];
            assert!((left[0] - 1.0 / 3.0).abs() < 1e-12 && (left[1] - 1.0 / 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn deterministic_and_validated() {
        let mut rng = SplitMix64::new(7);
        let x: Vec<Vec<f32>> = (0..60)
            .map(|_| (0..3).map(|_| rng.next_f64() as f32).collect())
            .collect();
        let opts = KMeansOptions {
            k: 5,
            restarts: 4,
            max_iter: 100,
            seed: 42,
        };
        assert_eq!(kmeans(&x, &opts).unwrap(), kmeans(&x, &opts).unwrap());
        // Restarts never do worse than the first start alone.
        let one = kmeans(
            &x,
            &KMeansOptions {
                restarts: 1,
                ..opts
            },
        )
        .unwrap();
        assert!(kmeans(&x, &opts).unwrap().inertia <= one.inertia);
        assert!(kmeans(&x, &KMeansOptions { k: 61, ..opts }).is_err());
        assert!(
            kmeans(
                &[vec![1.0], vec![1.0, 2.0]],
                &KMeansOptions { k: 1, ..opts }
            )
            .is_err()
        );
    }
}
