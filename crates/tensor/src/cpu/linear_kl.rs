//! Fused LM head + KL(teacher ‖ student) on the CPU, never materialising
//! either side's logits: the distillation term of the compression objective,
//! where the teacher reads the full context and the student only the memory
//! tokens, both through the same (frozen or trained) head W.
//!
//! Chunking, tiling, active-row gathering and the serial schedule are those of
//! `linear_xent` (see there); this file only changes the per-tile arithmetic.
//! Per row, with z_t = h_t·Wᵀ and z_s = h_s·Wᵀ over the full vocabulary,
//!   KL = Σ_v p_t(v)·(z_t − z_s)(v) − lse_t + lse_s.
//! The first term is an expectation under p_t, so forward accumulates it
//! online next to the teacher's running log-sum-exp, rescaled by the same
//! factor whenever the running max grows: the loss comes out of a single pass
//! over the tiles. Backward recomputes both tiles and forms
//! G = c_r·(p_s − p_t); the teacher is under no gradient, so dW gets only
//! Gᵀ·h_s. Identical teacher and student rows produce bitwise-identical
//! logits, so their KL and gradient are exactly zero.

use std::ops::Range;

use rayon::prelude::*;

use crate::Real;
use crate::cpu::linear_xent::{
    Active, OnlineLse, Tiling, gather, run_chunks, scatter, split_spans, tile_grads, tile_logits,
    workspace_bytes_for,
};

/// Rows below which the arithmetic of a tile stays on one thread.
const ROWS_PER_TASK: usize = 8;

/// Working memory of [`forward`] + [`backward`] or of [`forward_backward`]
/// for f32, beyond their outputs (the GEMM's own packing buffers excluded,
/// as in `linear_xent`).
pub fn workspace_bytes(n: usize, dim: usize, vocab: usize, tiling: Tiling) -> usize {
    // Two logit tiles plus, in the one-sweep path, a tile-wide difference
    // row per row in flight (at most a third tile); gathered teacher and
    // student rows plus two accumulators (one-sweep) or the gradient rows.
    workspace_bytes_for(n, dim, vocab, tiling, 3, 4, 4)
}

/// The inputs both passes read.
#[derive(Debug, Clone, Copy)]
pub struct KlInputs<'a, T> {
    /// Teacher hidden states: [N, dim].
    pub teacher: &'a [T],
    /// Student hidden states: [N, dim].
    pub student: &'a [T],
    /// LM head W: [V, dim], shared by both.
    pub weight: &'a [T],
    /// Hidden size.
    pub dim: usize,
    /// Per-row weights [N]; `None` = 1/N each (the mean).
    pub row_weights: Option<&'a [T]>,
}

impl<T: Real> KlInputs<'_, T> {
    fn rows(&self) -> usize {
        self.teacher.len() / self.dim.max(1)
    }

    fn vocab(&self) -> usize {
        self.weight.len() / self.dim.max(1)
    }

    fn check(&self, tiling: Tiling) {
        assert_eq!(
            self.teacher.len(),
            self.student.len(),
            "linear_kl: hidden sizes"
        );
        assert_eq!(
            self.teacher.len() % self.dim.max(1),
            0,
            "linear_kl: teacher"
        );
        assert_eq!(self.weight.len() % self.dim.max(1), 0, "linear_kl: weight");
        if let Some(w) = self.row_weights {
            assert_eq!(w.len(), self.rows(), "linear_kl: row weights");
        }
        assert!(tiling.rows > 0 && tiling.vocab > 0, "linear_kl: tiling");
    }

    fn active(&self) -> Active<T> {
        let mean = T::of(1.0 / self.rows().max(1) as f64);
        Active::new((0..self.rows()).map(|i| (i, self.row_weights.map_or(mean, |w| w[i]))))
    }
}

/// Pass 1: writes both sides' per-row log-sum-exp ([N] each, 0 for rows of
/// weight 0) and returns the loss Σ_r c_r·KL_r.
pub fn forward<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    lse_teacher: &mut [T],
    lse_student: &mut [T],
) -> f64 {
    x.check(tiling);
    assert_eq!(lse_teacher.len(), x.rows(), "linear_kl: lse_teacher");
    assert_eq!(lse_student.len(), x.rows(), "linear_kl: lse_student");
    lse_teacher.fill(T::zero());
    lse_student.fill(T::zero());
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let outs = split_spans(lse_teacher, 1, &spans)
        .into_iter()
        .zip(split_spans(lse_student, 1, &spans));
    let jobs: Vec<_> = chunks.into_iter().zip(outs).collect();
    run_chunks(jobs, |((pos, span), (lt, ls)), threads| {
        let rows = &active.rows[pos.clone()];
        forward_chunk(
            x,
            tiling,
            rows,
            &active.coef[pos],
            lt,
            ls,
            span.start,
            threads,
        )
    })
}

/// One row's running state: both log-sum-exps and Σ exp(z_t − max_t)·(z_t − z_s).
#[derive(Debug, Clone, Copy)]
struct RowState<T> {
    teacher: OnlineLse<T>,
    student: OnlineLse<T>,
    cross: f64,
}

impl<T: Real> RowState<T> {
    fn new() -> Self {
        Self {
            teacher: OnlineLse::new(),
            student: OnlineLse::new(),
            cross: 0.0,
        }
    }
}

/// The loop all three passes share: gathers the chunk's teacher and student
/// rows, then for each vocabulary tile in order computes both sides' logits
/// and hands them to `each(tile, z_teacher, z_student, h_teacher, h_student)`.
fn sweep<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    threads: usize,
    mut each: impl FnMut(Range<usize>, &mut [T], &mut [T], &[T], &[T]),
) {
    let (dim, v) = (x.dim, x.vocab());
    let ht = gather(x.teacher, dim, rows);
    let hs = gather(x.student, dim, rows);
    let cap = rows.len() * tiling.vocab.min(v);
    let (mut zt, mut zs) = (vec![T::zero(); cap], vec![T::zero(); cap]);
    for t0 in (0..v).step_by(tiling.vocab) {
        let tile = t0..(t0 + tiling.vocab).min(v);
        let w = tile.len();
        let (zt, zs) = (&mut zt[..rows.len() * w], &mut zs[..rows.len() * w]);
        tile_logits(&ht, x.weight, dim, tile.clone(), zt, threads);
        tile_logits(&hs, x.weight, dim, tile.clone(), zs, threads);
        each(tile, zt, zs, &ht, &hs);
    }
}

fn forward_chunk<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    lse_t: &mut [T],
    lse_s: &mut [T],
    at: usize,
    threads: usize,
) -> f64 {
    let mut state = vec![RowState::new(); rows.len()];
    sweep(x, tiling, rows, threads, |tile, zt, zs, _, _| {
        zt.par_chunks(tile.len())
            .zip(zs.par_chunks_mut(tile.len()))
            .zip(state.par_iter_mut())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((zt, zs), st)| {
                st.cross *= st.teacher.rebase(zt);
                let m = st.teacher.max;
                let (mut sum, mut cross) = (0.0, 0.0);
                for (&a, &b) in zt.iter().zip(zs.iter()) {
                    let e = (a - m).exp();
                    sum += e.f64();
                    cross += (e * (a - b)).f64();
                }
                st.teacher.sum += sum;
                st.cross += cross;
                st.student.push(zs);
            });
    });
    let mut loss = 0.0;
    for ((&r, &c), st) in rows.iter().zip(coef).zip(&state) {
        let (lt, ls) = (st.teacher.value(), st.student.value());
        lse_t[r - at] = T::of(lt);
        lse_s[r - at] = T::of(ls);
        loss += c.f64() * (st.cross / st.teacher.sum - lt + ls);
    }
    loss
}

/// Pass 2: d(student) (=) and, when given, dW (+=) of `dloss`·loss, from
/// forward's log-sum-exps. The teacher gets no gradient.
pub fn backward<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    dloss: T,
    lse_teacher: &[T],
    lse_student: &[T],
    dstudent: &mut [T],
    mut dw: Option<&mut [T]>,
) {
    x.check(tiling);
    assert_eq!(lse_teacher.len(), x.rows(), "linear_kl: lse_teacher");
    assert_eq!(lse_student.len(), x.rows(), "linear_kl: lse_student");
    assert_eq!(dstudent.len(), x.student.len(), "linear_kl: dstudent");
    if let Some(dw) = &dw {
        assert_eq!(dw.len(), x.weight.len(), "linear_kl: dw");
    }
    dstudent.fill(T::zero());
    let dim = x.dim;
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let lse = (lse_teacher, lse_student);
    // Chunks in order, as in linear_xent: dW accumulates without races.
    let threads = crate::pool::num_threads();
    for ((pos, span), out) in chunks.into_iter().zip(split_spans(dstudent, dim, &spans)) {
        let rows = &active.rows[pos.clone()];
        let coef = &active.coef[pos];
        let dhc = backward_chunk(
            x,
            tiling,
            rows,
            coef,
            dloss,
            lse,
            dw.as_deref_mut(),
            threads,
        );
        scatter(&dhc, dim, rows, out, span.start);
    }
}

fn backward_chunk<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    dloss: T,
    (lse_t, lse_s): (&[T], &[T]),
    mut dw: Option<&mut [T]>,
    threads: usize,
) -> Vec<T> {
    let dim = x.dim;
    let mut dhc = vec![T::zero(); rows.len() * dim];
    sweep(x, tiling, rows, threads, |tile, zt, zs, _, hs| {
        // The student's logits become G = c·dloss·(p_s − p_t) in place.
        zs.par_chunks_mut(tile.len())
            .zip(zt.par_chunks_mut(tile.len()))
            .zip(rows.par_iter().zip(coef))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((zs, zt), (&r, &c))| {
                let (lt, ls, c) = (lse_t[r], lse_s[r], c * dloss);
                T::exp_sub_sum(zs, ls);
                T::exp_sub_sum(zt, lt);
                for (s, &t) in zs.iter_mut().zip(zt.iter()) {
                    *s = c * (*s - t);
                }
            });
        let first = tile.start == 0;
        let dw = dw.as_deref_mut();
        tile_grads(zs, hs, x.weight, dim, tile, &mut dhc, first, dw, threads);
    });
    dhc
}

/// Forward and backward in one sweep of the vocabulary (dloss = 1): returns
/// the loss, writes both sides' lse and d(student).
///
/// d(student)_r = c_r·(Σ_v p_s·W_v − Σ_v p_t·W_v): two softmax-weighted sums
/// of the head's rows, accumulated online like `linear_xent::forward_backward`
/// does for one (each accumulator rescaled when its side's running max
/// grows). Per tile that is 2 logit GEMMs + 2 accumulation GEMMs, against
/// 2 + 3 for `forward` then `backward`: 8·N·H·V FLOPs instead of 10. A
/// trained head needs the final softmax for dW and takes the two-pass route.
pub fn forward_backward<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    lse_teacher: &mut [T],
    lse_student: &mut [T],
    dstudent: &mut [T],
) -> f64 {
    x.check(tiling);
    assert_eq!(lse_teacher.len(), x.rows(), "linear_kl: lse_teacher");
    assert_eq!(lse_student.len(), x.rows(), "linear_kl: lse_student");
    assert_eq!(dstudent.len(), x.student.len(), "linear_kl: dstudent");
    lse_teacher.fill(T::zero());
    lse_student.fill(T::zero());
    dstudent.fill(T::zero());
    let dim = x.dim;
    let active = x.active();
    let chunks = active.chunks(tiling.rows);
    let spans: Vec<_> = chunks.iter().map(|c| c.1.clone()).collect();
    let threads = crate::pool::num_threads();
    let mut loss = 0.0;
    for ((((pos, span), lt), ls), ds) in chunks
        .into_iter()
        .zip(split_spans(lse_teacher, 1, &spans))
        .zip(split_spans(lse_student, 1, &spans))
        .zip(split_spans(dstudent, dim, &spans))
    {
        let rows = &active.rows[pos.clone()];
        let coef = &active.coef[pos];
        let (l, dhc) = forward_backward_chunk(x, tiling, rows, coef, (lt, ls), span.start, threads);
        scatter(&dhc, dim, rows, ds, span.start);
        loss += l;
    }
    loss
}

fn forward_backward_chunk<T: Real>(
    x: &KlInputs<'_, T>,
    tiling: Tiling,
    rows: &[usize],
    coef: &[T],
    (lse_t, lse_s): (&mut [T], &mut [T]),
    at: usize,
    threads: usize,
) -> (f64, Vec<T>) {
    let dim = x.dim;
    // acc_* row r = Σ_v exp(z_v − max_r)·W_v over the tiles so far, per side.
    let n = rows.len() * dim;
    let (mut acc_t, mut acc_s) = (vec![T::zero(); n], vec![T::zero(); n]);
    let mut state = vec![RowState::new(); rows.len()];
    sweep(x, tiling, rows, threads, |tile, zt, zs, ht, hs| {
        let w = tile.len();
        zt.par_chunks_mut(w)
            .zip(zs.par_chunks_mut(w))
            .zip(acc_t.par_chunks_mut(dim).zip(acc_s.par_chunks_mut(dim)))
            .zip(state.par_iter_mut())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(((zt, zs), (at, as_)), st)| {
                let rescale = |acc: &mut [T], scale: f64| {
                    if scale != 1.0 {
                        let s = T::of(scale);
                        acc.iter_mut().for_each(|a| *a *= s);
                    }
                };
                let scale_t = st.teacher.rebase(zt);
                st.cross *= scale_t;
                rescale(at, scale_t);
                rescale(as_, st.student.rebase(zs));
                // zt − zs first (the cross term needs both raw logits), then
                // both tiles become exp(z − max) in place, vectorised.
                let diff: Vec<T> = zt.iter().zip(zs.iter()).map(|(&a, &b)| a - b).collect();
                st.teacher.sum += T::exp_sub_sum(zt, st.teacher.max).f64();
                st.student.sum += T::exp_sub_sum(zs, st.student.max).f64();
                st.cross += zt
                    .iter()
                    .zip(&diff)
                    .map(|(&e, &d)| (e * d).f64())
                    .sum::<f64>();
            });
        tile_grads(
            zt,
            ht,
            x.weight,
            dim,
            tile.clone(),
            &mut acc_t,
            false,
            None,
            threads,
        );
        tile_grads(
            zs, hs, x.weight, dim, tile, &mut acc_s, false, None, threads,
        );
    });
    let mut loss = 0.0;
    let rows_out = rows.iter().zip(coef).zip(&state);
    for ((((&r, &c), st), a_t), a_s) in rows_out.zip(acc_t.chunks(dim)).zip(acc_s.chunks_mut(dim)) {
        let (lt, ls) = (st.teacher.value(), st.student.value());
        lse_t[r - at] = T::of(lt);
        lse_s[r - at] = T::of(ls);
        loss += c.f64() * (st.cross / st.teacher.sum - lt + ls);
        let (inv_s, inv_t) = (c / T::of(st.student.sum), c / T::of(st.teacher.sum));
        a_s.iter_mut()
            .zip(a_t)
            .for_each(|(s, &t)| *s = *s * inv_s - t * inv_t);
    }
    (loss, acc_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, rng, uniform};

    /// Σ_r c_r Σ_v p_t (log p_t − log p_s) with full logits in f64; the
    /// teacher reads `wt`, the student `ws` (equal except in the dW check,
    /// where the teacher's head is held fixed).
    fn naive(
        ht: &[f64],
        hs: &[f64],
        wt: &[f64],
        ws: &[f64],
        dim: usize,
        rw: Option<&[f64]>,
    ) -> f64 {
        let (n, v) = (ht.len() / dim, wt.len() / dim);
        let log_softmax = |h: &[f64], w: &[f64]| -> Vec<f64> {
            let z: Vec<f64> = (0..v)
                .map(|j| (0..dim).map(|k| h[k] * w[j * dim + k]).sum())
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            z.iter().map(|z| z - lse).collect()
        };
        (0..n)
            .map(|i| {
                let lt = log_softmax(&ht[i * dim..(i + 1) * dim], wt);
                let ls = log_softmax(&hs[i * dim..(i + 1) * dim], ws);
                let kl: f64 = lt.iter().zip(&ls).map(|(a, b)| a.exp() * (a - b)).sum();
                rw.map_or(1.0 / n as f64, |rw| rw[i]) * kl
            })
            .sum()
    }

    struct Case {
        ht: Vec<f64>,
        hs: Vec<f64>,
        w: Vec<f64>,
        dim: usize,
        rw: Option<Vec<f64>>,
    }

    impl Case {
        fn new(seed: u64, n: usize, dim: usize, v: usize, weighted: bool) -> Self {
            let mut r = rng(seed);
            let ht = uniform(&mut r, n * dim, 1.0);
            let hs = uniform(&mut r, n * dim, 1.0);
            let w = uniform(&mut r, v * dim, 1.0);
            // Some zero weights: those rows must drop out entirely.
            let rw = weighted.then(|| {
                let mut rw: Vec<f64> = uniform(&mut r, n, 1.0);
                rw.iter_mut().for_each(|x| *x = x.abs());
                rw.iter_mut().step_by(3).for_each(|x| *x = 0.0);
                rw
            });
            Self { ht, hs, w, dim, rw }
        }

        fn inputs<'a>(&'a self, hs: &'a [f64], w: &'a [f64]) -> KlInputs<'a, f64> {
            KlInputs {
                teacher: &self.ht,
                student: hs,
                weight: w,
                dim: self.dim,
                row_weights: self.rw.as_deref(),
            }
        }

        fn naive(&self) -> f64 {
            naive(
                &self.ht,
                &self.hs,
                &self.w,
                &self.w,
                self.dim,
                self.rw.as_deref(),
            )
        }
    }

    const SMALL: Tiling = Tiling { rows: 4, vocab: 16 };

    fn run(x: &KlInputs<'_, f64>, tiling: Tiling) -> f64 {
        let n = x.rows();
        forward(x, tiling, &mut vec![f64::NAN; n], &mut vec![f64::NAN; n])
    }

    #[test]
    fn forward_matches_full_logits_across_tiles_and_chunks() {
        for (seed, weighted) in [(1, false), (2, true)] {
            let c = Case::new(seed, 13, 7, 103, weighted);
            let got = run(&c.inputs(&c.hs, &c.w), SMALL);
            let want = c.naive();
            assert!(
                want > 0.0 && (got - want).abs() <= 1e-12 * want,
                "seed {seed}: fused {got} vs full {want}"
            );
            let big = run(&c.inputs(&c.hs, &c.w), Tiling::default());
            assert!(
                (big - want).abs() <= 1e-12 * want,
                "one tile: {big} vs {want}"
            );
        }
    }

    #[test]
    fn f32_matches_f64_reference() {
        let c = Case::new(3, 40, 24, 300, false);
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (ht, hs, w) = (f(&c.ht), f(&c.hs), f(&c.w));
        let x = KlInputs {
            teacher: &ht,
            student: &hs,
            weight: &w,
            dim: 24,
            row_weights: None,
        };
        let (mut lt, mut ls) = (vec![f32::NAN; 40], vec![f32::NAN; 40]);
        let got = forward(
            &x,
            Tiling {
                rows: 16,
                vocab: 64,
            },
            &mut lt,
            &mut ls,
        );
        let g = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let want = naive(&g(&ht), &g(&hs), &g(&w), &g(&w), 24, None);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }

    fn grads(c: &Case, dloss: f64) -> (Vec<f64>, Vec<f64>) {
        let x = c.inputs(&c.hs, &c.w);
        let n = x.rows();
        let (mut lt, mut ls) = (vec![0.0; n], vec![0.0; n]);
        forward(&x, SMALL, &mut lt, &mut ls);
        let mut dhs = vec![f64::NAN; c.hs.len()];
        let mut dw = vec![0.25; c.w.len()]; // accumulates on top of what is there
        backward(&x, SMALL, dloss, &lt, &ls, &mut dhs, Some(&mut dw));
        dw.iter_mut().for_each(|d| *d -= 0.25);
        (dhs, dw)
    }

    /// One sweep gives the two passes' loss, lse and d(student) (f64, the
    /// same tiles), with zero-weight rows, ragged tiles and chunks.
    #[test]
    fn forward_backward_equals_forward_then_backward() {
        for (seed, weighted, tiling) in [
            (11, false, SMALL),
            (12, true, SMALL),
            (13, true, Tiling::default()),
        ] {
            let c = Case::new(seed, 13, 7, 103, weighted);
            let x = c.inputs(&c.hs, &c.w);
            let n = x.rows();
            let (mut lt, mut ls) = (vec![f64::NAN; n], vec![f64::NAN; n]);
            let want = forward(&x, tiling, &mut lt, &mut ls);
            let mut dhs = vec![f64::NAN; c.hs.len()];
            backward(&x, tiling, 1.0, &lt, &ls, &mut dhs, None);
            let (mut lt1, mut ls1) = (vec![f64::NAN; n], vec![f64::NAN; n]);
            let mut dhs1 = vec![f64::NAN; c.hs.len()];
            let got = forward_backward(&x, tiling, &mut lt1, &mut ls1, &mut dhs1);
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "seed {seed}: {got} vs {want}"
            );
            assert_close("lse_teacher", &lt1, &lt, 1e-12);
            assert_close("lse_student", &ls1, &ls, 1e-12);
            assert_close("dstudent", &dhs1, &dhs, 1e-10);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for (seed, weighted) in [(4, false), (5, true)] {
            let c = Case::new(seed, 11, 6, 103, weighted);
            let dloss = 0.8;
            let (dhs, dw) = grads(&c, dloss);
            check_grad(
                "kl d(student)",
                |hs| dloss * run(&c.inputs(hs, &c.w), SMALL),
                &c.hs,
                &dhs,
                200,
            );
            // The teacher is under no gradient: perturb W on the student side only.
            let rw = c.rw.as_deref();
            check_grad(
                "kl dW (student side)",
                |w| dloss * naive(&c.ht, &c.hs, &c.w, w, c.dim, rw),
                &c.w,
                &dw,
                300,
            );
            if let Some(rw) = rw {
                for i in (0..11).filter(|&i| rw[i] == 0.0) {
                    assert!(dhs[i * 6..(i + 1) * 6].iter().all(|&g| g == 0.0), "row {i}");
                }
            }
        }
    }

    #[test]
    fn identical_teacher_and_student_give_exactly_zero() {
        let mut c = Case::new(6, 9, 5, 103, false);
        c.ht.iter_mut().for_each(|x| *x *= 30.0);
        c.hs = c.ht.clone();
        assert_eq!(run(&c.inputs(&c.hs, &c.w), SMALL), 0.0);
        let (dhs, dw) = grads(&c, 1.0);
        assert!(dhs.iter().chain(&dw).all(|&g| g == 0.0));
    }

    #[test]
    fn large_logits_stay_finite_and_match() {
        // Hidden ×100: logits in the hundreds; the rescaled online sums must not overflow.
        let mut c = Case::new(7, 10, 6, 103, false);
        c.ht.iter_mut().for_each(|x| *x *= 100.0);
        c.hs.iter_mut().for_each(|x| *x *= 100.0);
        let want = c.naive();
        let got = run(&c.inputs(&c.hs, &c.w), SMALL);
        assert!(
            got.is_finite() && (got - want).abs() <= 1e-10 * want,
            "{got} vs {want}"
        );
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (ht, hs, w) = (f(&c.ht), f(&c.hs), f(&c.w));
        let x = KlInputs {
            teacher: &ht,
            student: &hs,
            weight: &w,
            dim: 6,
            row_weights: None,
        };
        let (mut lt, mut ls) = (vec![0.0f32; 10], vec![0.0f32; 10]);
        let got = forward(&x, SMALL, &mut lt, &mut ls);
        assert!(
            got.is_finite() && (got - want).abs() <= 1e-3 * want,
            "{got} vs {want}"
        );
        let mut d = vec![f32::NAN; hs.len()];
        backward(&x, SMALL, 1.0, &lt, &ls, &mut d, None);
        assert!(d.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn no_rows_gives_zero() {
        let x = KlInputs::<f64> {
            teacher: &[],
            student: &[],
            weight: &[1.0; 12],
            dim: 3,
            row_weights: None,
        };
        assert_eq!(run(&x, SMALL), 0.0);
        let mut dw = vec![0.5; 12];
        backward(&x, SMALL, 1.0, &[], &[], &mut [], Some(&mut dw));
        assert!(dw.iter().all(|&g| g == 0.5));
    }
}
