//! The three compression objectives of LLM2Comp (METHOD.md, stage 1) and the
//! continuation split they share.
//!
//! `rc` reconstructs the encoder's own text from the memory tokens; `nll`
//! and `kl` split the text, compress the prefix and predict the suffix —
//! `nll` against the true tokens, `kl` against the frozen LLM's distribution
//! when it reads the whole text. The split is drawn uniformly from
//! [10, len − 10] (inclusive), so a passage needs at least 20 tokens.

use std::fmt;
use std::str::FromStr;

use crate::{CompressError, Result};

/// Tokens kept on each side of a continuation split.
pub const SPLIT_MARGIN: usize = 10;

/// What the decoder must predict from the memory tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Objective {
    /// Reconstruction: the whole text, cross-entropy.
    Rc,
    /// Continuation: the suffix after a random split, cross-entropy.
    Nll,
    /// Continuation distilled from the frozen LLM reading the full text, KL(teacher ‖ student).
    Kl,
}

impl Objective {
    /// Every objective, in the paper's order.
    pub const ALL: [Objective; 3] = [Self::Rc, Self::Nll, Self::Kl];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rc => "rc",
            Self::Nll => "nll",
            Self::Kl => "kl",
        }
    }

    /// Whether the text is split into a compressed prefix and a predicted suffix.
    pub fn splits(self) -> bool {
        !matches!(self, Self::Rc)
    }

    /// Fewest text tokens (BOS and memory tokens excluded) a passage needs.
    pub fn min_tokens(self) -> usize {
        if self.splits() { 2 * SPLIT_MARGIN } else { 1 }
    }

    /// The split point s (prefix t_1..t_s, suffix t_{s+1}..t_len) for a
    /// passage of `len` tokens, uniform in [10, len − 10] from `draw`, or
    /// `None` for `rc`.
    pub fn split(self, len: usize, draw: u64) -> Result<Option<usize>> {
        if !self.splits() {
            return Ok(None);
        }
        if len < self.min_tokens() {
            return Err(CompressError::Config(format!(
                "objective {self}: a passage of {len} tokens cannot be split (needs >= {})",
                self.min_tokens()
            )));
        }
        let choices = (len - 2 * SPLIT_MARGIN + 1) as u64;
        // Lemire's multiply-shift maps 64 random bits onto [0, choices) with
        // a bias below choices / 2^64: negligible for passages of any length.
        let pick = ((draw as u128 * choices as u128) >> 64) as usize;
        Ok(Some(SPLIT_MARGIN + pick))
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Objective {
    type Err = CompressError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                CompressError::Config(format!("unknown objective {s:?}: expected rc, nll or kl"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_exactly_the_allowed_range() {
        let len = 25;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4000u64 {
            let draw = crate::seeds::mix(i);
            seen.insert(Objective::Kl.split(len, draw).unwrap().unwrap());
        }
        assert_eq!(seen, (10..=15).collect());
        assert_eq!(Objective::Nll.split(20, u64::MAX).unwrap(), Some(10));
        assert_eq!(Objective::Rc.split(3, 7).unwrap(), None);
        assert!(Objective::Kl.split(19, 0).is_err());
    }

    #[test]
    fn names_round_trip() {
        for o in Objective::ALL {
            assert_eq!(o.name().parse::<Objective>().unwrap(), o);
        }
        assert!("mse".parse::<Objective>().is_err());
    }
}
