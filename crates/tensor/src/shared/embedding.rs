//! The grouping both embedding backward passes sum in, so their sums agree.

use std::ops::Range;

use rayon::prelude::*;

/// Positions sorted by id (ties in position order) and, per distinct id, its
/// range in that order: `runs[u] = (id, range)`, ids ascending. (The CUDA
/// backward uploads this grouping, so both backends sum in the same order.)
pub(crate) fn group_by_id(ids: &[u32]) -> (Vec<usize>, Vec<(u32, Range<usize>)>) {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    // Stable: equal ids keep position order, which fixes the summation order.
    order.par_sort_by_key(|&p| ids[p]);
    let mut runs: Vec<(u32, Range<usize>)> = Vec::new();
    for (i, &p) in order.iter().enumerate() {
        match runs.last_mut() {
            Some((id, r)) if *id == ids[p] => r.end = i + 1,
            _ => runs.push((ids[p], i..i + 1)),
        }
    }
    (order, runs)
}
