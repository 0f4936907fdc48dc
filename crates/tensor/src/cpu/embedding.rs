//! Token embedding on the CPU: forward gathers table rows, backward
//! scatter-adds output gradients back into them.
//!
//! The scatter is where parallelism bites: two positions holding the same id
//! write the same destination row. Instead of atomics (none for floats) or a
//! private [V, H] copy per thread (V is ~150k rows), positions are
//! stable-sorted by id. Each run of equal ids then owns exactly one destination
//! row, so runs go to rayon tasks on disjoint `&mut` rows without locks, and
//! each row sums its contributions in position order: results are
//! bit-identical whatever the thread count. Work is O(N log N + N·H),
//! independent of V, and rows no id names are never read or written.
//!
//! The sparse variant returns the same per-run sums as a compact [U, H]
//! block next to the U sorted ids, for trainers that update a handful of rows
//! (memory tokens) and must not allocate a [V, H] gradient.

use rayon::prelude::*;

use crate::shared::embedding::group_by_id;

use crate::Real;

/// Output rows per rayon task in the gather.
const ROWS_PER_TASK: usize = 16;

/// The first id that is not below `vocab`, as (position, id).
pub fn find_out_of_range(ids: &[u32], vocab: usize) -> Option<(usize, u32)> {
    ids.iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
        .map(|(p, &id)| (p, id))
}

/// out[p] = table[ids[p]]. table: [V, hidden]; out: [ids.len(), hidden]. Ids must be < V.
pub fn forward<T: Real>(ids: &[u32], table: &[T], hidden: usize, out: &mut [T]) {
    assert_eq!(out.len(), ids.len() * hidden, "embedding: out length");
    if hidden == 0 {
        return;
    }
    out.par_chunks_mut(hidden * ROWS_PER_TASK)
        .zip(ids.par_chunks(ROWS_PER_TASK))
        .for_each(|(out, ids)| {
            for (row, &id) in out.chunks_mut(hidden).zip(ids) {
                let start = id as usize * hidden;
                row.copy_from_slice(&table[start..start + hidden]);
            }
        });
}

/// row += Σ dout[p] over `positions`, in the order given.
fn add_rows<T: Real>(row: &mut [T], positions: &[usize], dout: &[T]) {
    let hidden = row.len();
    for &p in positions {
        for (r, &g) in row.iter_mut().zip(&dout[p * hidden..(p + 1) * hidden]) {
            *r += g;
        }
    }
}

/// dtable[ids[p]] += dout[p] for every position p; other rows are untouched. Ids must be < V.
pub fn backward<T: Real>(ids: &[u32], dout: &[T], hidden: usize, dtable: &mut [T]) {
    assert_eq!(dout.len(), ids.len() * hidden, "embedding: dout length");
    if hidden == 0 {
        return;
    }
    let (order, runs) = group_by_id(ids);
    // Carve one disjoint `&mut` row per distinct id, walking the table once in id order.
    let mut rows: Vec<&mut [T]> = Vec::with_capacity(runs.len());
    let mut rest = dtable;
    let mut rest_first_row = 0usize;
    for (id, _) in &runs {
        let skip = (*id as usize - rest_first_row) * hidden;
        let (row, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(hidden);
        rows.push(row);
        rest = tail;
        rest_first_row = *id as usize + 1;
    }
    rows.into_par_iter()
        .zip(runs.par_iter())
        .for_each(|(row, (_, r))| add_rows(row, &order[r.clone()], dout));
}

/// The embedding gradient restricted to the looked-up rows: (distinct ids ascending,
/// their gradient rows [U, hidden]), equal to what [`backward`] adds into a zero table.
pub fn backward_sparse<T: Real>(ids: &[u32], dout: &[T], hidden: usize) -> (Vec<u32>, Vec<T>) {
    assert_eq!(dout.len(), ids.len() * hidden, "embedding: dout length");
    let (order, runs) = group_by_id(ids);
    let rows: Vec<u32> = runs.iter().map(|(id, _)| *id).collect();
    let mut grad = vec![T::zero(); runs.len() * hidden];
    if hidden > 0 {
        grad.par_chunks_mut(hidden)
            .zip(runs.par_iter())
            .for_each(|(row, (_, r))| add_rows(row, &order[r.clone()], dout));
    }
    (rows, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grad, dot, rng, uniform};
    use rand::Rng;

    fn random_ids(seed: u64, n: usize, vocab: u32) -> Vec<u32> {
        let mut r = rng(seed);
        (0..n).map(|_| r.random_range(0..vocab)).collect()
    }

    /// The definition, one position at a time: dtable[ids[p]] += dout[p].
    fn naive_scatter(ids: &[u32], dout: &[f64], hidden: usize, dtable: &mut [f64]) {
        for (p, &id) in ids.iter().enumerate() {
            for j in 0..hidden {
                dtable[id as usize * hidden + j] += dout[p * hidden + j];
            }
        }
    }

    #[test]
    fn forward_is_an_exact_gather() {
        let (vocab, hidden, n) = (37, 19, 53);
        let table: Vec<f32> = uniform(&mut rng(1), vocab * hidden, 1.0);
        let ids = random_ids(2, n, vocab as u32);
        let mut out = vec![f32::NAN; n * hidden];
        forward(&ids, &table, hidden, &mut out);
        for (p, &id) in ids.iter().enumerate() {
            for j in 0..hidden {
                assert_eq!(
                    out[p * hidden + j],
                    table[id as usize * hidden + j],
                    "p={p} j={j}"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (vocab, hidden, n) = (11, 7, 23);
        let mut r = rng(3);
        let table: Vec<f64> = uniform(&mut r, vocab * hidden, 1.0);
        let g: Vec<f64> = uniform(&mut r, n * hidden, 1.0);
        // Ids from a sub-range, so some rows are never looked up (their gradient is 0).
        let ids = random_ids(4, n, vocab as u32 - 3);
        let f = |t: &[f64]| {
            let mut out = vec![0.0; n * hidden];
            forward(&ids, t, hidden, &mut out);
            dot(&out, &g)
        };
        let mut dtable = vec![0.0; vocab * hidden];
        backward(&ids, &g, hidden, &mut dtable);
        check_grad("embedding dtable", f, &table, &dtable, vocab * hidden);
    }

    #[test]
    fn rows_not_looked_up_keep_their_bits() {
        let (vocab, hidden, n) = (40, 9, 30);
        let ids: Vec<u32> = random_ids(5, n, 20).iter().map(|&i| 2 * i + 1).collect();
        let dout: Vec<f64> = uniform(&mut rng(6), n * hidden, 1.0);
        // -0.0 is a sentinel that even a `+= 0.0` would flip to +0.0.
        let mut dtable = vec![-0.0f64; vocab * hidden];
        backward(&ids, &dout, hidden, &mut dtable);
        let mut want = vec![-0.0f64; vocab * hidden];
        naive_scatter(&ids, &dout, hidden, &mut want);
        for v in 0..vocab {
            let row = &dtable[v * hidden..(v + 1) * hidden];
            if ids.contains(&(v as u32)) {
                assert_eq!(row, &want[v * hidden..(v + 1) * hidden], "row {v}");
            } else {
                assert!(
                    row.iter().all(|x| x.to_bits() == (-0.0f64).to_bits()),
                    "row {v} was written"
                );
            }
        }
    }

    #[test]
    fn repeated_ids_accumulate_in_position_order() {
        let hidden = 3;
        let ids = [3u32, 3, 0, 3, 3];
        let dout: Vec<f32> = (0..ids.len() * hidden).map(|i| i as f32).collect();
        let mut dtable = vec![1.0f32; 5 * hidden];
        backward(&ids, &dout, hidden, &mut dtable);
        // Row 3 gets positions 0, 1, 3, 4 on top of the 1.0 already there.
        assert_eq!(&dtable[9..12], &[25.0, 29.0, 33.0]);
        assert_eq!(&dtable[0..3], &[7.0, 8.0, 9.0]);
        assert!(dtable[3..9].iter().chain(&dtable[12..]).all(|&v| v == 1.0));
    }

    #[test]
    fn parallel_backward_equals_serial_definition_bit_for_bit() {
        let (vocab, hidden, n) = (100, 64, 5000);
        let ids = random_ids(7, n, vocab as u32);
        let dout: Vec<f64> = uniform(&mut rng(8), n * hidden, 1.0);
        let init: Vec<f64> = uniform(&mut rng(9), vocab * hidden, 1.0);
        let mut got = init.clone();
        backward(&ids, &dout, hidden, &mut got);
        let mut want = init;
        naive_scatter(&ids, &dout, hidden, &mut want);
        assert_eq!(got, want);
    }

    #[test]
    fn sparse_equals_dense() {
        let (vocab, hidden, n) = (300, 17, 200);
        let ids = random_ids(10, n, vocab as u32);
        let dout: Vec<f32> = uniform(&mut rng(11), n * hidden, 1.0);
        let mut dense = vec![0.0f32; vocab * hidden];
        backward(&ids, &dout, hidden, &mut dense);
        let (rows, grad) = backward_sparse(&ids, &dout, hidden);
        let mut want_rows = ids.clone();
        want_rows.sort_unstable();
        want_rows.dedup();
        assert_eq!(rows, want_rows);
        assert_eq!(grad.len(), rows.len() * hidden);
        for (u, &id) in rows.iter().enumerate() {
            let d = &dense[id as usize * hidden..(id as usize + 1) * hidden];
            assert_eq!(&grad[u * hidden..(u + 1) * hidden], d, "row {id}");
        }
        assert!(
            rows.len() < vocab,
            "the test must leave some rows untouched"
        );
    }

    #[test]
    fn empty_inputs_and_zero_width() {
        let mut out: Vec<f32> = vec![];
        forward(&[], &[1.0f32, 2.0], 2, &mut out);
        let (rows, grad) = backward_sparse::<f32>(&[], &[], 4);
        assert!(rows.is_empty() && grad.is_empty());
        let mut dt: Vec<f32> = vec![];
        backward(&[1, 3], &[], 0, &mut dt);
        let (rows, grad) = backward_sparse::<f32>(&[2, 2, 0], &[], 0);
        assert_eq!((rows, grad.len()), (vec![0, 2], 0));
    }

    #[test]
    fn finds_first_out_of_range_id() {
        assert_eq!(find_out_of_range(&[0, 4, 5, 9], 5), Some((2, 5)));
        assert_eq!(find_out_of_range(&[0, 4], 5), None);
    }
}
