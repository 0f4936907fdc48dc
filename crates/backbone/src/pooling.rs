//! Sentence embeddings from packed hidden states: mean over each sequence,
//! its last token, its last k tokens (LLM2Comp's memory tokens appended at
//! the end) or the mean over given positions of each sequence.
//!
//! Every strategy is lowered to index sets (CSR) over the packed rows and run
//! by one op (`ops::pooling`), so all share one forward and one backward;
//! the sets are built and validated on the host before any kernel runs.

use llm2comp_tensor::ops::pooling::{self, IndexSets};
use llm2comp_tensor::{Result, Tensor, TensorError};

const OP: &str = "Pooling";

/// How each sequence's hidden states become one vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over all tokens of the sequence.
    Mean,
    /// The sequence's last token (decoder-style embeddings).
    LastToken,
    /// Mean over the sequence's last k tokens (memory tokens appended at its end).
    LastK(usize),
    /// Mean over the listed positions of each sequence (relative to its start);
    /// one list per sequence.
    Positions(Vec<Vec<u32>>),
}

/// What [`PoolingCache::backward`] needs: the sets and the row count.
#[derive(Debug, Clone)]
pub struct PoolingCache {
    sets: IndexSets,
    tokens: usize,
}

impl Pooling {
    /// The index sets this strategy selects over a packed batch with `cu_seqlens`.
    pub fn index_sets(&self, cu_seqlens: &[u32]) -> Result<IndexSets> {
        match self {
            Self::Mean => IndexSets::all_tokens(cu_seqlens),
            Self::LastToken => IndexSets::last_tokens(cu_seqlens, 1),
            Self::LastK(k) => IndexSets::last_tokens(cu_seqlens, *k),
            Self::Positions(per_seq) => {
                let n = cu_seqlens.len().saturating_sub(1);
                if per_seq.len() != n {
                    return Err(TensorError::invalid(
                        OP,
                        format!("{} position lists for {n} sequences", per_seq.len()),
                    ));
                }
                let mut offsets = vec![0u32];
                let mut indices = Vec::new();
                for (s, (w, list)) in cu_seqlens.windows(2).zip(per_seq).enumerate() {
                    let len = w[1].saturating_sub(w[0]);
                    if let Some(&p) = list.iter().find(|&&p| p >= len) {
                        return Err(TensorError::invalid(
                            OP,
                            format!("position {p} is past the end of sequence {s} ({len} tokens)"),
                        ));
                    }
                    if list.is_empty() {
                        return Err(TensorError::invalid(
                            OP,
                            format!("sequence {s} has no positions to pool"),
                        ));
                    }
                    indices.extend(list.iter().map(|&p| w[0] + p));
                    offsets.push(indices.len() as u32);
                }
                Ok(IndexSets { offsets, indices })
            }
        }
    }

    /// One vector per sequence, [B, H], from hidden [T, H] packed by `cu_seqlens`.
    pub fn forward(&self, hidden: &Tensor, cu_seqlens: &[u32]) -> Result<(Tensor, PoolingCache)> {
        let tokens = hidden.dims2(OP, "hidden")?.0;
        if cu_seqlens.last().map(|&t| t as usize) != Some(tokens) {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "cu_seqlens ends at {:?}, hidden has {tokens} rows",
                    cu_seqlens.last()
                ),
            ));
        }
        let sets = self.index_sets(cu_seqlens)?;
        let out = pooling::forward(hidden, &sets.offsets, &sets.indices)?;
        Ok((out, PoolingCache { sets, tokens }))
    }
}

impl PoolingCache {
    /// dhidden [T, H] for dout [B, H] (zero on rows no set selects).
    pub fn backward(&self, dout: &Tensor) -> Result<Tensor> {
        pooling::backward(dout, self.tokens, &self.sets.offsets, &self.sets.indices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden() -> Tensor {
        Tensor::from_vec((0..14).map(|v| v as f32).collect(), &[7, 2]).unwrap()
    }

    #[test]
    fn strategies_select_the_right_rows() {
        let cu = [0, 3, 7];
        let h = hidden();
        let mean = Pooling::Mean.forward(&h, &cu).unwrap().0.to_vec_f32();
        assert_eq!(mean, [2., 3., 9., 10.]);
        let last = Pooling::LastToken.forward(&h, &cu).unwrap().0.to_vec_f32();
        assert_eq!(last, [4., 5., 12., 13.]);
        let k2 = Pooling::LastK(2).forward(&h, &cu).unwrap().0.to_vec_f32();
        assert_eq!(k2, [3., 4., 11., 12.]);
        let pos = Pooling::Positions(vec![vec![0], vec![1, 3]]);
        let (p, cache) = pos.forward(&h, &cu).unwrap();
        assert_eq!(p.to_vec_f32(), [0., 1., 10., 11.]);
        let dout = Tensor::from_vec(vec![1.0f32, 2.0, 4.0, 8.0], &[2, 2]).unwrap();
        let dh = cache.backward(&dout).unwrap().to_vec_f32();
        assert_eq!(dh, [1., 2., 0., 0., 0., 0., 0., 0., 2., 4., 0., 0., 2., 4.]);
    }

    #[test]
    fn rejects_bad_positions_and_batches() {
        let h = hidden();
        let e = Pooling::Positions(vec![vec![0], vec![4]])
            .forward(&h, &[0, 3, 7])
            .unwrap_err()
            .to_string();
        assert!(e.contains("position 4") && e.contains("sequence 1"), "{e}");
        let e = Pooling::Positions(vec![vec![0]])
            .forward(&h, &[0, 3, 7])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 position lists for 2 sequences"), "{e}");
        assert!(Pooling::Mean.forward(&h, &[0, 3, 6]).is_err());
        assert!(Pooling::LastK(4).forward(&h, &[0, 3, 7]).is_err());
    }
}
