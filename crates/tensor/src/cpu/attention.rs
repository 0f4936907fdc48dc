//! Scaled dot-product attention over packed variable-length sequences
//! (FlashAttention-2's algorithm, run on CPU tiles).
//!
//! Tokens of all sequences are concatenated: q is [T, Hq, D], k and v are
//! [T, Hkv, D], and `cu_seqlens` (length B + 1) marks where each sequence
//! starts. No token attends across a sequence boundary, so packing needs no
//! padding and no [T×T] mask.
//!
//! Forward: one task per (head, query block of [`BR`] rows of one sequence).
//! It walks the key blocks of [`BC`] rows, computes the score tile
//! S = scale·Q·Kᵀ with a GEMM, and keeps FlashAttention's online softmax: a
//! running row max m and row sum l, rescaling the output accumulator whenever
//! m grows. Only the log-sum-exp m + ln l is saved, per query row, so backward
//! rebuilds any probability tile as exp(S − lse) without the [seq×seq] matrix.
//! A task's scratch is [`workspace_elems`] elements whatever the length.
//!
//! Backward recomputes tiles twice instead of adding into shared rows from
//! several threads: one pass parallel over (kv head, key block) accumulates
//! dK and dV over every query head of the GQA group and every query block,
//! a second parallel over (query head, query block) accumulates dQ. Each task
//! then owns its gradient rows, so there are no write races and no atomics.
//!
//! Tasks write into head-major [H, T, D] staging buffers, where a task's rows
//! are one contiguous chunk that safe Rust can hand out with `split_at_mut`;
//! a final parallel copy reorders them to the [T, H, D] layout. The copy is
//! O(T·H·D), a factor of the sequence length below the attention itself.
//!
//! Dropout (as PyTorch's SDPA): o = dropout(softmax(S))·V. The normaliser and
//! the saved lse use the undropped probabilities. Whether P[h, i, j] is kept
//! is a pure function of the mask seed and [`dropout_index`], so backward
//! regenerates exactly forward's mask.

use rayon::prelude::*;

use crate::Real;
use crate::cpu::matmul::{MatRef, gemm_into, gemm_scaled_into};
use crate::shared::dropout::{DropoutMask, SeqKeys};
use crate::shared::dropout::{keep, keep_threshold};

/// Query rows per tile. 128 query rows × 256 keys make GEMMs large enough for
/// the `gemm` crate's packing to pay off while the two score-sized tiles of a
/// task (128 KiB each in f32) stay in L2. Measured on the 2-core build
/// machine at T = 2048 bidirectional (forward / backward ms): 64×64
/// 160 / 564, 128×128 149 / 490, 64×256 160 / 476, 128×256 151 / 392.
pub const BR: usize = 128;
/// Key rows per tile (see [`BR`]).
pub const BC: usize = 256;

/// Geometry and options of one varlen attention call.
#[derive(Debug, Clone)]
pub struct Problem<'a> {
    /// Sequence boundaries: cu[0] = 0, non-decreasing, cu[B] = T.
    pub cu_seqlens: &'a [u32],
    /// Hq: query heads.
    pub q_heads: usize,
    /// Hkv: key/value heads; query head h reads kv head h / (Hq / Hkv).
    pub kv_heads: usize,
    /// D: the head dimension.
    pub head_dim: usize,
    /// Whether query i sees only keys j ≤ i of its sequence.
    pub causal: bool,
    /// Softmax scale, usually 1/√D.
    pub scale: f64,
    /// Dropout on the attention probabilities (None or p = 0: off).
    pub dropout: Option<DropoutMask>,
}

impl Problem<'_> {
    fn tokens(&self) -> usize {
        self.cu_seqlens.last().map_or(0, |&t| t as usize)
    }

    fn kv_head(&self, h: usize) -> usize {
        h / (self.q_heads / self.kv_heads)
    }

    /// Internal consistency; the ops layer reports these as errors first.
    fn assert_valid(&self) {
        let cu = self.cu_seqlens;
        assert!(
            !cu.is_empty() && cu[0] == 0 && cu.windows(2).all(|w| w[0] <= w[1]),
            "attention: bad cu_seqlens {cu:?}"
        );
        assert!(
            self.head_dim > 0
                && self.kv_heads > 0
                && self.q_heads > 0
                && self.q_heads.is_multiple_of(self.kv_heads),
            "attention: bad heads/head_dim {self:?}"
        );
    }
}

/// The mask stream index of probability P[h, i, j] (token indices i, j of a
/// call of T tokens): (h·T + i)·T + j, unique per (h, i, j). With
/// per-sequence keys, i, j and T are counted within the sequence instead.
#[inline]
pub fn dropout_index(tokens: usize, h: usize, i: usize, j: usize) -> u64 {
    let t = tokens as u64;
    (h as u64 * t + i as u64) * t + j as u64
}

/// The dropout mask resolved for one call, then (by [`Dropper::at`]) for one
/// query block: stream seed, index base, keep threshold and 1/(1 − p).
#[derive(Clone, Copy)]
struct Dropper<'a> {
    seed: u64,
    offset: u64,
    thr: u64,
    inv_keep: f64,
    /// T of the index: the call's tokens, or the block's sequence length.
    tokens: usize,
    /// The token the indices count from: 0, or the block's sequence start.
    base: usize,
    keys: Option<&'a SeqKeys>,
}

impl<'a> Dropper<'a> {
    fn new(pb: &'a Problem) -> Option<Self> {
        pb.dropout.as_ref().filter(|m| m.p > 0.0).map(|m| Self {
            seed: m.seed,
            offset: m.offset,
            thr: keep_threshold(m.p),
            inv_keep: 1.0 / (1.0 - m.p as f64),
            tokens: pb.tokens(),
            base: 0,
            keys: m.keys.as_ref(),
        })
    }

    /// This mask as query block `qb` sees it (its sequence's stream with keys).
    fn at(self, qb: &Block) -> Self {
        match self.keys {
            None => self,
            Some(k) => Self {
                seed: k.seed(self.seed, qb.seq),
                tokens: qb.seq_end - qb.seq_start,
                base: qb.seq_start,
                ..self
            },
        }
    }

    /// mask/(1 − p) for P[h, i, j]: 0 or 1/(1 − p).
    #[inline]
    fn factor<T: Real>(&self, h: usize, i: usize, j: usize) -> T {
        let idx =
            self.offset
                .wrapping_add(dropout_index(self.tokens, h, i - self.base, j - self.base));
        if keep(self.seed, idx, self.thr) {
            T::of(self.inv_keep)
        } else {
            T::zero()
        }
    }

    /// Multiplies tile rows of (query block `qb`, keys from `k0`) by their mask factors.
    fn apply<T: Real>(&self, h: usize, qb: Block, k0: usize, bc: usize, tile: &mut [T]) {
        for (r, row) in tile.chunks_mut(BC).take(qb.len()).enumerate() {
            for (c, x) in row[..bc].iter_mut().enumerate() {
                *x *= self.factor(h, qb.start + r, k0 + c);
            }
        }
    }
}

/// Consecutive rows [start, end) of the sequence [seq_start, seq_end).
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    /// The sequence's index in the call.
    seq: usize,
    seq_start: usize,
    seq_end: usize,
}

impl Block {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Every sequence cut into blocks of at most `size` rows, in token order.
fn blocks(cu: &[u32], size: usize) -> Vec<Block> {
    let mut out = Vec::new();
    for (seq, w) in cu.windows(2).enumerate() {
        let (seq_start, seq_end) = (w[0] as usize, w[1] as usize);
        for start in (seq_start..seq_end).step_by(size) {
            out.push(Block {
                start,
                end: (start + size).min(seq_end),
                seq,
                seq_start,
                seq_end,
            });
        }
    }
    out
}

/// Cuts a head-major [heads, T, width] buffer into one chunk per (head, block).
fn split_head_major<'a, U>(
    mut buf: &'a mut [U],
    heads: usize,
    width: usize,
    blocks: &[Block],
) -> Vec<(usize, Block, &'a mut [U])> {
    let mut out = Vec::with_capacity(heads * blocks.len());
    for h in 0..heads {
        for &b in blocks {
            let (chunk, rest) = std::mem::take(&mut buf).split_at_mut(b.len() * width);
            out.push((h, b, chunk));
            buf = rest;
        }
    }
    assert!(buf.is_empty(), "attention: blocks do not cover the tokens");
    out
}

/// out [T, H, D] = the head-major staging [H, T, D] reordered.
fn to_token_major<T: Real>(stage: &[T], heads: usize, d: usize, out: &mut [T]) {
    let tokens = out.len() / (heads * d);
    out.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(t, row)| {
            for (h, dst) in row.chunks_mut(d).enumerate() {
                let src = (h * tokens + t) * d;
                dst.copy_from_slice(&stage[src..src + d]);
            }
        });
}

/// Per-task scratch in elements: two [BR×BC] tiles and the running max and sum
/// of [BR] rows. It does not depend on the number of tokens or the sequence
/// lengths; besides it, a task only writes its own [BR×D] rows of the output.
pub const fn workspace_elems() -> usize {
    2 * BR * BC + 2 * BR
}

/// A task's scratch, carved from one allocation of [`workspace_elems`].
struct Scratch<'a, T> {
    /// Scores, then probabilities, then dS: [BR rows × BC], row stride BC.
    s: &'a mut [T],
    /// dP = dO·Vᵀ (backward), or the dropped probabilities: same layout.
    dp: &'a mut [T],
    /// Running row max (forward).
    m: &'a mut [T],
    /// Running row sum (forward).
    l: &'a mut [T],
}

fn scratch<T>(buf: &mut [T]) -> Scratch<'_, T> {
    let (s, rest) = buf.split_at_mut(BR * BC);
    let (dp, rest) = rest.split_at_mut(BR * BC);
    let (m, l) = rest.split_at_mut(BR);
    Scratch { s, dp, m, l }
}

/// Row-block views into the packed [T, H, D] tensors.
struct Views<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
}

impl<'a, T> Views<'a, T> {
    /// Rows start..start+n of head `h` of a [T, heads, d] tensor as an [n × d] matrix.
    fn rows(x: &'a [T], heads: usize, d: usize, h: usize, start: usize, n: usize) -> MatRef<'a, T> {
        MatRef::strided(&x[(start * heads + h) * d..], n, d, heads * d, 1)
    }

    /// The transpose of [`Views::rows`]: [d × n].
    fn rows_t(
        x: &'a [T],
        heads: usize,
        d: usize,
        h: usize,
        start: usize,
        n: usize,
    ) -> MatRef<'a, T> {
        MatRef::strided(&x[(start * heads + h) * d..], d, n, 1, heads * d)
    }
}

/// The [bc] keys of a tile starting at `k0`, clipped to the sequence.
fn key_range(b: &Block, k0: usize, size: usize) -> usize {
    (k0 + size).min(b.seq_end) - k0
}

/// s = scale·Q[qb]·K[k0..k0+bc]ᵀ for query head h, with causally hidden entries −∞.
fn scores<T: Real>(
    pb: &Problem,
    x: &Views<T>,
    h: usize,
    qb: Block,
    k0: usize,
    bc: usize,
    s: &mut [T],
) {
    let (hq, hkv, d) = (pb.q_heads, pb.kv_heads, pb.head_dim);
    let q = Views::rows(x.q, hq, d, h, qb.start, qb.len());
    let kt = Views::rows_t(x.k, hkv, d, pb.kv_head(h), k0, bc);
    gemm_scaled_into(q, kt, s, BC, T::zero(), T::of(pb.scale), 1);
    // Only tiles that cross the diagonal have hidden entries.
    if pb.causal && k0 + bc > qb.start + 1 {
        for (r, row) in s.chunks_mut(BC).take(qb.len()).enumerate() {
            let visible = (qb.start + r + 1).saturating_sub(k0).min(bc);
            row[visible..bc].fill(T::neg_infinity());
        }
    }
}

/// Whether a causal query block has any visible key at or after `k0`.
fn sees(pb: &Problem, qb: &Block, k0: usize) -> bool {
    !pb.causal || k0 < qb.end
}

/// One forward task: output rows `acc` [br×D] and `lse` [br] of head h, block qb.
fn forward_tile<T: Real>(
    pb: &Problem,
    x: &Views<T>,
    drop: Option<Dropper>,
    h: usize,
    qb: Block,
    acc: &mut [T],
    lse: &mut [T],
    ws: Scratch<T>,
) {
    let drop = drop.map(|d| d.at(&qb));
    let (d, br) = (pb.head_dim, qb.len());
    let (m, l) = (&mut ws.m[..br], &mut ws.l[..br]);
    m.fill(T::neg_infinity());
    l.fill(T::zero());
    acc.fill(T::zero());
    for k0 in (qb.seq_start..qb.seq_end).step_by(BC) {
        if !sees(pb, &qb, k0) {
            break;
        }
        let bc = key_range(&qb, k0, BC);
        scores(pb, x, h, qb, k0, bc, ws.s);
        for (r, row) in ws.s.chunks_mut(BC).take(br).enumerate() {
            let row = &mut row[..bc];
            let m_new = row.iter().fold(m[r], |a, &b| a.max(b));
            if m_new == T::neg_infinity() {
                // Nothing visible to this row yet: contributes nothing.
                row.fill(T::zero());
                continue;
            }
            let corr = (m[r] - m_new).exp();
            let sum = T::exp_sub_sum(row, m_new);
            l[r] = l[r] * corr + sum;
            m[r] = m_new;
            if corr != T::one() {
                acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= corr);
            }
        }
        if let Some(drop) = &drop {
            drop.apply(h, qb, k0, bc, ws.s);
        }
        let p = MatRef::strided(&*ws.s, br, bc, BC, 1);
        let v = Views::rows(x.v, pb.kv_heads, d, pb.kv_head(h), k0, bc);
        gemm_into(p, v, acc, d, T::one(), 1);
    }
    for r in 0..br {
        let inv = T::one() / l[r];
        acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= inv);
        lse[r] = m[r] + l[r].ln();
    }
}

fn check_sizes<T>(pb: &Problem, q: &[T], k: &[T], v: &[T]) -> usize {
    pb.assert_valid();
    let t = pb.tokens();
    assert_eq!(q.len(), t * pb.q_heads * pb.head_dim, "attention: q size");
    assert_eq!(k.len(), t * pb.kv_heads * pb.head_dim, "attention: k size");
    assert_eq!(v.len(), k.len(), "attention: v size");
    t
}

/// o [T, Hq, D] = softmax(scale·QKᵀ, masked per sequence)·V; lse [Hq, T] = the
/// log-sum-exp of each query row's scaled scores (undropped), for backward.
pub fn forward<T: Real>(pb: &Problem, q: &[T], k: &[T], v: &[T], o: &mut [T], lse: &mut [T]) {
    let tokens = check_sizes(pb, q, k, v);
    let (hq, d) = (pb.q_heads, pb.head_dim);
    assert_eq!(o.len(), q.len(), "attention: o size");
    assert_eq!(lse.len(), hq * tokens, "attention: lse size");
    let x = Views { q, k, v };
    let drop = Dropper::new(pb);
    let qblocks = blocks(pb.cu_seqlens, BR);
    let mut stage = vec![T::zero(); o.len()];
    split_head_major(&mut stage, hq, d, &qblocks)
        .into_iter()
        .zip(split_head_major(lse, hq, 1, &qblocks))
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each_init(
            || vec![T::zero(); workspace_elems()],
            |ws, ((h, qb, acc), (_, _, lse))| {
                forward_tile(pb, &x, drop, h, qb, acc, lse, scratch(ws));
            },
        );
    to_token_major(&stage, hq, d, o);
}

/// Backward inputs shared by both passes.
struct Grads<'a, T> {
    x: Views<'a, T>,
    dout: &'a [T],
    lse: &'a [T],
    /// Δ [Hq, T] = rowsum(dO∘O).
    delta: &'a [T],
    drop: Option<Dropper<'a>>,
    tokens: usize,
}

impl<T: Real> Grads<'_, T> {
    /// Fills s with dS = scale·P∘(dP∘mask/(1−p) − Δ) for head h, query block qb and
    /// the `bc` keys from k0; leaves dp = dO·Vᵀ (dropout not applied).
    /// Before that, if `dv` is given, adds dropout(P)ᵀ·dO into it ([bc×D]).
    fn ds_tile(
        &self,
        pb: &Problem,
        h: usize,
        qb: Block,
        k0: usize,
        bc: usize,
        ws: &mut Scratch<T>,
        dv: Option<&mut [T]>,
    ) {
        let (hq, d, br, g) = (pb.q_heads, pb.head_dim, qb.len(), pb.kv_head(h));
        scores(pb, &self.x, h, qb, k0, bc, ws.s);
        let lse = &self.lse[h * self.tokens..];
        for (r, row) in ws.s.chunks_mut(BC).take(br).enumerate() {
            let l = lse[qb.start + r];
            T::exp_sub_sum(&mut row[..bc], l);
        }
        let dout = Views::rows(self.dout, hq, d, h, qb.start, br);
        let drop = self.drop.map(|d| d.at(&qb));
        if let Some(dv) = dv {
            let pd: &[T] = match &drop {
                Some(drop) => {
                    for (dst, src) in ws.dp.chunks_mut(BC).zip(ws.s.chunks(BC)).take(br) {
                        dst[..bc].copy_from_slice(&src[..bc]);
                    }
                    drop.apply(h, qb, k0, bc, ws.dp);
                    &*ws.dp
                }
                None => &*ws.s,
            };
            gemm_into(MatRef::strided(pd, bc, br, 1, BC), dout, dv, d, T::one(), 1);
        }
        let vt = Views::rows_t(self.x.v, pb.kv_heads, d, g, k0, bc);
        gemm_into(dout, vt, ws.dp, BC, T::zero(), 1);
        let delta = &self.delta[h * self.tokens..];
        let scale = T::of(pb.scale);
        for (r, (s, dp)) in
            ws.s.chunks_mut(BC)
                .zip(ws.dp.chunks(BC))
                .take(br)
                .enumerate()
        {
            let i = qb.start + r;
            for c in 0..bc {
                let dp = match &drop {
                    Some(drop) => dp[c] * drop.factor(h, i, k0 + c),
                    None => dp[c],
                };
                s[c] = scale * s[c] * (dp - delta[i]);
            }
        }
    }
}

/// dK, dV rows [bc×D] of kv head g, key block kb: sums over the group's query heads.
fn dkv_tile<T: Real>(
    pb: &Problem,
    gr: &Grads<T>,
    g: usize,
    kb: Block,
    dk: &mut [T],
    dv: &mut [T],
    mut ws: Scratch<T>,
) {
    let (d, bc, group) = (pb.head_dim, kb.len(), pb.q_heads / pb.kv_heads);
    dk.fill(T::zero());
    dv.fill(T::zero());
    for h in g * group..(g + 1) * group {
        for q0 in (kb.seq_start..kb.seq_end).step_by(BR) {
            let qb = Block {
                start: q0,
                end: (q0 + BR).min(kb.seq_end),
                ..kb
            };
            if !sees(pb, &qb, kb.start) {
                continue;
            }
            gr.ds_tile(pb, h, qb, kb.start, bc, &mut ws, Some(&mut *dv));
            let dst = MatRef::strided(&*ws.s, bc, qb.len(), 1, BC);
            let q = Views::rows(gr.x.q, pb.q_heads, d, h, q0, qb.len());
            gemm_into(dst, q, dk, d, T::one(), 1);
        }
    }
}

/// dQ rows [br×D] of query head h, query block qb.
fn dq_tile<T: Real>(
    pb: &Problem,
    gr: &Grads<T>,
    h: usize,
    qb: Block,
    dq: &mut [T],
    mut ws: Scratch<T>,
) {
    let (d, br) = (pb.head_dim, qb.len());
    dq.fill(T::zero());
    for k0 in (qb.seq_start..qb.seq_end).step_by(BC) {
        if !sees(pb, &qb, k0) {
            break;
        }
        let bc = key_range(&qb, k0, BC);
        gr.ds_tile(pb, h, qb, k0, bc, &mut ws, None);
        let ds = MatRef::strided(&*ws.s, br, bc, BC, 1);
        let k = Views::rows(gr.x.k, pb.kv_heads, d, pb.kv_head(h), k0, bc);
        gemm_into(ds, k, dq, d, T::one(), 1);
    }
}

/// dq [T, Hq, D], dk and dv [T, Hkv, D] (all overwritten) from dout = ∂L/∂o and
/// forward's inputs, output and lse.
pub fn backward<T: Real>(
    pb: &Problem,
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let tokens = check_sizes(pb, q, k, v);
    let (hq, hkv, d) = (pb.q_heads, pb.kv_heads, pb.head_dim);
    assert!(
        dout.len() == q.len() && o.len() == q.len() && dq.len() == q.len(),
        "attention: dout/o/dq size"
    );
    assert!(
        dk.len() == k.len() && dv.len() == k.len(),
        "attention: dk/dv size"
    );
    assert_eq!(lse.len(), hq * tokens, "attention: lse size");
    if tokens == 0 {
        return;
    }
    let mut delta = vec![T::zero(); hq * tokens];
    delta
        .par_chunks_mut(tokens)
        .enumerate()
        .for_each(|(h, delta)| {
            for (t, dl) in delta.iter_mut().enumerate() {
                let at = (t * hq + h) * d;
                *dl = dout[at..at + d]
                    .iter()
                    .zip(&o[at..at + d])
                    .map(|(&a, &b)| a * b)
                    .sum();
            }
        });
    let gr = Grads {
        x: Views { q, k, v },
        dout,
        lse,
        delta: &delta,
        drop: Dropper::new(pb),
        tokens,
    };

    let kblocks = blocks(pb.cu_seqlens, BC);
    let mut stage_dk = vec![T::zero(); k.len()];
    let mut stage_dv = vec![T::zero(); k.len()];
    split_head_major(&mut stage_dk, hkv, d, &kblocks)
        .into_iter()
        .zip(split_head_major(&mut stage_dv, hkv, d, &kblocks))
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each_init(
            || vec![T::zero(); workspace_elems()],
            |ws, ((g, kb, dk), (_, _, dv))| dkv_tile(pb, &gr, g, kb, dk, dv, scratch(ws)),
        );
    to_token_major(&stage_dk, hkv, d, dk);
    to_token_major(&stage_dv, hkv, d, dv);
    drop(stage_dk);
    drop(stage_dv);

    let qblocks = blocks(pb.cu_seqlens, BR);
    let mut stage_dq = vec![T::zero(); q.len()];
    split_head_major(&mut stage_dq, hq, d, &qblocks)
        .into_par_iter()
        .for_each_init(
            || vec![T::zero(); workspace_elems()],
            |ws, (h, qb, dq)| dq_tile(pb, &gr, h, qb, dq, scratch(ws)),
        );
    to_token_major(&stage_dq, hq, d, dq);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, dot, rng, uniform};

    fn cu_of(lens: &[usize]) -> Vec<u32> {
        let mut cu = vec![0u32];
        for &n in lens {
            cu.push(cu.last().unwrap() + n as u32);
        }
        cu
    }

    fn problem(cu: &[u32], hq: usize, hkv: usize, d: usize, causal: bool) -> Problem<'_> {
        Problem {
            cu_seqlens: cu,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
            causal,
            scale: 1.0 / (d as f64).sqrt(),
            dropout: None,
        }
    }

    /// Per sequence and head: the full score matrix with an explicit mask,
    /// softmax, dropout by the documented index, times V. Returns (o, lse).
    fn naive(pb: &Problem, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (hq, hkv, d) = (pb.q_heads, pb.kv_heads, pb.head_dim);
        let t = pb.tokens();
        let mut o = vec![0.0; t * hq * d];
        let mut lse = vec![0.0; hq * t];
        for (seq, w) in pb.cu_seqlens.windows(2).enumerate() {
            let (s0, s1) = (w[0] as usize, w[1] as usize);
            let n = s1 - s0;
            for h in 0..hq {
                let g = h * hkv / hq;
                for i in 0..n {
                    let qi = &q[((s0 + i) * hq + h) * d..][..d];
                    let mut row = vec![f64::NEG_INFINITY; n];
                    for j in 0..n {
                        if pb.causal && j > i {
                            continue;
                        }
                        let kj = &k[((s0 + j) * hkv + g) * d..][..d];
                        row[j] = pb.scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    }
                    let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = row.iter().map(|s| (s - mx).exp()).sum();
                    lse[h * t + s0 + i] = mx + z.ln();
                    for j in 0..n {
                        let mut p = (row[j] - mx).exp() / z;
                        if let Some(m) = &pb.dropout {
                            // One stream per call, or per sequence with keys.
                            let (seed, idx) = match &m.keys {
                                None => (m.seed, dropout_index(t, h, s0 + i, s0 + j)),
                                Some(k) => (k.seed(m.seed, seq), dropout_index(n, h, i, j)),
                            };
                            p = if keep(seed, m.offset + idx, keep_threshold(m.p)) {
                                p / (1.0 - m.p as f64)
                            } else {
                                0.0
                            };
                        }
                        let vj = &v[((s0 + j) * hkv + g) * d..][..d];
                        for c in 0..d {
                            o[((s0 + i) * hq + h) * d + c] += p * vj[c];
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    struct Inputs<T> {
        q: Vec<T>,
        k: Vec<T>,
        v: Vec<T>,
    }

    fn inputs<T: Real>(seed: u64, pb: &Problem, spread: f64) -> Inputs<T> {
        let mut r = rng(seed);
        let t = pb.tokens();
        Inputs {
            q: uniform(&mut r, t * pb.q_heads * pb.head_dim, spread),
            k: uniform(&mut r, t * pb.kv_heads * pb.head_dim, spread),
            v: uniform(&mut r, t * pb.kv_heads * pb.head_dim, 1.0),
        }
    }

    fn run<T: Real>(pb: &Problem, x: &Inputs<T>) -> (Vec<T>, Vec<T>) {
        let t = pb.tokens();
        let mut o = vec![T::nan(); x.q.len()];
        let mut lse = vec![T::nan(); pb.q_heads * t];
        forward(pb, &x.q, &x.k, &x.v, &mut o, &mut lse);
        (o, lse)
    }

    #[test]
    fn forward_matches_naive_on_ragged_lengths_odd_dims_and_gqa() {
        let lens = cu_of(&[1, 7, 129, 64, 3]);
        for &(hq, hkv, d) in &[(6, 2, 5), (4, 1, 17), (2, 2, 8)] {
            for causal in [true, false] {
                let pb = problem(&lens, hq, hkv, d, causal);
                let x = inputs::<f64>(hq as u64 * 31 + d as u64, &pb, 2.0);
                let (o, lse) = run(&pb, &x);
                let (want_o, want_lse) = naive(&pb, &x.q, &x.k, &x.v);
                let what = format!("hq {hq} hkv {hkv} d {d} causal {causal}");
                assert_close(&format!("o, {what}"), &o, &want_o, 1e-12);
                assert_close(&format!("lse, {what}"), &lse, &want_lse, 1e-12);
            }
        }
    }

    #[test]
    fn f32_forward_matches_f64_reference_with_dropout() {
        let lens = cu_of(&[70, 0, 5, 130, 300]);
        let mut pb = problem(&lens, 4, 2, 16, true);
        // One stream for the call, then one per sequence.
        for keys in [None, Some(SeqKeys::new(&lens, &[4, 3, 2, 1, 0]).unwrap())] {
            pb.dropout = Some(DropoutMask::new(0.25, 77, 1000).with_keys(keys));
            let x = inputs::<f64>(5, &pb, 2.0);
            let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let x32 = Inputs {
                q: to32(&x.q),
                k: to32(&x.k),
                v: to32(&x.v),
            };
            let (o, lse) = run(&pb, &x32);
            let (want_o, want_lse) = naive(&pb, &x.q, &x.k, &x.v);
            assert_close("o f32", &o, &to32(&want_o), 1e-5);
            assert_close("lse f32", &lse, &to32(&want_lse), 1e-6);
        }
    }

    #[test]
    fn a_keyed_sequence_is_dropped_as_when_it_runs_alone() {
        // Sequence 1 (300 tokens: several blocks) in a pack, then alone.
        let (hq, d) = (2, 8);
        let lens = cu_of(&[70, 300, 5]);
        let mut pb = problem(&lens, hq, 1, d, false);
        pb.dropout = Some(
            DropoutMask::new(0.3, 7, 0)
                .with_keys(Some(SeqKeys::new(&lens, &[100, 200, 300]).unwrap())),
        );
        let x = inputs::<f64>(6, &pb, 1.5);
        let (o, _) = run(&pb, &x);
        let alone_lens = cu_of(&[300]);
        let mut alone = problem(&alone_lens, hq, 1, d, false);
        alone.dropout = Some(
            DropoutMask::new(0.3, 7, 0).with_keys(Some(SeqKeys::new(&alone_lens, &[200]).unwrap())),
        );
        let y = Inputs {
            q: x.q[70 * hq * d..370 * hq * d].to_vec(),
            k: x.k[70 * d..370 * d].to_vec(),
            v: x.v[70 * d..370 * d].to_vec(),
        };
        let (o1, _) = run(&alone, &y);
        assert_eq!(o1, &o[70 * hq * d..370 * hq * d]);
        // Without keys the same sequence draws another mask.
        alone.dropout = Some(DropoutMask::new(0.3, 7, 0));
        assert_ne!(run(&alone, &y).0, o1);
    }

    #[test]
    fn backward_matches_finite_differences() {
        // The long sequence spans several query blocks and two key blocks;
        // GQA 4:2; dropout on in the last case.
        let long = BC + BR / 2 + 7;
        assert!(long > BC.max(2 * BR));
        let lens = cu_of(&[3, long, 1]);
        // dropout: 0 off, 1 one stream, 2 one stream per sequence.
        let cases = [
            (4, 2, 3, true, 0),
            (2, 1, 5, false, 0),
            (4, 2, 3, true, 1),
            (2, 1, 3, false, 2),
        ];
        for &(hq, hkv, d, causal, dropout) in &cases {
            let mut pb = problem(&lens, hq, hkv, d, causal);
            if dropout > 0 {
                let keys = (dropout == 2).then(|| SeqKeys::new(&lens, &[8, 9, 10]).unwrap());
                pb.dropout = Some(DropoutMask::new(0.3, 5, 0).with_keys(keys));
            }
            let x = inputs::<f64>(9 + d as u64, &pb, 1.5);
            let g: Vec<f64> = uniform(&mut rng(10), x.q.len(), 1.0);
            let (o, lse) = run(&pb, &x);
            let mut dq = vec![f64::NAN; x.q.len()];
            let mut dk = vec![f64::NAN; x.k.len()];
            let mut dv = vec![f64::NAN; x.v.len()];
            backward(
                &pb, &g, &x.q, &x.k, &x.v, &o, &lse, &mut dq, &mut dk, &mut dv,
            );
            let loss = |q: &[f64], k: &[f64], v: &[f64]| {
                let mut o = vec![0.0; q.len()];
                let mut lse = vec![0.0; lse.len()];
                forward(&pb, q, k, v, &mut o, &mut lse);
                dot(&o, &g)
            };
            let what = format!("hq {hq} hkv {hkv} d {d} causal {causal} dropout {dropout}");
            check_grad(
                &format!("dq {what}"),
                |q| loss(q, &x.k, &x.v),
                &x.q,
                &dq,
                80,
            );
            check_grad(
                &format!("dk {what}"),
                |k| loss(&x.q, k, &x.v),
                &x.k,
                &dk,
                80,
            );
            check_grad(
                &format!("dv {what}"),
                |v| loss(&x.q, &x.k, v),
                &x.v,
                &dv,
                80,
            );
        }
    }

    #[test]
    fn dropout_is_reproducible_seeded_and_drops_about_p() {
        // One-hot values (v_j = e_j) make o[i] the row of dropped probabilities.
        let n = 64;
        let lens = cu_of(&[n]);
        let mut pb = problem(&lens, 4, 4, n, false);
        let mut x = inputs::<f64>(3, &pb, 1.0);
        x.v.iter_mut().for_each(|v| *v = 0.0);
        for j in 0..n {
            for h in 0..4 {
                x.v[(j * 4 + h) * n + j] = 1.0;
            }
        }
        let (plain, _) = run(&pb, &x);
        let p = 0.2;
        pb.dropout = Some(DropoutMask::new(p, 1, 0));
        let (a, lse_a) = run(&pb, &x);
        let (b, _) = run(&pb, &x);
        assert_eq!(a, b, "same seed, same output");
        pb.dropout = Some(DropoutMask::new(p, 2, 0));
        let (c, lse_c) = run(&pb, &x);
        assert_ne!(a, c, "another seed drops other entries");
        assert_eq!(lse_a, lse_c, "lse ignores dropout");
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!(
            (dropped - p as f64).abs() < 0.02,
            "dropped fraction {dropped}"
        );
        for (&got, &full) in a.iter().zip(&plain) {
            assert!(got == 0.0 || (got - full / (1.0 - p as f64)).abs() < 1e-12);
        }
    }

    #[test]
    fn sequences_do_not_see_each_other() {
        let lens = cu_of(&[5, 66, 9]);
        for causal in [true, false] {
            let pb = problem(&lens, 3, 1, 7, causal);
            let x = inputs::<f32>(12, &pb, 1.0);
            let (o, lse) = run(&pb, &x);
            // Perturb every q, k, v of the middle sequence (tokens 5..71).
            let mut y = Inputs {
                q: x.q.clone(),
                k: x.k.clone(),
                v: x.v.clone(),
            };
            y.q[5 * 21..71 * 21].iter_mut().for_each(|a| *a += 0.5);
            y.k[5 * 7..71 * 7].iter_mut().for_each(|a| *a -= 0.3);
            y.v[5 * 7..71 * 7].iter_mut().for_each(|a| *a *= 2.0);
            let (o2, lse2) = run(&pb, &y);
            for t in (0..5).chain(71..80) {
                assert_eq!(
                    o[t * 21..(t + 1) * 21],
                    o2[t * 21..(t + 1) * 21],
                    "token {t}"
                );
                for h in 0..3 {
                    assert_eq!(lse[h * 80 + t], lse2[h * 80 + t]);
                }
            }
            assert_ne!(o[5 * 21..71 * 21], o2[5 * 21..71 * 21]);
        }
    }

    #[test]
    fn empty_sequences_and_single_tokens() {
        // A length-1 sequence attends to itself only: o = v, lse = scale·q·k.
        let lens = cu_of(&[0, 1, 0, 1, 0]);
        let pb = problem(&lens, 2, 1, 3, false);
        let x = inputs::<f64>(4, &pb, 1.0);
        let (o, lse) = run(&pb, &x);
        for t in 0..2 {
            for h in 0..2 {
                assert_eq!(o[(t * 2 + h) * 3..][..3], x.v[t * 3..][..3]);
                let s: f64 = (0..3)
                    .map(|c| x.q[(t * 2 + h) * 3 + c] * x.k[t * 3 + c])
                    .sum();
                assert!((lse[h * 2 + t] - pb.scale * s).abs() < 1e-14);
            }
        }
        let none = cu_of(&[]);
        let pb = problem(&none, 2, 1, 3, true);
        forward::<f32>(&pb, &[], &[], &[], &mut [], &mut []);
        backward::<f32>(&pb, &[], &[], &[], &[], &[], &[], &mut [], &mut [], &mut []);
    }

    #[test]
    fn workspace_is_independent_of_length() {
        // The scratch is fixed by the tile sizes alone; a sequence of 8 blocks
        // (whose score matrix would be over 30× the scratch) still matches the reference.
        assert_eq!(workspace_elems(), 2 * BR * BC + 2 * BR);
        let n = 8 * BR.max(BC);
        assert!(n * n > 30 * workspace_elems());
        let lens = cu_of(&[n]);
        let pb = problem(&lens, 1, 1, 4, true);
        let x = inputs::<f64>(6, &pb, 1.0);
        let (o, lse) = run(&pb, &x);
        let (want_o, want_lse) = naive(&pb, &x.q, &x.k, &x.v);
        assert_close("long o", &o, &want_o, 1e-12);
        assert_close("long lse", &lse, &want_lse, 1e-12);
    }
}
