//! The fused linear losses' row planning, shared by both backends: chunk and
//! tile sizes, and the rows with a nonzero loss coefficient.

use std::ops::Range;

use crate::Real;

/// Chunk and tile sizes of the fused losses (both must be ≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Rows of the hidden states per chunk (R).
    pub rows: usize,
    /// Vocabulary entries per tile (Vt).
    pub vocab: usize,
}

impl Tiling {
    /// The given sizes with zeros raised to 1 (for size estimates, which must not fail).
    pub fn at_least_one(rows: usize, vocab: usize) -> Self {
        Self {
            rows: rows.max(1),
            vocab: vocab.max(1),
        }
    }
}

/// Rows with a nonzero loss coefficient, in increasing order.
#[derive(Debug)]
pub(crate) struct Active<T> {
    /// Row indices into the [N, ..] inputs.
    pub rows: Vec<usize>,
    /// The coefficient of each row in the loss.
    pub coef: Vec<T>,
}

impl<T: Real> Active<T> {
    /// Keeps the (row, coefficient) pairs whose coefficient is not zero.
    pub fn new(pairs: impl Iterator<Item = (usize, T)>) -> Self {
        let (rows, coef) = pairs.filter(|&(_, c)| c != T::zero()).unzip();
        Self { rows, coef }
    }

    /// Positions into `rows` of each chunk, and the span of original rows it covers.
    /// Spans are disjoint and increasing because `rows` is sorted.
    pub fn chunks(&self, per: usize) -> Vec<(Range<usize>, Range<usize>)> {
        (0..self.rows.len())
            .step_by(per)
            .map(|a| {
                let b = (a + per).min(self.rows.len());
                (a..b, self.rows[a]..self.rows[b - 1] + 1)
            })
            .collect()
    }
}
