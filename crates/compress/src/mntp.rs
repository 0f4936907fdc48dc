//! LLM2Vec's masked next-token prediction (MNTP; BehnamGhader et al., 2024),
//! the pretext the compression objectives are compared with: the model reads
//! `[BOS] text` bidirectionally with some text tokens corrupted, and each
//! corrupted token t_j is predicted from the output at position j - 1 (the
//! position a causal LM predicts t_j from, so the LM head is reused as is).
//!
//! Masking follows LLM2Vec's collator (BERT's rule): each text token is
//! chosen with probability `mask_rate` (0.2, LLM2Vec's for Llama); a chosen
//! token becomes the mask token with probability 0.8, a uniform random id
//! with 0.1, and stays itself with 0.1. BOS is never chosen. LLM2Vec masks
//! with the blank token "_" when the tokenizer has no mask token (SmolLM2's
//! and Llama's have none). One difference: a passage with no token chosen
//! gets one (the first by its draw), so no micro-batch has an empty loss.
//!
//! Every draw is a pure function of (seed, passage slot, position), as the
//! other objectives' splits are, so a resumed run masks exactly as an
//! uninterrupted one.

use crate::seeds::{Stream, derive, mix};
use crate::{CompressError, Result};

/// LLM2Vec's masking probability for Llama-family models.
pub const MNTP_MASK_RATE: f32 = 0.2;

/// How MNTP corrupts its inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskConfig {
    /// Probability that a text token is chosen for prediction.
    pub rate: f32,
    /// The id a chosen token is replaced with 80% of the time.
    pub mask_id: u32,
    /// Random replacements are drawn from 0..vocab.
    pub vocab: usize,
}

/// The packed input of one MNTP micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MntpBatch {
    /// `[BOS] text` per passage, with the chosen tokens corrupted.
    pub ids: Vec<u32>,
    /// Sequence offsets.
    pub cu: Vec<u32>,
    /// The row predicting each chosen token (its position minus one).
    pub rows: Vec<usize>,
    /// The original token of each chosen position.
    pub targets: Vec<i64>,
    /// Text tokens over all passages.
    pub text_tokens: usize,
}

/// A uniform draw in [0, 1) from 53 bits of `h`.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One passage after corruption: its text ids as the model reads them and,
/// per text position, the original id to predict there (`None`: not chosen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// c_1..c_T (no BOS).
    pub ids: Vec<u32>,
    /// The target at each text position.
    pub labels: Vec<Option<u32>>,
}

/// Packs labelled passages as `[BOS] c_1..c_T` each. The label of text
/// position j (packed row `start + 1 + j`) is predicted from the row before
/// it: transformers' causal-LM shift, which LLM2Vec's MNTP keeps.
pub fn pack_labelled(bos: u32, passages: &[Labelled]) -> Result<MntpBatch> {
    let mut b = MntpBatch {
        ids: Vec::new(),
        cu: vec![0],
        rows: Vec::new(),
        targets: Vec::new(),
        text_tokens: 0,
    };
    for (i, p) in passages.iter().enumerate() {
        if p.ids.is_empty() || p.ids.len() != p.labels.len() {
            return Err(CompressError::Config(format!(
                "MNTP passage {i}: {} ids and {} labels (need as many, at least one)",
                p.ids.len(),
                p.labels.len()
            )));
        }
        let start = b.ids.len();
        b.ids.push(bos);
        b.ids.extend_from_slice(&p.ids);
        for (j, l) in p.labels.iter().enumerate() {
            if let Some(t) = l {
                b.rows.push(start + j);
                b.targets.push(*t as i64);
            }
        }
        b.text_tokens += p.ids.len();
        b.cu.push(b.ids.len() as u32);
    }
    if b.rows.is_empty() {
        return Err(CompressError::Config(
            "MNTP batch: no token to predict".into(),
        ));
    }
    Ok(b)
}

/// Chooses and corrupts tokens of `text` (ids, no BOS) from `seed`.
pub fn corrupt(text: &[u32], cfg: &MaskConfig, seed: u64) -> Labelled {
    let draws: Vec<u64> = (0..text.len()).map(|j| mix(seed ^ mix(j as u64))).collect();
    let mut chosen: Vec<usize> = (0..text.len())
        .filter(|&j| unit(draws[j]) < cfg.rate as f64)
        .collect();
    if chosen.is_empty() {
        chosen.extend((0..text.len()).min_by_key(|&j| draws[j]));
    }
    let mut out = Labelled {
        ids: text.to_vec(),
        labels: vec![None; text.len()],
    };
    for j in chosen {
        let how = mix(draws[j] ^ 0x6d6e_7470);
        let u = unit(how);
        if u < 0.8 {
            out.ids[j] = cfg.mask_id;
        } else if u < 0.9 {
            out.ids[j] = ((mix(how) as u128 * cfg.vocab as u128) >> 64) as u32;
        }
        out.labels[j] = Some(text[j]);
    }
    out
}

/// Corrupts and packs `passages` (text ids, no BOS). `seed` is the run's
/// seed and `slots` the passages' sample numbers, so a passage's draws do
/// not depend on which micro-batch it shares.
pub fn mask_batch(
    passages: &[&[u32]],
    slots: &[u64],
    bos: u32,
    cfg: &MaskConfig,
    seed: u64,
) -> Result<MntpBatch> {
    if !(cfg.rate > 0.0 && cfg.rate < 1.0) || cfg.vocab == 0 || passages.len() != slots.len() {
        return Err(CompressError::Config(format!(
            "MNTP masking: rate {} must be in (0, 1), vocabulary {} > 0, one slot per passage \
             ({} for {})",
            cfg.rate,
            cfg.vocab,
            slots.len(),
            passages.len()
        )));
    }
    let labelled: Vec<Labelled> = passages
        .iter()
        .zip(slots)
        .map(|(p, &slot)| corrupt(p, cfg, derive(seed, Stream::Mask, slot, 0)))
        .collect();
    pack_labelled(bos, &labelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MaskConfig {
        MaskConfig {
            rate: MNTP_MASK_RATE,
            mask_id: 7,
            vocab: 1000,
        }
    }

    #[test]
    fn masking_follows_the_rates_and_never_touches_bos() {
        let text: Vec<u32> = (0..20_000).map(|i| 100 + (i % 800)).collect();
        let b = mask_batch(&[&text], &[0], 1, &cfg(), 5).unwrap();
        assert_eq!(b.ids[0], 1);
        assert_eq!(b.ids.len(), text.len() + 1);
        let n = b.rows.len() as f64;
        let rate = n / text.len() as f64;
        assert!((rate - 0.2).abs() < 0.01, "chosen {rate}");
        let (mut masked, mut same) = (0.0, 0.0);
        for (&r, &t) in b.rows.iter().zip(&b.targets) {
            assert_eq!(text[r], t as u32, "row r predicts the token at r + 1");
            let now = b.ids[r + 1];
            masked += f64::from(now == 7);
            same += f64::from(now == t as u32);
        }
        assert!((masked / n - 0.8).abs() < 0.02, "mask share {}", masked / n);
        // Unchanged: the 10% kept plus random draws that hit the same id.
        assert!((same / n - 0.1).abs() < 0.02, "kept share {}", same / n);
        // Unchosen positions are untouched.
        let chosen: std::collections::HashSet<usize> = b.rows.iter().map(|r| r + 1).collect();
        for (i, &t) in text.iter().enumerate() {
            if !chosen.contains(&(i + 1)) {
                assert_eq!(b.ids[i + 1], t);
            }
        }
    }

    #[test]
    fn draws_depend_on_seed_and_slot_not_on_the_company() {
        let a: Vec<u32> = (10..60).collect();
        let c: Vec<u32> = (200..230).collect();
        let alone = mask_batch(&[&a], &[3], 1, &cfg(), 9).unwrap();
        let shared = mask_batch(&[&c, &a], &[4, 3], 1, &cfg(), 9).unwrap();
        let off = c.len() + 1;
        assert_eq!(&shared.ids[off..], &alone.ids[..]);
        let rows: Vec<usize> = shared
            .rows
            .iter()
            .filter(|&&r| r >= off)
            .map(|r| r - off)
            .collect();
        assert_eq!(rows, alone.rows);
        assert_ne!(mask_batch(&[&a], &[3], 1, &cfg(), 10).unwrap(), alone);
        assert_eq!(shared.cu, vec![0, off as u32, (off + a.len() + 1) as u32]);
    }

    #[test]
    fn every_passage_predicts_something_and_bad_settings_are_errors() {
        let b = mask_batch(&[&[5u32][..], &[6, 7][..]], &[0, 1], 1, &cfg(), 0).unwrap();
        assert!(b.rows.contains(&0) && b.rows.iter().any(|&r| r >= 2));
        let bad = MaskConfig { rate: 0.0, ..cfg() };
        assert!(mask_batch(&[&[5u32][..]], &[0], 1, &bad, 0).is_err());
        assert!(mask_batch(&[&[][..]], &[0], 1, &cfg(), 0).is_err());
    }
}
