//! Host-side planning both pooling backward passes use.

/// Set s's index range into `indices`.
pub(crate) fn span(offsets: &[u32], s: usize) -> std::ops::Range<usize> {
    offsets[s] as usize..offsets[s + 1] as usize
}

/// The CSR transposed to token rows: token t is listed by the sets
/// `row_sets[row_start[t]..row_start[t + 1]]` (with multiplicity, in set
/// order). A counting sort, O(tokens + nnz); the CUDA backward uploads it.
pub(crate) fn transpose(offsets: &[u32], indices: &[u32], tokens: usize) -> (Vec<usize>, Vec<u32>) {
    let sets = offsets.len() - 1;
    let mut row_start = vec![0usize; tokens + 1];
    for &t in indices {
        row_start[t as usize + 1] += 1;
    }
    for t in 0..tokens {
        row_start[t + 1] += row_start[t];
    }
    let mut fill = row_start.clone();
    let mut row_sets = vec![0u32; indices.len()];
    for s in 0..sets {
        for &t in &indices[span(offsets, s)] {
            row_sets[fill[t as usize]] = s as u32;
            fill[t as usize] += 1;
        }
    }
    (row_start, row_sets)
}
