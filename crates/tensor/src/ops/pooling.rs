//! Mean pooling over index sets: memory-token pooling (the last k tokens of
//! each sequence) and mean pooling over a packed batch (all of its tokens).
//! Kernels: `cpu/pooling.rs`, `cuda/pooling.rs`.
//!
//! Sets are CSR index arrays on the host, built once per batch by
//! [`IndexSets`] and validated here before any kernel runs, so a kernel never
//! sees an empty set or an index past the end of `hidden`.

use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

const OP: &str = "pooling";

/// Index sets in CSR form: set s lists `indices[offsets[s]..offsets[s + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSets {
    /// [S + 1], starting at 0, non-decreasing, ending at `indices.len()`.
    pub offsets: Vec<u32>,
    /// Token rows, each < the number of rows of `hidden`.
    pub indices: Vec<u32>,
}

/// Checks `cu_seqlens` (packed-batch boundaries: [N + 1], from 0, non-decreasing).
fn check_cu_seqlens(op: &'static str, cu_seqlens: &[u32]) -> Result<()> {
    if cu_seqlens.first() != Some(&0) {
        return Err(TensorError::invalid(
            op,
            format!("cu_seqlens must start at 0, got {:?}", cu_seqlens.first()),
        ));
    }
    if let Some(i) = (1..cu_seqlens.len()).find(|&i| cu_seqlens[i] < cu_seqlens[i - 1]) {
        return Err(TensorError::invalid(
            op,
            format!(
                "cu_seqlens decreases at {i}: {} < {}",
                cu_seqlens[i],
                cu_seqlens[i - 1]
            ),
        ));
    }
    Ok(())
}

impl IndexSets {
    /// One set per sequence of a packed batch holding all its tokens (mean pooling).
    pub fn all_tokens(cu_seqlens: &[u32]) -> Result<Self> {
        const WHAT: &str = "IndexSets::all_tokens";
        check_cu_seqlens(WHAT, cu_seqlens)?;
        if let Some(i) = cu_seqlens.windows(2).position(|w| w[0] == w[1]) {
            return Err(TensorError::invalid(WHAT, format!("sequence {i} is empty")));
        }
        let total = *cu_seqlens.last().unwrap_or(&0);
        Ok(Self {
            offsets: cu_seqlens.to_vec(),
            indices: (0..total).collect(),
        })
    }

    /// One set per sequence holding its last `k` tokens (the memory tokens appended at its end).
    pub fn last_tokens(cu_seqlens: &[u32], k: usize) -> Result<Self> {
        const WHAT: &str = "IndexSets::last_tokens";
        check_cu_seqlens(WHAT, cu_seqlens)?;
        if k == 0 {
            return Err(TensorError::invalid(WHAT, "k must be >= 1"));
        }
        let n = cu_seqlens.len() - 1;
        let k32 = u32::try_from(k)
            .ok()
            .filter(|&k| (k as u64) * (n as u64) <= u32::MAX as u64)
            .ok_or_else(|| TensorError::invalid(WHAT, format!("k = {k} is too large")))?;
        let mut indices = Vec::with_capacity(n * k);
        for (i, w) in cu_seqlens.windows(2).enumerate() {
            if w[1] - w[0] < k32 {
                return Err(TensorError::invalid(
                    WHAT,
                    format!(
                        "sequence {i} has {} tokens, fewer than k = {k}",
                        w[1] - w[0]
                    ),
                ));
            }
            indices.extend(w[1] - k32..w[1]);
        }
        Ok(Self {
            offsets: (0..=n as u32).map(|s| s * k32).collect(),
            indices,
        })
    }

    /// Number of sets S.
    pub fn num_sets(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// Validates a CSR against `tokens` rows; returns the number of sets.
fn check_sets(offsets: &[u32], indices: &[u32], tokens: usize) -> Result<usize> {
    if offsets.first() != Some(&0) || offsets.last().map(|&e| e as usize) != Some(indices.len()) {
        return Err(TensorError::invalid(
            OP,
            format!(
                "offsets must run from 0 to indices.len() = {}, got {:?}..{:?}",
                indices.len(),
                offsets.first(),
                offsets.last()
            ),
        ));
    }
    if let Some(s) = offsets.windows(2).position(|w| w[1] <= w[0]) {
        return Err(TensorError::invalid(
            OP,
            format!(
                "set {s} is empty or offsets decrease ({} -> {}): a mean needs at least one row",
                offsets[s],
                offsets[s + 1]
            ),
        ));
    }
    if let Some((i, &t)) = indices
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= tokens)
    {
        return Err(TensorError::invalid(
            OP,
            format!("indices[{i}] = {t} is past the last row ({tokens} rows)"),
        ));
    }
    Ok(offsets.len() - 1)
}

/// out [S, H] = mean of the `hidden` [T, H] rows listed by each set; f32 (f32 or bf16 on CUDA).
pub fn forward(hidden: &Tensor, offsets: &[u32], indices: &[u32]) -> Result<Tensor> {
    let (tokens, h) = hidden.dims2(OP, "hidden")?;
    let sets = check_sets(offsets, indices, tokens)?;
    match hidden.device() {
        Device::Cpu => {
            let mut out = Tensor::zeros(&[sets, h], hidden.dtype(), Device::Cpu);
            cpu::pooling::forward(
                hidden.f32s(OP, "hidden")?,
                h,
                offsets,
                indices,
                out.f32s_mut(OP, "out")?,
            );
            Ok(out)
        }
        Device::Cuda(_) => cuda::pooling::forward(hidden, h, offsets, indices, sets),
    }
}

/// dhidden [num_tokens, H], fresh: dout[s]/|s| added at every row set s lists, 0 on unlisted rows.
pub fn backward(
    dout: &Tensor,
    num_tokens: usize,
    offsets: &[u32],
    indices: &[u32],
) -> Result<Tensor> {
    let (sets, h) = dout.dims2(OP, "dout")?;
    if check_sets(offsets, indices, num_tokens)? != sets {
        return Err(TensorError::shape(
            OP,
            "dout",
            format!("[{}, {h}] (one row per set)", offsets.len() - 1),
            dout.shape(),
        ));
    }
    match dout.device() {
        Device::Cpu => {
            let mut dhidden = Tensor::zeros(&[num_tokens, h], dout.dtype(), Device::Cpu);
            cpu::pooling::backward(
                dout.f32s(OP, "dout")?,
                h,
                offsets,
                indices,
                dhidden.f32s_mut(OP, "dhidden")?,
            );
            Ok(dhidden)
        }
        Device::Cuda(_) => cuda::pooling::backward(dout, h, offsets, indices, num_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(t: usize, h: usize) -> Tensor {
        Tensor::from_vec((0..t * h).map(|i| i as f32).collect(), &[t, h]).unwrap()
    }

    #[test]
    fn all_tokens_pools_each_sequence() {
        let sets = IndexSets::all_tokens(&[0, 2, 5]).unwrap();
        assert_eq!(sets.offsets, [0, 2, 5]);
        assert_eq!(sets.indices, [0, 1, 2, 3, 4]);
        assert_eq!(sets.num_sets(), 2);
        let out = forward(&hidden(5, 2), &sets.offsets, &sets.indices).unwrap();
        // Rows are [2t, 2t+1]: means of t in {0,1} and {2,3,4}.
        assert_eq!(out.to_vec_f32(), [1.0, 2.0, 6.0, 7.0]);
    }

    #[test]
    fn last_tokens_picks_the_memory_tokens() {
        let sets = IndexSets::last_tokens(&[0, 4, 6, 9], 2).unwrap();
        assert_eq!(sets.offsets, [0, 2, 4, 6]);
        assert_eq!(sets.indices, [2, 3, 4, 5, 7, 8]);
        let err = IndexSets::last_tokens(&[0, 4, 5], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequence 1 has 1 tokens"), "{err}");
        assert!(IndexSets::last_tokens(&[0, 4], 0).is_err());
    }

    #[test]
    fn helpers_reject_bad_cu_seqlens() {
        assert!(IndexSets::all_tokens(&[1, 3]).is_err());
        assert!(IndexSets::all_tokens(&[]).is_err());
        assert!(IndexSets::all_tokens(&[0, 3, 2]).is_err());
        let err = IndexSets::all_tokens(&[0, 3, 3]).unwrap_err().to_string();
        assert!(err.contains("sequence 1 is empty"), "{err}");
        assert_eq!(IndexSets::all_tokens(&[0]).unwrap().num_sets(), 0);
    }

    #[test]
    fn rejects_empty_sets_and_out_of_range_indices() {
        let x = hidden(4, 3);
        let err = forward(&x, &[0, 2, 2, 3], &[0, 1, 2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pooling") && err.contains("set 1 is empty"),
            "{err}"
        );
        let err = forward(&x, &[0, 2], &[0, 4]).unwrap_err().to_string();
        assert!(err.contains("indices[1] = 4"), "{err}");
        assert!(forward(&x, &[0, 3], &[0, 1]).is_err());
        assert!(forward(&x, &[], &[]).is_err());
    }

    #[test]
    fn backward_checks_dout_rows_and_scatters() {
        let dout = Tensor::from_vec(vec![2.0f32, 4.0], &[1, 2]).unwrap();
        let dh = backward(&dout, 3, &[0, 2], &[2, 0]).unwrap();
        assert_eq!(dh.to_vec_f32(), [1.0, 2.0, 0.0, 0.0, 1.0, 2.0]);
        let err = backward(&dout, 3, &[0, 1, 2], &[2, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("dout"), "{err}");
    }
}
