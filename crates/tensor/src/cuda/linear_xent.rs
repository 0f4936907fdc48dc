//! CUDA path of the fused LM head + cross-entropy (`kernels/linear_xent.cu`),
//! with the plumbing `linear_kl` shares.
//!
//! Same schedule as the CPU (`cpu/linear_xent.rs`), never [N, V]: the active
//! rows (target not ignored, coefficient ≠ 0, chosen on the host by the CPU's
//! own `Active`) are gathered once into a dense [na, H] copy; the vocabulary
//! is walked in tiles of `Tiling::vocab` and, inside each tile, the rows in
//! chunks of `Tiling::rows`. Tile outermost keeps one W tile hot in L2 while
//! every chunk reads it, and lets a bf16 dW take each tile's f32 sum over all
//! chunks with a single rounding. Per (tile, chunk) cuBLAS computes the f32
//! logits Z = h_chunk·W_tileᵀ and the kernels fold them into per-row state.
//!
//! GEMMs go through `cuda::matmul::gemm`, which takes row-major operands and
//! hands cuBLAS the column-major transposes (row-major X read column-major is
//! Xᵀ, so C = A·B becomes Cᵀ = Bᵀ·Aᵀ with the operands swapped):
//! - Z[rc, len] = hc[rc, H]·W[t0.., H]ᵀ: A = hc as stored, B = the W tile
//!   stored [n = len, k = H] (`b_t`); beta 0, f32 out;
//! - dhc[rc, H] += G[rc, len]·W_tile[len, H]: both as stored; beta 1 into
//!   the f32 [na, H] accumulator (zeroed once), scattered and cast at the end;
//! - dW_tile[len, H] += Gᵀ·hc: A = G stored [k = rc, m = len] (`a_t`),
//!   B = hc as stored; into dW itself when dW is f32 (beta 1), else into an
//!   f32 [len, H] tile summed over the chunks and added to the bf16 dW once.
//!
//! dlogits G (and the one-sweep P = exp(z − max)) are written in the GEMM
//! operand dtype: bf16 for bf16 models, because cuBLAS needs A and B of one
//! type and bf16 keeps the tensor cores; G is in [−c, c] so bf16's 2⁻⁹
//! relative rounding averages out in the H- and rc-long sums (the same
//! precision PyTorch's bf16 backward has). For f32 models G overwrites Z in
//! place and the GEMMs run in plain f32 (no TF32).
//!
//! All device memory of a call is one workspace allocation (regions carved
//! at 256-byte alignment) plus the small per-row uploads and the outputs;
//! [`workspace_bytes`] bounds it so tests can check `peak_bytes`.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::alloc::round_size;
use super::matmul::{Gemm, gemm, gemm_lda};
use super::{CudaDevice, DeviceBuffer, blocks_for, cfg, launch_err, modules};
use crate::shared::tiling::{Active, Tiling};
use crate::{DType, Result, Tensor, TensorError};

const OP: &str = "linear_xent";
/// Threads per block of the row kernels (`LXENT_BLOCK` in the .cu).
pub(crate) const BLOCK: u32 = 256;
/// Alignment of every region carved out of the workspace.
const ALIGN: usize = 256;

/// Validated inputs of the cross-entropy (all on one CUDA device).
#[derive(Debug, Clone, Copy)]
pub struct XentArgs<'a> {
    /// Hidden states [.., H], bf16 or f32.
    pub hidden: &'a Tensor,
    /// LM head [V, H], same dtype as `hidden`.
    pub weight: &'a Tensor,
    /// H.
    pub dim: usize,
    /// V.
    pub vocab: usize,
    /// One target per hidden row, in [0, V) or `ignore_index`.
    pub targets: &'a [i64],
    /// Optional per-row loss weights (else the mean over counted rows).
    pub row_weights: Option<&'a [f32]>,
    /// Rows with this target contribute nothing.
    pub ignore_index: i64,
    /// Chunk and tile sizes (both ≥ 1).
    pub tiling: Tiling,
}

/// The kernels' dtype suffix.
pub(crate) fn suffix(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The GEMM operand dtype: `a` and `b` must share it, and it must be f32 or bf16.
pub(crate) fn operand_dtype(
    op: &'static str,
    (a, a_name): (&Tensor, &'static str),
    (b, b_name): (&Tensor, &'static str),
) -> Result<DType> {
    let d = a.dtype();
    if !matches!(d, DType::F32 | DType::BF16) {
        return Err(TensorError::DType {
            op,
            what: a_name,
            expected: DType::BF16,
            found: d,
        });
    }
    if b.dtype() != d {
        return Err(TensorError::DType {
            op,
            what: b_name,
            expected: d,
            found: b.dtype(),
        });
    }
    Ok(d)
}

/// dW may be f32 or the head's own dtype.
pub(crate) fn check_dweight(op: &'static str, dw: &Tensor, ab: DType) -> Result<()> {
    if dw.dtype() == DType::F32 || dw.dtype() == ab {
        Ok(())
    } else {
        Err(TensorError::DType {
            op,
            what: "dweight",
            expected: ab,
            found: dw.dtype(),
        })
    }
}

/// Saved log-sum-exps must be f32.
pub(crate) fn check_f32(op: &'static str, t: &Tensor, what: &'static str) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(TensorError::DType {
            op,
            what,
            expected: DType::F32,
            found: t.dtype(),
        })
    }
}

/// Sizes must fit the kernels' and cuBLAS's 32-bit int arguments.
pub(crate) fn check_i32(op: &'static str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| TensorError::invalid(op, format!("{what} = {x} exceeds i32")))
}

/// The active rows on the device: original row index, loss coefficient and
/// (cross-entropy) target of each, in increasing row order.
pub(crate) struct DeviceRows {
    /// How many rows are active (na).
    pub count: usize,
    /// i32 [na] original row indices.
    pub rows: DeviceBuffer,
    /// f32 [na] coefficients.
    pub coef: DeviceBuffer,
    /// i32 [na] targets (cross-entropy only).
    pub targets: Option<DeviceBuffer>,
}

impl DeviceRows {
    /// Uploads `active` (non-empty), with targets looked up per row when given.
    pub fn upload(
        dev: &Arc<CudaDevice>,
        active: &Active<f32>,
        targets: Option<&[i64]>,
    ) -> Result<Self> {
        let rows: Vec<i32> = active.rows.iter().map(|&r| r as i32).collect();
        let t = match targets {
            Some(t) => {
                let ids: Vec<i32> = active.rows.iter().map(|&r| t[r] as i32).collect();
                Some(dev.upload(&ids)?)
            }
            None => None,
        };
        Ok(Self {
            count: rows.len(),
            rows: dev.upload(&rows)?,
            coef: dev.upload(&active.coef)?,
            targets: t,
        })
    }

    /// Device address of row array `base` at active position `at` (4-byte elements).
    pub fn at(base: &DeviceBuffer, at: usize) -> u64 {
        base.ptr() + (at * 4) as u64
    }
}

/// Bytes a region of `bytes` takes in the workspace.
fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// One allocation holding every region of `sizes` (0 = absent, address 0).
pub(crate) fn carve(dev: &Arc<CudaDevice>, sizes: &[usize]) -> Result<(DeviceBuffer, Vec<u64>)> {
    let total: usize = sizes.iter().map(|&b| aligned(b)).sum();
    let buf = dev.alloc(total.max(1))?;
    let mut at = 0;
    let ptrs = sizes
        .iter()
        .map(|&b| {
            let p = if b == 0 { 0 } else { buf.ptr() + at as u64 };
            at += aligned(b);
            p
        })
        .collect();
    Ok((buf, ptrs))
}

/// What the allocator hands out for a call's workspace regions and its small
/// per-row buffers (each `na` i32/f32): the rounded sizes, summed.
pub(crate) fn handed_out(regions: &[usize], row_bufs: usize, na: usize) -> usize {
    let ws: usize = regions.iter().map(|&b| aligned(b)).sum();
    round_size(ws.max(1)) + row_bufs * round_size(na * 4)
}

/// p[..n] = value (f32).
pub(crate) fn fill(dev: &CudaDevice, op: &'static str, p: u64, n: usize, value: f32) -> Result<()> {
    let f = dev.function(&modules::LINEAR_XENT, "linear_xent_fill_f32")?;
    let n64 = n as i64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&p).arg(&n64).arg(&value);
    // SAFETY: p addresses at least n f32 of a live workspace.
    unsafe { b.launch(cfg(blocks_for(n, 256), 256, 0)) }.map_err(launch_err(op))?;
    Ok(())
}

/// dst[i, :] = src[rows[i], :] for the `na` active rows (dtype `d`).
pub(crate) fn gather(
    dev: &CudaDevice,
    op: &'static str,
    d: DType,
    src: u64,
    rows: u64,
    dst: u64,
    na: usize,
    dim: usize,
) -> Result<()> {
    let f = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_gather_{}", suffix(d)),
    )?;
    let (na64, dim64) = (na as i64, dim as i64);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&src).arg(&rows).arg(&dst).arg(&na64).arg(&dim64);
    // SAFETY: src is [N, dim], rows holds na indices < N, dst is [na, dim], all of dtype d.
    unsafe { b.launch(cfg(blocks_for(na * dim, 256), 256, 0)) }.map_err(launch_err(op))?;
    Ok(())
}

/// dst[rows[i], :] = src[i, :] (f32 → dtype `d`) for the `na` active rows.
pub(crate) fn scatter(
    dev: &CudaDevice,
    op: &'static str,
    d: DType,
    src: u64,
    rows: u64,
    dst: u64,
    na: usize,
    dim: usize,
) -> Result<()> {
    let f = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_scatter_{}", suffix(d)),
    )?;
    let (na64, dim64) = (na as i64, dim as i64);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&src).arg(&rows).arg(&dst).arg(&na64).arg(&dim64);
    // SAFETY: src is f32 [na, dim], rows holds na distinct indices < N, dst is [N, dim] of d.
    unsafe { b.launch(cfg(blocks_for(na * dim, 256), 256, 0)) }.map_err(launch_err(op))?;
    Ok(())
}

/// The head-gradient destination of a backward call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DwTarget {
    /// dW's address ([V, H]).
    pub ptr: u64,
    /// dW's dtype (f32, or the head's).
    pub dtype: DType,
    /// The f32 [tile, H] accumulator when dW is not f32, else 0.
    pub acc: u64,
}

/// Everything one chunk's gradient GEMMs need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradStep {
    /// GEMM operand dtype.
    pub ab: DType,
    /// H.
    pub dim: usize,
    /// dlogits G [rc, len] (operand dtype).
    pub g: u64,
    /// The head W [V, H].
    pub w: u64,
    /// The chunk's gathered hidden rows [rc, H] (operand dtype).
    pub hc: u64,
    /// The chunk's f32 gradient rows [rc, H].
    pub dhc: u64,
    /// Rows in the chunk.
    pub rc: usize,
    /// First vocabulary entry of the tile.
    pub t0: usize,
    /// Entries in the tile.
    pub len: usize,
    /// Whether this is the tile's first chunk (the dW accumulator starts over).
    pub first_chunk: bool,
}

/// dhc += G·W_tile, and dW_tile (or its f32 accumulator) += Gᵀ·hc.
pub(crate) fn grad_gemms(dev: &CudaDevice, s: &GradStep, dw: Option<DwTarget>) -> Result<()> {
    let e = s.ab.size_in_bytes();
    let w_tile = s.w + (s.t0 * s.dim * e) as u64;
    gemm(
        dev,
        &Gemm {
            m: s.rc,
            n: s.dim,
            k: s.len,
            a: s.g,
            a_t: false,
            b: w_tile,
            b_t: false,
            c: s.dhc,
            alpha: 1.0,
            beta: 1.0,
            ab: s.ab,
            c_dtype: DType::F32,
        },
    )?;
    if let Some(dw) = dw {
        let (c, beta) = if dw.acc != 0 {
            (dw.acc, if s.first_chunk { 0.0 } else { 1.0 })
        } else {
            (dw.ptr + (s.t0 * s.dim * 4) as u64, 1.0)
        };
        gemm(
            dev,
            &Gemm {
                m: s.len,
                n: s.dim,
                k: s.rc,
                a: s.g,
                a_t: true,
                b: s.hc,
                b_t: false,
                c,
                alpha: 1.0,
                beta,
                ab: s.ab,
                c_dtype: DType::F32,
            },
        )?;
    }
    Ok(())
}

/// After a tile's last chunk: folds the f32 accumulator into a non-f32 dW.
pub(crate) fn flush_dw(
    dev: &CudaDevice,
    op: &'static str,
    dw: Option<DwTarget>,
    dim: usize,
    t0: usize,
    len: usize,
) -> Result<()> {
    let Some(dw) = dw else { return Ok(()) };
    if dw.acc == 0 {
        return Ok(());
    }
    let f = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_add_{}", suffix(dw.dtype)),
    )?;
    let dst = dw.ptr + (t0 * dim * dw.dtype.size_in_bytes()) as u64;
    let n = (len * dim) as i64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&dw.acc).arg(&dst).arg(&n);
    // SAFETY: acc holds len·dim f32; dst is rows [t0, t0 + len) of dW.
    unsafe { b.launch(cfg(blocks_for(len * dim, 256), 256, 0)) }.map_err(launch_err(op))?;
    Ok(())
}

/// Z[rc, len] = hc[rc, H]·W[t0 .. t0 + len, H]ᵀ in f32.
pub(crate) fn logits(
    dev: &CudaDevice,
    ab: DType,
    hc: u64,
    w: u64,
    z: u64,
    rc: usize,
    dim: usize,
    t0: usize,
    len: usize,
) -> Result<()> {
    gemm(
        dev,
        &Gemm {
            m: rc,
            n: len,
            k: dim,
            a: hc,
            a_t: false,
            b: w + (t0 * dim * ab.size_in_bytes()) as u64,
            b_t: true,
            c: z,
            alpha: 1.0,
            beta: 0.0,
            ab,
            c_dtype: DType::F32,
        },
    )
}

/// Sums the f32 per-row losses on the host in f64 (waits for the stream, so
/// any asynchronous kernel error surfaces here).
pub(crate) fn read_loss(dev: &CudaDevice, loss_rows: &DeviceBuffer, na: usize) -> Result<f64> {
    let mut host = vec![0f32; na];
    dev.copy_to_host(loss_rows, bytemuck::cast_slice_mut(&mut host))?;
    Ok(host.iter().map(|&l| l as f64).sum::<f64>())
}

/// The chunk and tile actually used: never larger than the rows / vocabulary.
pub(crate) fn extents(tiling: Tiling, na: usize, vocab: usize) -> (usize, usize) {
    (tiling.rows.min(na).max(1), tiling.vocab.min(vocab).max(1))
}

/// Ranges [start, start + len) covering 0..n in steps of `step`.
pub(crate) fn steps(n: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(step).map(move |a| (a, step.min(n - a)))
}

fn active(x: &XentArgs<'_>) -> Active<f32> {
    let kept = |i: &usize| x.targets[*i] != x.ignore_index;
    let count = (0..x.targets.len()).filter(kept).count();
    let mean = (1.0 / count.max(1) as f64) as f32;
    Active::new(
        (0..x.targets.len())
            .filter(kept)
            .map(|i| (i, x.row_weights.map_or(mean, |w| w[i]))),
    )
}

/// Workspace region sizes of one entry point (0 = absent), in carving order.
fn regions(
    which: Pass,
    na: usize,
    dim: usize,
    rc: usize,
    vt: usize,
    ab: DType,
    dw_acc: bool,
) -> Vec<usize> {
    let e = ab.size_in_bytes();
    let sep = if ab == DType::F32 { 0 } else { rc * vt * e };
    match which {
        // hA, Z, run_max, run_sum, picked
        Pass::Forward => vec![na * dim * e, rc * vt * 4, na * 4, na * 4, na * 4],
        // hA, dhA, Z, G, dW accumulator
        Pass::Backward => vec![
            na * dim * e,
            na * dim * 4,
            rc * vt * 4,
            sep,
            if dw_acc { vt * dim * 4 } else { 0 },
        ],
        // hA, acc, Z, P, run_max, run_sum, picked
        Pass::OneSweep => vec![
            na * dim * e,
            na * dim * 4,
            rc * vt * 4,
            sep,
            na * 4,
            na * 4,
            na * 4,
        ],
        // h chunk, dh chunk (f32), Z over the whole vocabulary (vt = V; g in place)
        Pass::SweepDw => vec![rc * dim * e, rc * dim * 4, rc * vt * 4],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    Backward,
    OneSweep,
    SweepDw,
}

/// Below this many rows per chunk the one sweep with dW loses to forward +
/// backward: its dW GEMM (k = rows) re-reads and re-writes all of dW per
/// chunk, and its dh GEMM has few output tiles. Measured on an H200
/// (docs/benchmarks.md, 2026-12-04): 261 and 341 rows lost (0.95×, 0.96×),
/// 524 rows won (1.18×).
pub const SWEEP_MIN_ROWS: usize = 512;

/// Whether `forward_backward` with dW should take the one sweep for `n` rows
/// (else forward then backward): its chunks hold at least
/// [`SWEEP_MIN_ROWS`] rows, or all of them.
pub fn sweep_pays(tiling: Tiling, n: usize, vocab: usize) -> bool {
    let rc = sweep_rows(tiling, n, vocab);
    rc >= SWEEP_MIN_ROWS || rc >= n
}

/// Rows per chunk of the one sweep with dW: as many whole-vocabulary f32
/// logit rows as the tiling's [rows × vocab] tile holds (so the tiling keeps
/// meaning "this much logit memory"), at least one, at most `na`.
pub(crate) fn sweep_rows(tiling: Tiling, na: usize, vocab: usize) -> usize {
    (tiling.rows.saturating_mul(tiling.vocab) / vocab.max(1)).clamp(1, na.max(1))
}

/// Device bytes the allocator hands out to any of the three entry points
/// beyond their outputs, for `n` rows (all active, the worst case), hidden
/// size `dim`, vocabulary `vocab`, bf16 or f32 operands and any dW dtype:
/// O(n·H + R·Vt + Vt·H), independent of N·V.
pub fn workspace_bytes(n: usize, dim: usize, vocab: usize, tiling: Tiling) -> usize {
    let (rc, vt) = extents(tiling, n.max(1), vocab.max(1));
    let mut worst = 0;
    for ab in [DType::F32, DType::BF16] {
        for (pass, bufs) in [(Pass::Forward, 4), (Pass::Backward, 3), (Pass::OneSweep, 4)] {
            let r = regions(pass, n, dim, rc, vt, ab, true);
            worst = worst.max(handed_out(&r, bufs, n));
        }
        let sr = sweep_rows(tiling, n.max(1), vocab.max(1));
        let r = regions(Pass::SweepDw, n, dim, sr, vocab.max(1), ab, false);
        worst = worst.max(handed_out(&r, 4, n));
    }
    worst
}

/// Loss and per-row lse ([N] f32, 0 for rows that do not contribute).
pub fn forward(x: &XentArgs<'_>) -> Result<(f64, Tensor)> {
    let dev = x.hidden.cuda_device(OP, "hidden")?;
    let ab = operand_dtype(OP, (x.hidden, "hidden"), (x.weight, "weight"))?;
    check_i32(OP, "vocabulary", x.vocab)?;
    let lse = Tensor::try_zeros(&[x.targets.len()], DType::F32, x.hidden.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok((0.0, lse));
    }
    let rows = DeviceRows::upload(&dev, &active, Some(x.targets))?;
    let targets = rows.targets.as_ref().expect("uploaded with targets");
    let (na, dim) = (rows.count, x.dim);
    let (rc, vt) = extents(x.tiling, na, x.vocab);
    let (_ws, p) = carve(&dev, &regions(Pass::Forward, na, dim, rc, vt, ab, false))?;
    let (ha, z, run_max, run_sum, picked) = (p[0], p[1], p[2], p[3], p[4]);
    let (hp, wp, lp) = (
        x.hidden.cuda_ptr(OP, "hidden")?,
        x.weight.cuda_ptr(OP, "weight")?,
        lse.cuda_ptr(OP, "lse")?,
    );
    gather(&dev, OP, ab, hp, rows.rows.ptr(), ha, na, dim)?;
    fill(&dev, OP, run_max, na, f32::NEG_INFINITY)?;
    fill(&dev, OP, run_sum, na, 0.0)?;
    // NaN until the target's tile is seen: a missed target shows in the loss.
    fill(&dev, OP, picked, na, f32::NAN)?;
    let tile = dev.function(&modules::LINEAR_XENT, "linear_xent_fwd_tile")?;
    let e = ab.size_in_bytes();
    for (t0, len) in steps(x.vocab, vt) {
        let (len32, t032) = (len as i32, t0 as i32);
        for (a, rcn) in steps(na, rc) {
            logits(
                &dev,
                ab,
                ha + (a * dim * e) as u64,
                wp,
                z,
                rcn,
                dim,
                t0,
                len,
            )?;
            let (tg, mx, sm, pk) = (
                DeviceRows::at(targets, a),
                run_max + (a * 4) as u64,
                run_sum + (a * 4) as u64,
                picked + (a * 4) as u64,
            );
            let mut b = dev.stream().launch_builder(&tile);
            b.arg(&z)
                .arg(&len32)
                .arg(&t032)
                .arg(&tg)
                .arg(&mx)
                .arg(&sm)
                .arg(&pk);
            // SAFETY: z is f32 [rcn, len]; the row arrays hold na ≥ a + rcn entries.
            unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
        }
    }
    let loss_rows = dev.alloc(na * 4)?;
    let finish = dev.function(&modules::LINEAR_XENT, "linear_xent_fwd_finish")?;
    let (na32, lr) = (na as i32, loss_rows.ptr());
    let (cp, rp) = (rows.coef.ptr(), rows.rows.ptr());
    let mut b = dev.stream().launch_builder(&finish);
    b.arg(&run_max).arg(&run_sum).arg(&picked).arg(&cp).arg(&rp);
    b.arg(&na32).arg(&lp).arg(&lr);
    // SAFETY: state and coef hold na f32, rows na indices < N, lse N f32, loss_rows na f32.
    unsafe { b.launch(cfg(blocks_for(na, 256), 256, 0)) }.map_err(launch_err(OP))?;
    let loss = read_loss(&dev, &loss_rows, na)?;
    Ok((loss, lse))
}

/// d(dloss·loss)/d hidden (hidden's dtype), adding dL/dW into `dweight` when given.
pub fn backward(
    x: &XentArgs<'_>,
    dloss: f32,
    lse: &Tensor,
    dweight: Option<&mut Tensor>,
) -> Result<Tensor> {
    let dev = x.hidden.cuda_device(OP, "hidden")?;
    let ab = operand_dtype(OP, (x.hidden, "hidden"), (x.weight, "weight"))?;
    check_i32(OP, "vocabulary", x.vocab)?;
    check_f32(OP, lse, "lse")?;
    if let Some(dw) = &dweight {
        check_dweight(OP, dw, ab)?;
    }
    let dh = Tensor::try_zeros(x.hidden.shape(), ab, x.hidden.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok(dh);
    }
    let rows = DeviceRows::upload(&dev, &active, Some(x.targets))?;
    let targets = rows.targets.as_ref().expect("uploaded with targets");
    let (na, dim) = (rows.count, x.dim);
    let (rc, vt) = extents(x.tiling, na, x.vocab);
    let dw_acc = dweight.as_ref().is_some_and(|d| d.dtype() != DType::F32);
    let (_ws, p) = carve(&dev, &regions(Pass::Backward, na, dim, rc, vt, ab, dw_acc))?;
    let (ha, dha, z) = (p[0], p[1], p[2]);
    let g = if ab == DType::F32 { z } else { p[3] };
    let dw = match dweight {
        Some(t) => Some(DwTarget {
            ptr: t.cuda_ptr(OP, "dweight")?,
            dtype: t.dtype(),
            acc: p[4],
        }),
        None => None,
    };
    let (hp, wp, lp) = (
        x.hidden.cuda_ptr(OP, "hidden")?,
        x.weight.cuda_ptr(OP, "weight")?,
        lse.cuda_ptr(OP, "lse")?,
    );
    gather(&dev, OP, ab, hp, rows.rows.ptr(), ha, na, dim)?;
    fill(&dev, OP, dha, na * dim, 0.0)?;
    let tile = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_bwd_tile_{}", suffix(ab)),
    )?;
    let e = ab.size_in_bytes();
    for (t0, len) in steps(x.vocab, vt) {
        let (len32, t032) = (len as i32, t0 as i32);
        for (a, rcn) in steps(na, rc) {
            let hc = ha + (a * dim * e) as u64;
            logits(&dev, ab, hc, wp, z, rcn, dim, t0, len)?;
            let (tg, rp, cp) = (
                DeviceRows::at(targets, a),
                DeviceRows::at(&rows.rows, a),
                DeviceRows::at(&rows.coef, a),
            );
            let mut b = dev.stream().launch_builder(&tile);
            b.arg(&z).arg(&g).arg(&len32).arg(&t032).arg(&tg).arg(&rp);
            b.arg(&lp).arg(&cp).arg(&dloss);
            // SAFETY: z f32 and g (operand dtype) are [rcn, len]; row arrays
            // hold ≥ a + rcn entries; lse is [N] and rows index into it.
            unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
            let step = GradStep {
                ab,
                dim,
                g,
                w: wp,
                hc,
                dhc: dha + (a * dim * 4) as u64,
                rc: rcn,
                t0,
                len,
                first_chunk: a == 0,
            };
            grad_gemms(&dev, &step, dw)?;
        }
        flush_dw(&dev, OP, dw, dim, t0, len)?;
    }
    let dp = dh.cuda_ptr(OP, "dhidden")?;
    scatter(&dev, OP, ab, dha, rows.rows.ptr(), dp, na, dim)?;
    Ok(dh)
}

/// Loss, lse and dL/d hidden (dloss = 1) in one sweep (frozen head).
pub fn forward_backward(x: &XentArgs<'_>) -> Result<(f64, Tensor, Tensor)> {
    let dev = x.hidden.cuda_device(OP, "hidden")?;
    let ab = operand_dtype(OP, (x.hidden, "hidden"), (x.weight, "weight"))?;
    check_i32(OP, "vocabulary", x.vocab)?;
    let lse = Tensor::try_zeros(&[x.targets.len()], DType::F32, x.hidden.device())?;
    let dh = Tensor::try_zeros(x.hidden.shape(), ab, x.hidden.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok((0.0, lse, dh));
    }
    let rows = DeviceRows::upload(&dev, &active, Some(x.targets))?;
    let targets = rows.targets.as_ref().expect("uploaded with targets");
    let (na, dim) = (rows.count, x.dim);
    let (rc, vt) = extents(x.tiling, na, x.vocab);
    let (_ws, p) = carve(&dev, &regions(Pass::OneSweep, na, dim, rc, vt, ab, false))?;
    let (ha, acc, z) = (p[0], p[1], p[2]);
    let pr = if ab == DType::F32 { z } else { p[3] };
    let (run_max, run_sum, picked) = (p[4], p[5], p[6]);
    let (hp, wp, lp, dp) = (
        x.hidden.cuda_ptr(OP, "hidden")?,
        x.weight.cuda_ptr(OP, "weight")?,
        lse.cuda_ptr(OP, "lse")?,
        dh.cuda_ptr(OP, "dhidden")?,
    );
    gather(&dev, OP, ab, hp, rows.rows.ptr(), ha, na, dim)?;
    fill(&dev, OP, acc, na * dim, 0.0)?;
    fill(&dev, OP, run_max, na, f32::NEG_INFINITY)?;
    fill(&dev, OP, run_sum, na, 0.0)?;
    fill(&dev, OP, picked, na, f32::NAN)?;
    let tile = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_fb_tile_{}", suffix(ab)),
    )?;
    let (e, dim32) = (ab.size_in_bytes(), check_i32(OP, "hidden size", dim)?);
    for (t0, len) in steps(x.vocab, vt) {
        let (len32, t032) = (len as i32, t0 as i32);
        for (a, rcn) in steps(na, rc) {
            logits(
                &dev,
                ab,
                ha + (a * dim * e) as u64,
                wp,
                z,
                rcn,
                dim,
                t0,
                len,
            )?;
            let (tg, mx, sm, pk, ac) = (
                DeviceRows::at(targets, a),
                run_max + (a * 4) as u64,
                run_sum + (a * 4) as u64,
                picked + (a * 4) as u64,
                acc + (a * dim * 4) as u64,
            );
            let mut b = dev.stream().launch_builder(&tile);
            b.arg(&z).arg(&pr).arg(&len32).arg(&t032).arg(&tg);
            b.arg(&mx).arg(&sm).arg(&pk).arg(&ac).arg(&dim32);
            // SAFETY: z f32 and pr (operand dtype) are [rcn, len]; acc rows
            // [a, a + rcn) of [na, dim]; state arrays hold ≥ a + rcn entries.
            unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
            // acc (already rescaled to the new max) += P·W_tile.
            gemm(
                &dev,
                &Gemm {
                    m: rcn,
                    n: dim,
                    k: len,
                    a: pr,
                    a_t: false,
                    b: wp + (t0 * dim * e) as u64,
                    b_t: false,
                    c: ac,
                    alpha: 1.0,
                    beta: 1.0,
                    ab,
                    c_dtype: DType::F32,
                },
            )?;
        }
    }
    let loss_rows = dev.alloc(na * 4)?;
    let finish = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_fb_finish_{}", suffix(ab)),
    )?;
    let (cp, rp, tp, lr) = (
        rows.coef.ptr(),
        rows.rows.ptr(),
        targets.ptr(),
        loss_rows.ptr(),
    );
    let mut b = dev.stream().launch_builder(&finish);
    b.arg(&run_max)
        .arg(&run_sum)
        .arg(&picked)
        .arg(&cp)
        .arg(&rp)
        .arg(&tp);
    b.arg(&acc).arg(&wp).arg(&dim32).arg(&lp).arg(&lr).arg(&dp);
    // SAFETY: one block per active row; acc [na, dim] f32, W [V, dim] and dh
    // [N, dim] of the operand dtype, lse [N], loss_rows [na].
    unsafe { b.launch(cfg(na as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
    let loss = read_loss(&dev, &loss_rows, na)?;
    Ok((loss, lse, dh))
}

/// Loss, lse, dL/d hidden (dloss = 1) and dL/dW added into `dweight`, in one
/// sweep: 6·N·H·V FLOPs where `forward` + `backward` do 8·N·H·V. The active
/// rows go in chunks of [`sweep_rows`], each against the whole vocabulary:
/// Z = h_c·Wᵀ (f32 [rc, V]); `linear_xent_sweep_row_*` finishes each row's
/// lse and loss and overwrites Z with G = c·(softmax − onehot) in the operand
/// dtype; then dh_c = G·W (f32, scattered into dh) and dW += Gᵀ·h_c straight
/// into `dweight` (beta 1). A bf16 dW is therefore rounded once per chunk
/// rather than once in all (the tiled backward's f32 tile accumulator would
/// cost V·H·4 bytes here, more than the logits).
pub fn forward_backward_dw(
    x: &XentArgs<'_>,
    dweight: &mut Tensor,
) -> Result<(f64, Tensor, Tensor)> {
    let dev = x.hidden.cuda_device(OP, "hidden")?;
    let ab = operand_dtype(OP, (x.hidden, "hidden"), (x.weight, "weight"))?;
    check_dweight(OP, dweight, ab)?;
    check_i32(OP, "vocabulary", x.vocab)?;
    // bf16 G is read with a row stride of 2·V elements.
    check_i32(OP, "twice the vocabulary", 2 * x.vocab)?;
    let lse = Tensor::try_zeros(&[x.targets.len()], DType::F32, x.hidden.device())?;
    let dh = Tensor::try_zeros(x.hidden.shape(), ab, x.hidden.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok((0.0, lse, dh));
    }
    let rows = DeviceRows::upload(&dev, &active, Some(x.targets))?;
    let targets = rows.targets.as_ref().expect("uploaded with targets");
    let (na, dim, vocab) = (rows.count, x.dim, x.vocab);
    let rc = sweep_rows(x.tiling, na, vocab);
    let (_ws, p) = carve(&dev, &regions(Pass::SweepDw, na, dim, rc, vocab, ab, false))?;
    let (hc, dhc, z) = (p[0], p[1], p[2]);
    let loss_rows = dev.alloc(na * 4)?;
    let (hp, wp, lp, dp) = (
        x.hidden.cuda_ptr(OP, "hidden")?,
        x.weight.cuda_ptr(OP, "weight")?,
        lse.cuda_ptr(OP, "lse")?,
        dh.cuda_ptr(OP, "dhidden")?,
    );
    let (dwp, dw_dtype) = (dweight.cuda_ptr(OP, "dweight")?, dweight.dtype());
    // G's row stride in elements: it lives in the f32 rows of Z.
    let g_ld = vocab * 4 / ab.size_in_bytes();
    let row = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_xent_sweep_row_{}", suffix(ab)),
    )?;
    let vocab32 = vocab as i32;
    for (a, rcn) in steps(na, rc) {
        let rows_a = DeviceRows::at(&rows.rows, a);
        gather(&dev, OP, ab, hp, rows_a, hc, rcn, dim)?;
        logits(&dev, ab, hc, wp, z, rcn, dim, 0, vocab)?;
        let (tg, cp, lr) = (
            DeviceRows::at(targets, a),
            DeviceRows::at(&rows.coef, a),
            loss_rows.ptr() + (a * 4) as u64,
        );
        let mut b = dev.stream().launch_builder(&row);
        b.arg(&z).arg(&vocab32).arg(&tg).arg(&rows_a).arg(&cp);
        b.arg(&lp).arg(&lr);
        // SAFETY: z is f32 [rcn, vocab]; the chunk-offset row arrays hold
        // ≥ rcn entries, rows index into lse [N]; loss_rows has na ≥ a + rcn.
        unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
        // dh_c = G·W.
        gemm_lda(
            &dev,
            &Gemm {
                m: rcn,
                n: dim,
                k: vocab,
                a: z,
                a_t: false,
                b: wp,
                b_t: false,
                c: dhc,
                alpha: 1.0,
                beta: 0.0,
                ab,
                c_dtype: DType::F32,
            },
            g_ld,
        )?;
        // dW += Gᵀ·h_c: G stored [k = rcn, m = vocab] with row stride g_ld.
        gemm_lda(
            &dev,
            &Gemm {
                m: vocab,
                n: dim,
                k: rcn,
                a: z,
                a_t: true,
                b: hc,
                b_t: false,
                c: dwp,
                alpha: 1.0,
                beta: 1.0,
                ab,
                c_dtype: dw_dtype,
            },
            g_ld,
        )?;
        scatter(&dev, OP, ab, dhc, rows_a, dp, rcn, dim)?;
    }
    let loss = read_loss(&dev, &loss_rows, na)?;
    Ok((loss, lse, dh))
}
