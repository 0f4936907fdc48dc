//! CUDA path of the fused LM head + KL(teacher ‖ student)
//! (`linear_kl_*` in `kernels/linear_xent.cu`).
//!
//! The schedule, GEMM layouts, workspace carving and the head-gradient
//! accumulation are `cuda::linear_xent`'s; per (tile, chunk) there are two
//! logit GEMMs (teacher and student rows against the same W tile) and the
//! kernels keep both running log-sum-exps and the teacher-weighted cross
//! term (see the .cu). Backward recomputes both tiles from the saved lse and
//! pushes G = c·dloss·(p_s − p_t) through the student's rows only: the
//! teacher is under no gradient.

use cudarc::driver::PushKernelArg;

use super::linear_xent::{
    BLOCK, DeviceRows, DwTarget, GradStep, carve, check_dweight, check_f32, check_i32, extents,
    fill, flush_dw, gather, grad_gemms, handed_out, logits, operand_dtype, read_loss, scatter,
    steps, suffix,
};
use super::{blocks_for, cfg, launch_err, modules};
use crate::shared::tiling::{Active, Tiling};
use crate::{DType, Result, Tensor};

const OP: &str = "linear_kl";

/// Validated inputs of the KL loss (all on one CUDA device).
#[derive(Debug, Clone, Copy)]
pub struct KlArgs<'a> {
    /// Teacher hidden states [.., H], bf16 or f32.
    pub teacher: &'a Tensor,
    /// Student hidden states, teacher's shape and dtype.
    pub student: &'a Tensor,
    /// LM head [V, H], same dtype.
    pub weight: &'a Tensor,
    /// H.
    pub dim: usize,
    /// V.
    pub vocab: usize,
    /// Rows (N).
    pub rows: usize,
    /// Optional per-row weights (else 1/N each).
    pub row_weights: Option<&'a [f32]>,
    /// Chunk and tile sizes (both ≥ 1).
    pub tiling: Tiling,
}

fn active(x: &KlArgs<'_>) -> Active<f32> {
    let mean = (1.0 / x.rows.max(1) as f64) as f32;
    Active::new((0..x.rows).map(|i| (i, x.row_weights.map_or(mean, |w| w[i]))))
}

/// The operand dtype after checking all three tensors share it.
fn dtype(x: &KlArgs<'_>) -> Result<DType> {
    let ab = operand_dtype(OP, (x.student, "student"), (x.weight, "weight"))?;
    operand_dtype(OP, (x.student, "student"), (x.teacher, "teacher"))?;
    check_i32(OP, "vocabulary", x.vocab)?;
    Ok(ab)
}

/// Forward regions: hT, hS, Zt, Zs, then t_max, t_sum, s_max, s_sum, cross.
fn forward_regions(na: usize, dim: usize, rc: usize, vt: usize, e: usize) -> Vec<usize> {
    let mut r = vec![na * dim * e, na * dim * e, rc * vt * 4, rc * vt * 4];
    r.extend([na * 4; 5]);
    r
}

/// Backward regions: hT, hS, dS (f32), Zt, Zs, G (bf16 only), dW accumulator.
fn backward_regions(
    na: usize,
    dim: usize,
    rc: usize,
    vt: usize,
    ab: DType,
    dw_acc: bool,
) -> Vec<usize> {
    let e = ab.size_in_bytes();
    vec![
        na * dim * e,
        na * dim * e,
        na * dim * 4,
        rc * vt * 4,
        rc * vt * 4,
        if ab == DType::F32 { 0 } else { rc * vt * e },
        if dw_acc { vt * dim * 4 } else { 0 },
    ]
}

/// Device bytes forward or backward hand out beyond their outputs (worst
/// case over dtypes, all rows active): O(n·H + R·Vt + Vt·H).
pub fn workspace_bytes(n: usize, dim: usize, vocab: usize, tiling: Tiling) -> usize {
    let (rc, vt) = extents(tiling, n.max(1), vocab.max(1));
    [DType::F32, DType::BF16]
        .into_iter()
        .map(|ab| {
            let f = handed_out(&forward_regions(n, dim, rc, vt, ab.size_in_bytes()), 3, n);
            let b = handed_out(&backward_regions(n, dim, rc, vt, ab, true), 2, n);
            f.max(b)
        })
        .max()
        .unwrap_or(0)
}

/// Loss and both lse ([N] f32 each, 0 for rows of weight 0).
pub fn forward(x: &KlArgs<'_>) -> Result<(f64, Tensor, Tensor)> {
    let dev = x.student.cuda_device(OP, "student")?;
    let ab = dtype(x)?;
    let lse_t = Tensor::try_zeros(&[x.rows], DType::F32, x.student.device())?;
    let lse_s = Tensor::try_zeros(&[x.rows], DType::F32, x.student.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok((0.0, lse_t, lse_s));
    }
    let rows = DeviceRows::upload(&dev, &active, None)?;
    let (na, dim, e) = (rows.count, x.dim, ab.size_in_bytes());
    let (rc, vt) = extents(x.tiling, na, x.vocab);
    let (_ws, p) = carve(&dev, &forward_regions(na, dim, rc, vt, e))?;
    let (ht, hs, zt, zs) = (p[0], p[1], p[2], p[3]);
    let (t_max, t_sum, s_max, s_sum, cross) = (p[4], p[5], p[6], p[7], p[8]);
    let wp = x.weight.cuda_ptr(OP, "weight")?;
    let rp = rows.rows.ptr();
    gather(
        &dev,
        OP,
        ab,
        x.teacher.cuda_ptr(OP, "teacher")?,
        rp,
        ht,
        na,
        dim,
    )?;
    gather(
        &dev,
        OP,
        ab,
        x.student.cuda_ptr(OP, "student")?,
        rp,
        hs,
        na,
        dim,
    )?;
    fill(&dev, OP, t_max, na, f32::NEG_INFINITY)?;
    fill(&dev, OP, s_max, na, f32::NEG_INFINITY)?;
    fill(&dev, OP, t_sum, na, 0.0)?;
    fill(&dev, OP, s_sum, na, 0.0)?;
    fill(&dev, OP, cross, na, 0.0)?;
    let tile = dev.function(&modules::LINEAR_XENT, "linear_kl_fwd_tile")?;
    for (t0, len) in steps(x.vocab, vt) {
        let len32 = len as i32;
        for (a, rcn) in steps(na, rc) {
            let off = (a * dim * e) as u64;
            logits(&dev, ab, ht + off, wp, zt, rcn, dim, t0, len)?;
            logits(&dev, ab, hs + off, wp, zs, rcn, dim, t0, len)?;
            let o = (a * 4) as u64;
            let (tm, ts, sm, ss, cr) = (t_max + o, t_sum + o, s_max + o, s_sum + o, cross + o);
            let mut b = dev.stream().launch_builder(&tile);
            b.arg(&zt).arg(&zs).arg(&len32);
            b.arg(&tm).arg(&ts).arg(&sm).arg(&ss).arg(&cr);
            // SAFETY: zt, zs are f32 [rcn, len]; state arrays hold ≥ a + rcn entries.
            unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
        }
    }
    let loss_rows = dev.alloc(na * 4)?;
    let finish = dev.function(&modules::LINEAR_XENT, "linear_kl_fwd_finish")?;
    let (cp, na32, lr) = (rows.coef.ptr(), na as i32, loss_rows.ptr());
    let (ltp, lsp) = (
        lse_t.cuda_ptr(OP, "lse_teacher")?,
        lse_s.cuda_ptr(OP, "lse_student")?,
    );
    let mut b = dev.stream().launch_builder(&finish);
    b.arg(&t_max)
        .arg(&t_sum)
        .arg(&s_max)
        .arg(&s_sum)
        .arg(&cross);
    b.arg(&cp).arg(&rp).arg(&na32).arg(&ltp).arg(&lsp).arg(&lr);
    // SAFETY: state and coef hold na f32, rows na indices < N, both lse N f32.
    unsafe { b.launch(cfg(blocks_for(na, 256), 256, 0)) }.map_err(launch_err(OP))?;
    let loss = read_loss(&dev, &loss_rows, na)?;
    Ok((loss, lse_t, lse_s))
}

/// d(dloss·loss)/d student (student's dtype), adding the head's gradient
/// (student side only) into `dweight` when given.
pub fn backward(
    x: &KlArgs<'_>,
    dloss: f32,
    lse_teacher: &Tensor,
    lse_student: &Tensor,
    dweight: Option<&mut Tensor>,
) -> Result<Tensor> {
    let dev = x.student.cuda_device(OP, "student")?;
    let ab = dtype(x)?;
    check_f32(OP, lse_teacher, "lse_teacher")?;
    check_f32(OP, lse_student, "lse_student")?;
    if let Some(dw) = &dweight {
        check_dweight(OP, dw, ab)?;
    }
    let ds = Tensor::try_zeros(x.student.shape(), ab, x.student.device())?;
    let active = active(x);
    if active.rows.is_empty() {
        return Ok(ds);
    }
    let rows = DeviceRows::upload(&dev, &active, None)?;
    let (na, dim, e) = (rows.count, x.dim, ab.size_in_bytes());
    let (rc, vt) = extents(x.tiling, na, x.vocab);
    let dw_acc = dweight.as_ref().is_some_and(|d| d.dtype() != DType::F32);
    let (_ws, p) = carve(&dev, &backward_regions(na, dim, rc, vt, ab, dw_acc))?;
    let (ht, hs, dsa, zt, zs) = (p[0], p[1], p[2], p[3], p[4]);
    let g = if ab == DType::F32 { zs } else { p[5] };
    let dw = match dweight {
        Some(t) => Some(DwTarget {
            ptr: t.cuda_ptr(OP, "dweight")?,
            dtype: t.dtype(),
            acc: p[6],
        }),
        None => None,
    };
    let wp = x.weight.cuda_ptr(OP, "weight")?;
    let (ltp, lsp) = (
        lse_teacher.cuda_ptr(OP, "lse_teacher")?,
        lse_student.cuda_ptr(OP, "lse_student")?,
    );
    let rp = rows.rows.ptr();
    gather(
        &dev,
        OP,
        ab,
        x.teacher.cuda_ptr(OP, "teacher")?,
        rp,
        ht,
        na,
        dim,
    )?;
    gather(
        &dev,
        OP,
        ab,
        x.student.cuda_ptr(OP, "student")?,
        rp,
        hs,
        na,
        dim,
    )?;
    fill(&dev, OP, dsa, na * dim, 0.0)?;
    let tile = dev.function(
        &modules::LINEAR_XENT,
        &format!("linear_kl_bwd_tile_{}", suffix(ab)),
    )?;
    for (t0, len) in steps(x.vocab, vt) {
        let len32 = len as i32;
        for (a, rcn) in steps(na, rc) {
            let off = (a * dim * e) as u64;
            logits(&dev, ab, ht + off, wp, zt, rcn, dim, t0, len)?;
            logits(&dev, ab, hs + off, wp, zs, rcn, dim, t0, len)?;
            let (rpa, cpa) = (DeviceRows::at(&rows.rows, a), DeviceRows::at(&rows.coef, a));
            let mut b = dev.stream().launch_builder(&tile);
            b.arg(&zt).arg(&zs).arg(&g).arg(&len32).arg(&rpa);
            b.arg(&ltp).arg(&lsp).arg(&cpa).arg(&dloss);
            // SAFETY: zt, zs f32 and g (operand dtype) are [rcn, len]; rows
            // and coef hold ≥ a + rcn entries; both lse are [N].
            unsafe { b.launch(cfg(rcn as u32, BLOCK, 0)) }.map_err(launch_err(OP))?;
            let step = GradStep {
                ab,
                dim,
                g,
                w: wp,
                hc: hs + off,
                dhc: dsa + (a * dim * 4) as u64,
                rc: rcn,
                t0,
                len,
                first_chunk: a == 0,
            };
            grad_gemms(&dev, &step, dw)?;
        }
        flush_dw(&dev, OP, dw, dim, t0, len)?;
    }
    let dp = ds.cuda_ptr(OP, "dstudent")?;
    scatter(&dev, OP, ab, dsa, rp, dp, na, dim)?;
    Ok(ds)
}
