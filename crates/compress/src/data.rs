//! The pretext corpus: passages tokenised once, filtered the way the paper
//! filters WikiText-103 (a minimum length in characters, a maximum length in
//! tokens), truncated to fit the encoder, and drawn for each step from the
//! seed alone.
//!
//! The draw is a pure function of (seed, step, micro-batch): sample number
//! p = (step · accum + micro) · batch + i of the run reads position p mod n
//! of the permutation of epoch p div n. So the data position is the step
//! count, a resumed run reads exactly what an uninterrupted one would, and
//! epochs never mix (every passage is seen once per epoch). Each draw's
//! continuation split is derived from the same p.

use llm2comp_backbone::Tokenizer;

use crate::batch::Sample;
use crate::seeds::{self, Stream};
use crate::{CompressError, Objective, Result};

/// Which passages are kept and how long they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOptions {
    /// Drop passages shorter than this many characters (the paper: 1000).
    pub min_chars: usize,
    /// Drop passages longer than this many tokens (the paper: 512); `None` keeps all.
    pub max_tokens: Option<usize>,
    /// Longest encoder input `[BOS] text m_1..m_k`; longer texts are cut to fit.
    pub max_length: usize,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            min_chars: 0,
            max_tokens: None,
            max_length: 512,
        }
    }
}

/// What happened to the passages read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorpusStats {
    /// Passages read.
    pub read: usize,
    /// Passages kept.
    pub kept: usize,
    /// Dropped: fewer characters than `min_chars`.
    pub too_short_chars: usize,
    /// Dropped: more tokens than `max_tokens`.
    pub too_many_tokens: usize,
    /// Dropped: fewer tokens than the objective needs (20 for `nll` / `kl`).
    pub too_few_tokens: usize,
    /// Kept but cut to fit `max_length`.
    pub truncated: usize,
    /// Text tokens kept.
    pub tokens: usize,
}

/// Tokenised passages ready to be drawn into batches.
#[derive(Debug, Clone)]
pub struct Corpus {
    passages: Vec<Vec<u32>>,
    stats: CorpusStats,
}

impl Corpus {
    /// Tokenises and filters `texts` (read from `source`, named in errors)
    /// for `objective` with `k` memory tokens.
    pub fn build(
        source: &str,
        texts: &[String],
        tokenizer: &Tokenizer,
        objective: Objective,
        k: usize,
        opts: &DataOptions,
    ) -> Result<Self> {
        let room = opts
            .max_length
            .checked_sub(1 + k)
            .filter(|&r| r > 0)
            .ok_or_else(|| {
                CompressError::Config(format!(
                    "--max-length {} leaves no room for text after BOS and {k} memory tokens",
                    opts.max_length
                ))
            })?;
        if room < objective.min_tokens() {
            return Err(CompressError::Config(format!(
                "--max-length {} leaves {room} text tokens, fewer than objective {objective} \
                 needs ({})",
                opts.max_length,
                objective.min_tokens()
            )));
        }
        let mut stats = CorpusStats {
            read: texts.len(),
            ..CorpusStats::default()
        };
        let long_enough: Vec<&String> = texts
            .iter()
            .filter(|t| {
                let ok = t.chars().count() >= opts.min_chars;
                stats.too_short_chars += usize::from(!ok);
                ok
            })
            .collect();
        // Only the first `room` tokens (or max_tokens + 1, to filter by)
        // are used: tokenise no more text than holds them.
        let needed = room.max(opts.max_tokens.map_or(0, |m| m.saturating_add(1))) + 1;
        let long_enough: Vec<&str> = long_enough
            .iter()
            .map(|t| tokenizer.cut_for(t, needed).0)
            .collect();
        let ids = tokenizer.encode_batch(&long_enough, false)?;
        let mut passages = Vec::with_capacity(ids.len());
        for mut p in ids {
            if opts.max_tokens.is_some_and(|m| p.len() > m) {
                stats.too_many_tokens += 1;
                continue;
            }
            if p.len() < objective.min_tokens() {
                stats.too_few_tokens += 1;
                continue;
            }
            if p.len() > room {
                p.truncate(room);
                stats.truncated += 1;
            }
            stats.tokens += p.len();
            passages.push(p);
        }
        stats.kept = passages.len();
        if passages.is_empty() {
            return Err(CompressError::Data {
                source_name: source.to_string(),
                message: format!(
                    "no passage left after filtering ({} read: {} under {} characters, {} over \
                     {:?} tokens, {} under the {} tokens objective {objective} needs)",
                    stats.read,
                    stats.too_short_chars,
                    opts.min_chars,
                    stats.too_many_tokens,
                    opts.max_tokens,
                    stats.too_few_tokens,
                    objective.min_tokens()
                ),
            });
        }
        Ok(Self { passages, stats })
    }

    /// A corpus of ready token ids (tests, benches).
    pub fn from_ids(passages: Vec<Vec<u32>>) -> Result<Self> {
        if passages.is_empty() {
            return Err(CompressError::Config("an empty corpus".into()));
        }
        let tokens = passages.iter().map(Vec::len).sum();
        let n = passages.len();
        Ok(Self {
            passages,
            stats: CorpusStats {
                read: n,
                kept: n,
                tokens,
                ..CorpusStats::default()
            },
        })
    }

    /// Passages kept.
    pub fn len(&self) -> usize {
        self.passages.len()
    }

    /// Whether no passage was kept (never true for a built corpus).
    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// The filtering statistics.
    pub fn stats(&self) -> CorpusStats {
        self.stats
    }

    /// The token ids of passage `i`.
    pub fn passage(&self, i: usize) -> &[u32] {
        &self.passages[i]
    }

    /// The samples of micro-batch `micro` of step `step` (both 0-based),
    /// `batch` passages each, with their splits for `objective`.
    pub fn draw(
        &self,
        seed: u64,
        step: u64,
        micro: usize,
        accum: usize,
        batch: usize,
        objective: Objective,
    ) -> Result<Vec<Sample>> {
        seeds::draw_indices(seed, step, micro, accum, batch, self.passages.len())
            .into_iter()
            .map(|(p, idx)| {
                let ids = self.passages[idx].clone();
                let split = objective.split(ids.len(), seeds::derive(seed, Stream::Split, p, 0))?;
                Ok(Sample { ids, split })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(n: usize) -> Corpus {
        Corpus::from_ids((0..n).map(|i| vec![i as u32; 20 + i]).collect()).unwrap()
    }

    #[test]
    fn every_passage_once_per_epoch_and_draws_are_pure() {
        let c = corpus(10);
        // 10 passages, batch 3, accum 1: epoch 0 is samples 0..10.
        let mut seen = Vec::new();
        for step in 0..4 {
            for s in c.draw(7, step, 0, 1, 3, Objective::Kl).unwrap() {
                seen.push(s.ids[0]);
                let split = s.split.unwrap();
                assert!((10..=s.ids.len() - 10).contains(&split));
            }
        }
        let mut epoch0: Vec<u32> = seen[..10].to_vec();
        epoch0.sort_unstable();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        // Pure: the same step drawn again (as after a resume) is identical.
        assert_eq!(
            c.draw(7, 2, 0, 1, 3, Objective::Kl).unwrap(),
            c.draw(7, 2, 0, 1, 3, Objective::Kl).unwrap()
        );
        // Accumulation only regroups: step 1 micro 0 of accum 2 with batch 3
        // is the samples 6..9, as step 2 of accum 1 with batch 3.
        assert_eq!(
            c.draw(7, 1, 0, 2, 3, Objective::Kl).unwrap(),
            c.draw(7, 2, 0, 1, 3, Objective::Kl).unwrap()
        );
        assert_ne!(
            seen[..10],
            c.draw(8, 0, 0, 1, 10, Objective::Kl)
                .unwrap()
                .iter()
                .map(|s| s.ids[0])
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn build_filters_truncates_and_counts() {
        let tok = Tokenizer::from_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../backbone/tests/fixtures/tiny-embed/tokenizer.json"),
        )
        .unwrap();
        let words = |n: usize| vec!["sun"; n].join(" ");
        // 25 words (≥ 20 chars), 5 words (too few tokens for kl), a 200-word
        // passage (over --max-tokens 100), a 60-word one (cut to fit 40).
        let texts = vec![words(25), words(5), words(200), words(60), "x".into()];
        let opts = DataOptions {
            min_chars: 10,
            max_tokens: Some(100),
            max_length: 40,
        };
        let c = Corpus::build("t.txt", &texts, &tok, Objective::Kl, 3, &opts).unwrap();
        let st = c.stats();
        assert_eq!((st.read, st.kept), (5, 2));
        assert_eq!(
            (st.too_short_chars, st.too_few_tokens, st.too_many_tokens),
            (1, 1, 1)
        );
        assert_eq!(st.truncated, 1);
        // 40 = BOS + 36 text tokens + 3 memory tokens.
        assert_eq!(c.passage(1).len(), 36);
        assert_eq!(st.tokens, 25 + 36);
        let err = Corpus::build("t.txt", &texts[1..2], &tok, Objective::Kl, 3, &opts).unwrap_err();
        assert!(
            err.to_string().contains("t.txt") && err.to_string().contains("no passage left"),
            "{err}"
        );
        assert!(Corpus::build("t.txt", &texts, &tok, Objective::Kl, 30, &opts).is_err());
    }
}
