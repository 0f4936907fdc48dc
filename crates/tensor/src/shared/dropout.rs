//! The dropout contract both backends implement: the counter-based hash
//! (element i of stream `seed` is kept iff `hash_u32(seed, offset + i)` is
//! below `keep_threshold(p)`), per-sequence stream seeds, and the mask
//! descriptions the ops take. The CUDA kernels compute the same hash, so both
//! backends drop the same elements.

use std::sync::Arc;

use crate::{Result, TensorError};

const OP: &str = "dropout";

/// SplitMix64's finaliser: a bijective avalanche mix of 64 bits.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 32 uniform bits for element `index` of the stream `seed`.
#[inline(always)]
pub fn hash_u32(seed: u64, index: u64) -> u32 {
    (mix64(seed ^ mix64(index.wrapping_add(0x9e37_79b9_7f4a_7c15))) >> 32) as u32
}

/// The stream seed of the packed sequence keyed `key` under mask seed `seed`
/// (per-sequence masks, `ops::dropout::SeqKeys`).
#[inline]
pub fn keyed_seed(seed: u64, key: u64) -> u64 {
    mix64(seed ^ mix64(key ^ 0x6a09_e667_f3bc_c909))
}

/// The threshold below which a hash keeps its element, for drop probability `p`.
#[inline]
pub fn keep_threshold(p: f32) -> u64 {
    (((1.0 - p as f64) * 4_294_967_296.0) as u64).min(1 << 32)
}

/// Whether element `index` of stream `seed` survives dropout with threshold `thr`.
#[inline(always)]
pub fn keep(seed: u64, index: u64, thr: u64) -> bool {
    (hash_u32(seed, index) as u64) < thr
}

/// Identifies one dropout mask: the same (seed, offset, keys) always drops
/// the same elements.
#[derive(Debug, Clone, PartialEq)]
pub struct DropoutMask {
    /// Drop probability in [0, 1).
    pub p: f32,
    /// Stream seed (per layer, per step: the caller derives it).
    pub seed: u64,
    /// Stream index of element 0 (of each sequence's element 0 with `keys`).
    pub offset: u64,
    /// Per-sequence streams for packed rows; `None`: one stream for the call.
    pub keys: Option<SeqKeys>,
}

impl DropoutMask {
    /// One stream over the whole tensor.
    pub fn new(p: f32, seed: u64, offset: u64) -> Self {
        Self {
            p,
            seed,
            offset,
            keys: None,
        }
    }

    /// This mask with one stream per packed sequence.
    pub fn with_keys(self, keys: Option<SeqKeys>) -> Self {
        Self { keys, ..self }
    }
}

/// Per-sequence mask streams of a packed call: sequence s (rows
/// `cu_seqlens[s]..cu_seqlens[s + 1]`) draws from the seed
/// [`SeqKeys::seed`]`(mask.seed, s)`, its element indices counted from its
/// own first row. Cheap to clone (shared slices), so caches can keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqKeys {
    cu_seqlens: Arc<[u32]>,
    keys: Arc<[u64]>,
}

impl SeqKeys {
    /// Keys for the B sequences of `cu_seqlens` (B + 1 non-decreasing offsets from 0).
    pub fn new(cu_seqlens: &[u32], keys: &[u64]) -> Result<Self> {
        let ok = cu_seqlens.first() == Some(&0) && cu_seqlens.windows(2).all(|w| w[0] <= w[1]);
        if !ok || keys.len() + 1 != cu_seqlens.len() {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "per-sequence keys need B + 1 non-decreasing offsets from 0 and B keys; got \
                     {} offsets and {} keys",
                    cu_seqlens.len(),
                    keys.len()
                ),
            ));
        }
        Ok(Self {
            cu_seqlens: cu_seqlens.into(),
            keys: keys.into(),
        })
    }

    /// The sequences' row offsets (B + 1).
    pub fn cu_seqlens(&self) -> &[u32] {
        &self.cu_seqlens
    }

    /// The keys (B).
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// The stream seed of sequence `s` under the mask seed `seed`.
    pub fn seed(&self, seed: u64, s: usize) -> u64 {
        keyed_seed(seed, self.keys[s])
    }

    /// Total rows (the last offset).
    pub fn rows(&self) -> usize {
        self.cu_seqlens.last().map_or(0, |&r| r as usize)
    }
}
