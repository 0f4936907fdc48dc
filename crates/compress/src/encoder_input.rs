//! The encoder's input layout, `[BOS] text m_1..m_k`, in one place: the
//! compression step, the contrastive stages and embedding must all feed the
//! encoder exactly what it was trained on, so they build it here rather than
//! each spelling out the order (the memory positions are the sequence's last
//! k rows, which `Pooling::LastK` relies on).

/// The memory-token ids `vocab..vocab+k` (the embedding's extra rows).
pub fn memory_ids(vocab: usize, k: usize) -> Vec<u32> {
    (vocab..vocab + k).map(|i| i as u32).collect()
}

/// Appends `[BOS] text memory` to the packed `ids` and its end to `cu`
/// (the sequence offsets); returns the row of the first memory token.
pub fn push_encoder_input(
    ids: &mut Vec<u32>,
    cu: &mut Vec<u32>,
    bos: u32,
    text: &[u32],
    memory: &[u32],
) -> usize {
    ids.push(bos);
    ids.extend_from_slice(text);
    let first_memory = ids.len();
    ids.extend_from_slice(memory);
    cu.push(ids.len() as u32);
    first_memory
}

/// One unpacked encoder sequence `[BOS] text memory` (embedding, which
/// packs its own batches).
pub fn encoder_sequence(bos: u32, text: &[u32], memory: &[u32]) -> Vec<u32> {
    let (mut ids, mut cu) = (Vec::with_capacity(text.len() + memory.len() + 1), vec![0]);
    push_encoder_input(&mut ids, &mut cu, bos, text, memory);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_bos_text_memory_and_offsets_follow() {
        let mem = memory_ids(50, 2);
        assert_eq!(mem, [50, 51]);
        let (mut ids, mut cu) = (Vec::new(), vec![0]);
        assert_eq!(push_encoder_input(&mut ids, &mut cu, 1, &[7, 8], &mem), 3);
        assert_eq!(push_encoder_input(&mut ids, &mut cu, 1, &[9], &mem), 7);
        assert_eq!(ids, [1, 7, 8, 50, 51, 1, 9, 50, 51]);
        assert_eq!(cu, [0, 5, 9]);
        assert_eq!(encoder_sequence(1, &[9], &mem), [1, 9, 50, 51]);
    }
}
