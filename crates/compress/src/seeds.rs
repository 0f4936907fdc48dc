//! Counter-based randomness: every random choice of a step (which passages,
//! where each splits, the dropout masks) is a pure function of
//! (seed, step, micro-batch, slot). Nothing carries hidden RNG state from
//! one step to the next, so a resumed run draws exactly what an
//! uninterrupted one would.

/// SplitMix64's finaliser: a bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a derived seed is for, so streams for different purposes never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The data order of one epoch.
    Shuffle = 1,
    /// A passage's continuation split.
    Split = 2,
    /// The dropout masks of a forward pass.
    Dropout = 3,
    /// Memory-token initialisation noise.
    MemoryInit = 4,
    /// LoRA initialisation.
    LoraInit = 5,
    /// MNTP's choice and corruption of tokens.
    Mask = 6,
}

/// A seed for `stream` at counters `a`, `b` under the run's `seed`.
pub fn derive(seed: u64, stream: Stream, a: u64, b: u64) -> u64 {
    mix(mix(mix(seed ^ mix(stream as u64)) ^ a) ^ mix(b.wrapping_add(0x5851_f42d_4c95_7f2d)))
}

/// A permutation of 0..n drawn from `seed` (Fisher–Yates over a counter stream).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((mix(seed ^ mix(i as u64)) as u128 * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}

/// The passage indices of micro-batch `micro` of step `step` over a data set
/// of `n` items: sample p = (step·accum + micro)·batch + i is item
/// perm_e[p mod n] of epoch e = p div n's permutation, so the data position
/// is a function of the step alone and accumulation only regroups.
pub fn draw_indices(
    seed: u64,
    step: u64,
    micro: usize,
    accum: usize,
    batch: usize,
    n: usize,
) -> Vec<(u64, usize)> {
    let n64 = n.max(1) as u64;
    let first = (step * accum as u64 + micro as u64) * batch as u64;
    let mut perm: Option<(u64, Vec<usize>)> = None;
    (first..first + batch as u64)
        .map(|p| {
            let epoch = p / n64;
            if perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let s = derive(seed, Stream::Shuffle, epoch, 0);
                perm = Some((epoch, permutation(n, s)));
            }
            (p, perm.as_ref().expect("set above").1[(p % n64) as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_the_seed() {
        let a = permutation(1000, 1);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, permutation(1000, 2));
        assert_eq!(a, permutation(1000, 1));
        assert!(permutation(0, 3).is_empty());
    }

    #[test]
    fn streams_differ() {
        assert_ne!(
            derive(42, Stream::Split, 0, 0),
            derive(42, Stream::Dropout, 0, 0)
        );
        assert_ne!(
            derive(42, Stream::Split, 1, 0),
            derive(42, Stream::Split, 0, 1)
        );
    }
}
