//! Fused LM head + cross-entropy on the CPU, never materialising the logits.
//!
//! With V up to 128k, logits [N, V] in f32 would cost N·V·4 bytes (1 GB at
//! N = 2048), so rows are taken `Tiling::rows` at a time and the vocabulary
//! `Tiling::vocab` columns at a time. A tile's logits h_chunk·W_tileᵀ live
//! only while that tile is processed:
//! - forward (pass 1) folds each tile into a running log-sum-exp per row
//!   (running max, sum rescaled when the max grows) and picks the target's
//!   logit from whichever tile holds it; it returns the loss and saves the
//!   per-row lse, the only state backward needs;
//! - backward (pass 2) recomputes each tile's logits, turns them in place
//!   into G = c_r·(softmax − onehot) and adds G·W_tile into dh and, when the
//!   head is trained, G_tileᵀ·h_chunk into dW's tile rows.
//!
//! Rows that do not contribute (ignored target or zero weight) are dropped
//! before any GEMM: only active rows are gathered into the chunk buffer, so
//! prompt tokens under the ignore index cost nothing.
//!
//! Schedule: chunks run one after another and each GEMM (and the softmax
//! arithmetic, split over rows) uses the whole pool. Running chunks in
//! parallel with single-threaded GEMMs measured the same on the 2-core build
//! machine (N = 2048, H = 576, V = 49152: forward 2.53 s vs 2.48 s, backward
//! 3.66 s vs 3.47 s, one-off timings) but would hold one chunk's workspace
//! per thread and need per-thread copies of dW, so it was dropped.

use std::ops::Range;

use rayon::prelude::*;

use crate::Real;
use crate::cpu::matmul::{MatRef, gemm_into};
pub(crate) use crate::shared::tiling::Active;
pub use crate::shared::tiling::Tiling;

/// The ignore index of PyTorch's and Hugging Face's cross-entropy.
pub const IGNORE_INDEX: i64 = -100;
/// Default rows per chunk.
pub const ROW_CHUNK: usize = 256;
/// Default vocabulary columns per tile: with 256 rows a 4 MB f32 logit tile.
pub const VOCAB_TILE: usize = 4096;

/// Rows below which the softmax arithmetic of a tile stays on one thread.
const ROWS_PER_TASK: usize = 8;

impl Default for Tiling {
    fn default() -> Self {
        Self {
            rows: ROW_CHUNK,
            vocab: VOCAB_TILE,
        }
    }
}

/// Bytes of working memory the CPU kernels allocate for `n` rows, hidden size
/// `dim` and vocabulary `vocab`, beyond their outputs (the larger of forward
/// and backward), for elements of `elem` bytes. `logit_tiles` / `row_bufs`
/// say how many R×Vt and R×H buffers a chunk holds.
pub(crate) fn workspace_bytes_for(
    n: usize,
    dim: usize,
    vocab: usize,
    tiling: Tiling,
    logit_tiles: usize,
    row_bufs: usize,
    elem: usize,
) -> usize {
    let r = tiling.rows.min(n);
    let vt = tiling.vocab.min(vocab);
    // Per chunk: the logit tiles, gathered / gradient rows, per-row state, and
    // the GEMM's packed copies of its operands, at most a logit tile (G, the
    // left operand of dh += G·W) plus a weight tile.
    let chunk =
        (logit_tiles * r * vt + row_bufs * r * dim) * elem + r * 4 * 8 + (r * vt + vt * dim) * elem;
    // Shared: the active row list, its coefficients and the chunk table.
    let shared = n * (std::mem::size_of::<usize>() + elem) + n.div_ceil(r.max(1)) * 64;
    chunk + shared
}

/// Working memory of [`forward`] + [`backward`] for f32: O(R·Vt + R·H + Vt·H)
/// per chunk in flight, independent of N (but for an N-entry row list) and V.
pub fn workspace_bytes(n: usize, dim: usize, vocab: usize, tiling: Tiling) -> usize {
    // Forward holds 1 tile + gathered rows; backward 1 tile + gathered rows + dh rows.
    workspace_bytes_for(n, dim, vocab, tiling, 1, 2, 4)
}

/// The inputs both passes read.
#[derive(Debug, Clone, Copy)]
pub struct XentInputs<'a, T> {
    /// Hidden states h: [N, dim].
    pub hidden: &'a [T],
    /// LM head W: [V, dim] (PyTorch `nn.Linear` layout).
    pub weight: &'a [T],
    /// Hidden size.
    pub dim: usize,
    /// Target ids: [N], each in [0, V) or `ignore_index`.
    pub targets: &'a [i64],
    /// Per-row loss weights [N] (ignored rows count for nothing whatever their
    /// weight); `None` = mean over the non-ignored rows.
    pub row_weights: Option<&'a [T]>,
    /// Target value whose rows contribute nothing.
    pub ignore_index: i64,
}

impl<T: Real> XentInputs<'_, T> {
    fn vocab(&self) -> usize {
        self.weight.len() / self.dim.max(1)
    }

    fn check(&self) {
        let n = self.targets.len();
        assert_eq!(self.hidden.len(), n * self.dim, "linear_xent: hidden size");
        assert_eq!(
            self.weight.len() % self.dim.max(1),
            0,
            "linear_xent: weight"
        );
        if let Some(w) = self.row_weights {
            assert_eq!(w.len(), n, "linear_xent: row weights");
        }
        let v = self.vocab() as i64;
        for (i, &t) in self.targets.iter().enumerate() {
            assert!(
                t == self.ignore_index || (0..v).contains(&t),
                "linear_xent: target {t} at {i} outside [0, {v})"
            );
        }
    }

    /// The contributing rows with c_r = row weight (or 1/count).
    fn active(&self) -> Active<T> {
        let kept = |i: &usize| self.targets[*i] != self.ignore_index;
        let count = (0..self.targets.len()).filter(kept).count();
        let mean = T::of(1.0 / count.max(1) as f64);
        Active::new(
            (0..self.targets.len())
                .filter(kept)
                .map(|i| (i, self.row_weights.map_or(mean, |w| w[i]))),
        )
    }
}

/// Splits `out` (rows of `width`) into the disjoint spans the chunks write.
pub(crate) fn split_spans<'a, T>(
    mut out: &'a mut [T],
    width: usize,
    spans: &[Range<usize>],
) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(spans.len());
    let mut at = 0;
    for s in spans {
        let rest = std::mem::take(&mut out);
        let (_, rest) = rest.split_at_mut((s.start - at) * width);
        let (mine, rest) = rest.split_at_mut(s.len() * width);
        parts.push(mine);
        out = rest;
        at = s.end;
    }
    parts
}

/// Runs `f(job, gemm_threads)` for every chunk in order, each with the whole
/// pool; returns the per-chunk results summed in chunk order (deterministic).
pub(crate) fn run_chunks<J>(jobs: Vec<J>, f: impl Fn(J, usize) -> f64) -> f64 {
    let threads = crate::pool::num_threads();
    jobs.into_iter().map(|j| f(j, threads)).sum()
}

/// Copies the listed rows of `x` ([.., dim]) into a dense [rows.len(), dim] buffer.
pub(crate) fn gather<T: Real>(x: &[T], dim: usize, rows: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        out.extend_from_slice(&x[r * dim..(r + 1) * dim]);
    }
    out
}

/// z[r, width] = hc[r, dim] · W[tile]ᵀ.
pub(crate) fn tile_logits<T: Real>(
    hc: &[T],
    weight: &[T],
    dim: usize,
    tile: Range<usize>,
    z: &mut [T],
    threads: usize,
) {
    let r = hc.len() / dim.max(1);
    let w = &weight[tile.start * dim..tile.end * dim];
    gemm_into(
        MatRef::row_major(hc, r, dim),
        MatRef::transposed(w, dim, tile.len()),
        z,
        tile.len(),
        T::zero(),
        threads,
    );
}

/// dhc (= when `first`, else +=) G·W[tile]; dW[tile] += Gᵀ·hc when asked.
pub(crate) fn tile_grads<T: Real>(
    g: &[T],
    hc: &[T],
    weight: &[T],
    dim: usize,
    tile: Range<usize>,
    dhc: &mut [T],
    first: bool,
    dw: Option<&mut [T]>,
    threads: usize,
) {
    let r = hc.len() / dim.max(1);
    let w = &weight[tile.start * dim..tile.end * dim];
    let beta = if first { T::zero() } else { T::one() };
    gemm_into(
        MatRef::row_major(g, r, tile.len()),
        MatRef::row_major(w, tile.len(), dim),
        dhc,
        dim,
        beta,
        threads,
    );
    if let Some(dw) = dw {
        gemm_into(
            MatRef::transposed(g, tile.len(), r),
            MatRef::row_major(hc, r, dim),
            &mut dw[tile.start * dim..tile.end * dim],
            dim,
            T::one(),
            threads,
        );
    }
}

/// Writes the chunk's gradient rows `dhc` into its span of dh.
pub(crate) fn scatter<T: Real>(dhc: &[T], dim: usize, rows: &[usize], span: &mut [T], at: usize) {
    for (src, &r) in dhc.chunks(dim).zip(rows) {
        span[(r - at) * dim..(r - at + 1) * dim].copy_from_slice(src);
    }
}

/// Running log-sum-exp of one row over the tiles seen so far. The sum is
/// kept in f64 (one widening add per logit, the exp stays in `T`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OnlineLse<T> {
    /// Largest logit so far (−∞ before the first tile).
    pub max: T,
    /// Σ exp(z − max) over the logits so far.
    pub sum: f64,
}

impl<T: Real> OnlineLse<T> {
    /// Before any tile.
    pub fn new() -> Self {
        Self {
            max: T::neg_infinity(),
            sum: 0.0,
        }
    }

    /// Moves the reference point to cover `tile` and returns the factor by
    /// which sums taken relative to the old max must be multiplied. The caller
    /// then adds exp(z − self.max) for the tile's logits.
    pub fn rebase(&mut self, tile: &[T]) -> f64 {
        let m = tile.iter().fold(self.max, |m, &z| m.max(z));
        let scale = if m > self.max {
            (self.max - m).exp().f64()
        } else {
            1.0
        };
        self.max = m;
        self.sum *= scale;
        scale
    }

    /// Folds a tile of logits in, leaving e^(z − max) in its place.
    pub fn push(&mut self, tile: &mut [T]) {
        self.rebase(tile);
        self.sum += T::exp_sub_sum(tile, self.max).f64();
    }

    /// log Σ exp(z) over everything pushed.
    pub fn value(&self) -> f64 {
        self.max.f64() + self.sum.ln()
    }
}

/// Pass 1: writes the per-row log-sum-exp into `lse` [N] (0 for rows that do
/// not contribute) and returns the loss Σ c_r·(lse_r − z_r,target).
pub fn forward<T: Real>(x: &XentInputs<'_, T>, tiling: Tiling, lse: &mut [T]) -> f64 {
    x.check();
    assert!(tiling.rows > 0 && tiling.vocab > 0, "linear_xent: tiling");
    assert_eq!(lse.len(), x.targets.len(), "linear_xent: lse");
    lse.fill(T::zero());
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let jobs: Vec<_> = chunks
        .into_iter()
        .zip(split_spans(lse, 1, &spans))
        .collect();
    run_chunks(jobs, |((pos, span), out), threads| {
        let rows = &active.rows[pos.clone()];
        let coef = &active.coef[pos];
        forward_chunk(x, tiling, rows, coef, out, span.start, threads)
    })
}

fn forward_chunk<T: Real>(
    x: &XentInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    lse: &mut [T],
    at: usize,
    threads: usize,
) -> f64 {
    let (dim, v) = (x.dim, x.vocab());
    let hc = gather(x.hidden, dim, rows);
    let mut z = vec![T::zero(); rows.len() * tiling.vocab.min(v)];
    // Per row: running lse and the target's logit once its tile has passed.
    let mut state = vec![(OnlineLse::<T>::new(), T::nan()); rows.len()];
    for t0 in (0..v).step_by(tiling.vocab) {
        let tile = t0..(t0 + tiling.vocab).min(v);
        let z = &mut z[..rows.len() * tile.len()];
        tile_logits(&hc, x.weight, dim, tile.clone(), z, threads);
        z.par_chunks_mut(tile.len())
            .zip(state.par_iter_mut())
            .zip(rows.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((zr, (acc, picked)), &r)| {
                let t = x.targets[r] as usize;
                if tile.contains(&t) {
                    *picked = zr[t - tile.start];
                }
                acc.push(zr);
            });
    }
    let mut loss = 0.0;
    for ((&r, &c), (acc, picked)) in rows.iter().zip(coef).zip(&state) {
        let l = acc.value();
        lse[r - at] = T::of(l);
        loss += c.f64() * (l - picked.f64());
    }
    loss
}

/// Pass 2: dh (=) and, when given, dW (+=) of `dloss`·loss, from forward's `lse`.
pub fn backward<T: Real>(
    x: &XentInputs<'_, T>,
    tiling: Tiling,
    dloss: T,
    lse: &[T],
    dh: &mut [T],
    mut dw: Option<&mut [T]>,
) {
    x.check();
    assert!(tiling.rows > 0 && tiling.vocab > 0, "linear_xent: tiling");
    assert_eq!(lse.len(), x.targets.len(), "linear_xent: lse");
    assert_eq!(dh.len(), x.hidden.len(), "linear_xent: dh");
    if let Some(dw) = &dw {
        assert_eq!(dw.len(), x.weight.len(), "linear_xent: dw");
    }
    dh.fill(T::zero());
    let dim = x.dim;
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let jobs = chunks.into_iter().zip(split_spans(dh, dim, &spans));
    let chunk = |((pos, span), out): ((Range<usize>, Range<usize>), &mut [T]),
                 dw: Option<&mut [T]>,
                 threads: usize| {
        let rows = &active.rows[pos.clone()];
        let coef = &active.coef[pos];
        let dhc = backward_chunk(x, tiling, rows, coef, dloss, lse, dw, threads);
        scatter(&dhc, dim, rows, out, span.start);
    };
    let threads = crate::pool::num_threads();
    jobs.for_each(|j| chunk(j, dw.as_deref_mut(), threads));
}

fn backward_chunk<T: Real>(
    x: &XentInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    dloss: T,
    lse: &[T],
    mut dw: Option<&mut [T]>,
    threads: usize,
) -> Vec<T> {
    let (dim, v) = (x.dim, x.vocab());
    let hc = gather(x.hidden, dim, rows);
    let mut dhc = vec![T::zero(); hc.len()];
    let mut z = vec![T::zero(); rows.len() * tiling.vocab.min(v)];
    for t0 in (0..v).step_by(tiling.vocab) {
        let tile = t0..(t0 + tiling.vocab).min(v);
        let z = &mut z[..rows.len() * tile.len()];
        tile_logits(&hc, x.weight, dim, tile.clone(), z, threads);
        // Logits become G = c·dloss·(softmax − onehot) in place.
        z.par_chunks_mut(tile.len())
            .zip(rows.par_iter().zip(coef))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(zr, (&r, &c))| {
                let (l, c) = (lse[r], c * dloss);
                T::exp_sub_sum(zr, l);
                zr.iter_mut().for_each(|z| *z *= c);
                let t = x.targets[r] as usize;
                if tile.contains(&t) {
                    zr[t - tile.start] -= c;
                }
            });
        tile_grads(
            z,
            &hc,
            x.weight,
            dim,
            tile.clone(),
            &mut dhc,
            t0 == 0,
            dw.as_deref_mut(),
            threads,
        );
    }
    dhc
}

/// Forward and backward in one sweep of the vocabulary: returns the loss,
/// writes the per-row lse and dh = ∂loss/∂h (for dloss = 1).
///
/// dh_r = c_r·(Σ_v softmax_v·W_v − W_target) is a softmax-weighted sum of the
/// head's rows, so it accumulates online exactly as attention accumulates
/// P·V: each tile's probabilities are taken relative to the running max, and
/// the accumulator is rescaled whenever the max grows. No logit is computed
/// twice: 4·N·H·V FLOPs, the same as the unfused computation, against 6·N·H·V
/// for `forward` followed by `backward`. The head's gradient needs the final
/// softmax, so a trained head still takes the two-pass route.
pub fn forward_backward<T: Real>(
    x: &XentInputs<'_, T>,
    tiling: Tiling,
    lse: &mut [T],
    dh: &mut [T],
) -> f64 {
    x.check();
    assert!(tiling.rows > 0 && tiling.vocab > 0, "linear_xent: tiling");
    assert_eq!(lse.len(), x.targets.len(), "linear_xent: lse");
    assert_eq!(dh.len(), x.hidden.len(), "linear_xent: dh");
    lse.fill(T::zero());
    dh.fill(T::zero());
    let dim = x.dim;
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let threads = crate::pool::num_threads();
    let mut loss = 0.0;
    for (((pos, span), lse), dh) in chunks
        .into_iter()
        .zip(split_spans(lse, 1, &spans))
        .zip(split_spans(dh, dim, &spans))
    {
        let rows = &active.rows[pos.clone()];
        let coef = &active.coef[pos];
        let (l, dhc) = forward_backward_chunk(x, tiling, rows, coef, lse, span.start, threads);
        scatter(&dhc, dim, rows, dh, span.start);
        loss += l;
    }
    loss
}

fn forward_backward_chunk<T: Real>(
    x: &XentInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    lse: &mut [T],
    at: usize,
    threads: usize,
) -> (f64, Vec<T>) {
    let (dim, v) = (x.dim, x.vocab());
    let hc = gather(x.hidden, dim, rows);
    // acc_r = Σ_v exp(z_v − max_r)·W_v over the tiles so far.
    let mut acc = vec![T::zero(); hc.len()];
    let mut z = vec![T::zero(); rows.len() * tiling.vocab.min(v)];
    let mut state = vec![(OnlineLse::<T>::new(), T::nan()); rows.len()];
    for t0 in (0..v).step_by(tiling.vocab) {
        let tile = t0..(t0 + tiling.vocab).min(v);
        let z = &mut z[..rows.len() * tile.len()];
        tile_logits(&hc, x.weight, dim, tile.clone(), z, threads);
        // Logits become exp(z − max) in place; the accumulator row is rescaled
        // to the new max before this tile's P·W is added to it.
        z.par_chunks_mut(tile.len())
            .zip(acc.par_chunks_mut(dim))
            .zip(state.par_iter_mut())
            .zip(rows.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(((zr, ar), (run, picked)), &r)| {
                let t = x.targets[r] as usize;
                if tile.contains(&t) {
                    *picked = zr[t - tile.start];
                }
                let scale = run.rebase(zr);
                if scale != 1.0 {
                    let s = T::of(scale);
                    ar.iter_mut().for_each(|a| *a *= s);
                }
                run.sum += T::exp_sub_sum(zr, run.max).f64();
            });
        tile_grads(z, &hc, x.weight, dim, tile, &mut acc, false, None, threads);
    }
    let mut loss = 0.0;
    for (((&r, &c), (run, picked)), ar) in
        rows.iter().zip(coef).zip(&state).zip(acc.chunks_mut(dim))
    {
        let l = run.value();
        lse[r - at] = T::of(l);
        loss += c.f64() * (l - picked.f64());
        let inv = c / T::of(run.sum);
        let t = x.targets[r] as usize;
        let wt = &x.weight[t * dim..(t + 1) * dim];
        ar.iter_mut()
            .zip(wt)
            .for_each(|(a, &w)| *a = *a * inv - c * w);
    }
    (loss, acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, rng, uniform};

    /// Loss by the definition with the full [N, V] logits, in f64. Row
    /// coefficients follow the documented rule independently of `Active`.
    fn naive(
        h: &[f64],
        w: &[f64],
        dim: usize,
        targets: &[i64],
        rw: Option<&[f64]>,
        ignore: i64,
    ) -> f64 {
        let v = w.len() / dim;
        let kept = targets.iter().filter(|&&t| t != ignore).count();
        let mut loss = 0.0;
        for (i, &t) in targets.iter().enumerate() {
            if t == ignore {
                continue;
            }
            let logits: Vec<f64> = (0..v)
                .map(|j| (0..dim).map(|k| h[i * dim + k] * w[j * dim + k]).sum())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            let c = rw.map_or(1.0 / kept as f64, |rw| rw[i]);
            loss += c * (lse - logits[t as usize]);
        }
        loss
    }

    struct Case {
        h: Vec<f64>,
        w: Vec<f64>,
        dim: usize,
        targets: Vec<i64>,
        rw: Option<Vec<f64>>,
    }

    impl Case {
        fn new(
            seed: u64,
            n: usize,
            dim: usize,
            v: usize,
            ignore_every: usize,
            weighted: bool,
        ) -> Self {
            let mut r = rng(seed);
            let h = uniform(&mut r, n * dim, 1.0);
            let w = uniform(&mut r, v * dim, 1.0);
            let targets = (0..n)
                .map(|i| {
                    if ignore_every > 0 && i % ignore_every == 1 {
                        IGNORE_INDEX
                    } else {
                        ((i * 37 + 11) % v) as i64
                    }
                })
                .collect();
            let rw = weighted.then(|| uniform(&mut r, n, 1.0));
            Self {
                h,
                w,
                dim,
                targets,
                rw,
            }
        }

        fn inputs<'a>(&'a self, h: &'a [f64], w: &'a [f64]) -> XentInputs<'a, f64> {
            XentInputs {
                hidden: h,
                weight: w,
                dim: self.dim,
                targets: &self.targets,
                row_weights: self.rw.as_deref(),
                ignore_index: IGNORE_INDEX,
            }
        }

        fn naive(&self, h: &[f64], w: &[f64]) -> f64 {
            naive(
                h,
                w,
                self.dim,
                &self.targets,
                self.rw.as_deref(),
                IGNORE_INDEX,
            )
        }
    }

    const SMALL: Tiling = Tiling { rows: 4, vocab: 16 };

    fn run(c: &Case, h: &[f64], w: &[f64], tiling: Tiling) -> f64 {
        let mut lse = vec![f64::NAN; c.targets.len()];
        forward(&c.inputs(h, w), tiling, &mut lse)
    }

    #[test]
    fn forward_matches_full_logits_across_tiles_and_chunks() {
        // V = 103 is not a multiple of 16; 13 rows make 4 chunks of ≤ 4 active rows.
        for (seed, ignore_every, weighted) in [(1, 0, false), (2, 3, false), (3, 4, true)] {
            let c = Case::new(seed, 13, 7, 103, ignore_every, weighted);
            let got = run(&c, &c.h, &c.w, SMALL);
            let want = c.naive(&c.h, &c.w);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "seed {seed}: fused {got} vs full {want}"
            );
        }
    }

    #[test]
    fn lse_is_saved_per_active_row_and_zero_elsewhere() {
        let c = Case::new(4, 9, 5, 37, 3, false);
        let mut lse = vec![f64::NAN; 9];
        forward(&c.inputs(&c.h, &c.w), SMALL, &mut lse);
        for (i, &t) in c.targets.iter().enumerate() {
            let logits: Vec<f64> = (0..37)
                .map(|j| (0..5).map(|k| c.h[i * 5 + k] * c.w[j * 5 + k]).sum())
                .collect();
            let want = logits.iter().map(|z| z.exp()).sum::<f64>().ln();
            let want = if t == IGNORE_INDEX { 0.0 } else { want };
            assert!(
                (lse[i] - want).abs() < 1e-12,
                "row {i}: {} vs {want}",
                lse[i]
            );
        }
    }

    #[test]
    fn f32_matches_f64_reference() {
        let c = Case::new(5, 40, 24, 300, 5, false);
        let h: Vec<f32> = c.h.iter().map(|&x| x as f32).collect();
        let w: Vec<f32> = c.w.iter().map(|&x| x as f32).collect();
        let x = XentInputs {
            hidden: &h,
            weight: &w,
            dim: 24,
            targets: &c.targets,
            row_weights: None,
            ignore_index: IGNORE_INDEX,
        };
        let mut lse = vec![f32::NAN; 40];
        let got = forward(
            &x,
            Tiling {
                rows: 16,
                vocab: 64,
            },
            &mut lse,
        );
        let h64: Vec<f64> = h.iter().map(|&x| x as f64).collect();
        let w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let want = c.naive(&h64, &w64);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }

    fn grads(c: &Case, tiling: Tiling, dloss: f64) -> (Vec<f64>, Vec<f64>) {
        let x = c.inputs(&c.h, &c.w);
        let mut lse = vec![0.0; c.targets.len()];
        forward(&x, tiling, &mut lse);
        let mut dh = vec![f64::NAN; c.h.len()];
        let mut dw = vec![0.25; c.w.len()]; // accumulates on top of what is there
        backward(&x, tiling, dloss, &lse, &mut dh, Some(&mut dw));
        dw.iter_mut().for_each(|d| *d -= 0.25);
        (dh, dw)
    }

    #[test]
    fn backward_matches_finite_differences() {
        for (seed, weighted) in [(6, false), (7, true)] {
            let c = Case::new(seed, 11, 6, 103, 4, weighted);
            let dloss = 1.7;
            let (dh, dw) = grads(&c, SMALL, dloss);
            check_grad(
                "xent dh",
                |h| dloss * run(&c, h, &c.w, SMALL),
                &c.h,
                &dh,
                200,
            );
            check_grad(
                "xent dW",
                |w| dloss * run(&c, &c.h, w, SMALL),
                &c.w,
                &dw,
                300,
            );
            // Ignored rows get exactly zero gradient.
            for (i, &t) in c.targets.iter().enumerate() {
                if t == IGNORE_INDEX {
                    assert!(dh[i * 6..(i + 1) * 6].iter().all(|&g| g == 0.0), "row {i}");
                }
            }
        }
    }

    #[test]
    fn tiling_does_not_change_the_result() {
        let c = Case::new(8, 21, 9, 103, 5, true);
        let (dh_a, dw_a) = grads(&c, SMALL, 1.0);
        let (dh_b, dw_b) = grads(
            &c,
            Tiling {
                rows: 256,
                vocab: 4096,
            },
            1.0,
        );
        assert_close("dh across tilings", &dh_a, &dh_b, 1e-12);
        assert_close("dW across tilings", &dw_a, &dw_b, 1e-12);
        let (a, b) = (
            run(&c, &c.h, &c.w, SMALL),
            run(&c, &c.h, &c.w, Tiling::default()),
        );
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn all_ignored_gives_zero_loss_and_gradients() {
        let mut c = Case::new(10, 6, 4, 20, 0, false);
        c.targets.iter_mut().for_each(|t| *t = IGNORE_INDEX);
        let x = c.inputs(&c.h, &c.w);
        let mut lse = vec![f64::NAN; 6];
        let loss = forward(&x, SMALL, &mut lse);
        assert_eq!(loss, 0.0);
        let mut dh = vec![f64::NAN; c.h.len()];
        let mut dw = vec![0.5; c.w.len()];
        backward(&x, SMALL, 1.0, &lse, &mut dh, Some(&mut dw));
        assert!(dh.iter().all(|&g| g == 0.0) && dw.iter().all(|&g| g == 0.5));
        // Zero rows at all is the same.
        let empty = XentInputs::<f64> {
            hidden: &[],
            weight: &c.w,
            dim: 4,
            targets: &[],
            row_weights: None,
            ignore_index: IGNORE_INDEX,
        };
        assert_eq!(forward(&empty, SMALL, &mut []), 0.0);
    }

    #[test]
    fn large_logits_stay_finite_and_match() {
        // Hidden ×100: logits in the hundreds, exp would overflow without the running max.
        let mut c = Case::new(11, 10, 6, 103, 3, false);
        c.h.iter_mut().for_each(|x| *x *= 100.0);
        let got = run(&c, &c.h, &c.w, SMALL);
        let want = c.naive(&c.h, &c.w);
        assert!(
            got.is_finite() && (got - want).abs() <= 1e-12 * want.abs(),
            "{got} vs {want}"
        );
        let h: Vec<f32> = c.h.iter().map(|&x| x as f32).collect();
        let w: Vec<f32> = c.w.iter().map(|&x| x as f32).collect();
        let x = XentInputs {
            hidden: &h,
            weight: &w,
            dim: 6,
            targets: &c.targets,
            row_weights: None,
            ignore_index: IGNORE_INDEX,
        };
        let mut lse = vec![0.0f32; 10];
        let got = forward(&x, SMALL, &mut lse);
        assert!(
            got.is_finite() && (got - want).abs() <= 1e-4 * want.abs(),
            "{got} vs {want}"
        );
        let mut dh = vec![f32::NAN; h.len()];
        backward(&x, SMALL, 1.0, &lse, &mut dh, None);
        assert!(dh.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn one_pass_forward_backward_equals_the_two_passes() {
        for (seed, ignore_every, weighted, scale) in [
            (20, 4, false, 1.0),
            (21, 3, true, 1.0),
            (22, 0, false, 100.0),
        ] {
            let mut c = Case::new(seed, 23, 7, 103, ignore_every, weighted);
            c.h.iter_mut().for_each(|x| *x *= scale);
            let x = c.inputs(&c.h, &c.w);
            let mut lse = vec![f64::NAN; 23];
            let loss = forward(&x, SMALL, &mut lse);
            let mut dh = vec![f64::NAN; c.h.len()];
            backward(&x, SMALL, 1.0, &lse, &mut dh, None);
            let mut lse1 = vec![f64::NAN; 23];
            let mut dh1 = vec![f64::NAN; c.h.len()];
            let loss1 = forward_backward(&x, SMALL, &mut lse1, &mut dh1);
            assert!(
                (loss - loss1).abs() <= 1e-12 * loss.abs(),
                "{loss} vs {loss1}"
            );
            assert_close("one-pass lse", &lse1, &lse, 1e-13);
            assert_close("one-pass dh", &dh1, &dh, 1e-11);
            check_grad("one-pass dh", |h| run(&c, h, &c.w, SMALL), &c.h, &dh1, 100);
        }
        // f32 at the default tiling with several tiles and chunks.
        let c = Case::new(23, 300, 16, 9000, 5, false);
        let h: Vec<f32> = c.h.iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = c.w.iter().map(|&v| v as f32 * 0.3).collect();
        let x = XentInputs {
            hidden: &h,
            weight: &w,
            dim: 16,
            targets: &c.targets,
            row_weights: None,
            ignore_index: IGNORE_INDEX,
        };
        let mut lse = vec![0.0f32; 300];
        let mut dh = vec![f32::NAN; h.len()];
        let loss = forward(&x, Tiling::default(), &mut lse);
        backward(&x, Tiling::default(), 1.0, &lse, &mut dh, None);
        let mut dh1 = vec![f32::NAN; h.len()];
        let loss1 = forward_backward(&x, Tiling::default(), &mut lse, &mut dh1);
        assert!(
            (loss - loss1).abs() <= 1e-5 * loss.abs(),
            "{loss} vs {loss1}"
        );
        assert_close("one-pass dh f32", &dh1, &dh, 1e-5);
    }

    #[test]
    #[should_panic(expected = "target 103 at 2")]
    fn out_of_range_target_is_refused() {
        let mut c = Case::new(12, 4, 3, 103, 0, false);
        c.targets[2] = 103;
        run(&c, &c.h, &c.w, SMALL);
    }
}
