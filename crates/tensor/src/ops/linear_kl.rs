//! Fused LM head + KL(teacher ‖ student): the distillation loss between two
//! sets of hidden states read through one head, without either side's
//! [N, V] logits. Kernels: `cpu/linear_kl.rs`.
//!
//! Forward returns the loss and both sides' per-row log-sum-exp; backward
//! recomputes the tiles from those. Only the student gets a gradient (the
//! teacher is the fixed target), and the head's gradient comes from the
//! student's logits alone.

use crate::cpu::linear_kl::KlInputs;
use crate::cpu::linear_xent::Tiling;
use crate::ops::linear_xent::{check_row_weights, checked_tiling};
use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::cpu::linear_xent::{ROW_CHUNK, VOCAB_TILE};

const OP: &str = "linear_kl";

/// Tile sizes; `Default` is the tuned pair shared with `linear_xent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearKlOptions {
    /// Hidden rows per chunk (≥ 1).
    pub row_chunk: usize,
    /// Vocabulary entries per logit tile (≥ 1).
    pub vocab_tile: usize,
}

impl LinearKlOptions {
    /// The tuned tiles for `device` (`Default` is the CPU's; see
    /// [`crate::ops::linear_xent::CUDA_ROW_CHUNK`] for the CUDA pair).
    pub fn for_device(device: Device) -> Self {
        let x = crate::ops::linear_xent::LinearXentOptions::for_device(device);
        Self {
            row_chunk: x.row_chunk,
            vocab_tile: x.vocab_tile,
        }
    }
}

impl Default for LinearKlOptions {
    fn default() -> Self {
        Self {
            row_chunk: ROW_CHUNK,
            vocab_tile: VOCAB_TILE,
        }
    }
}

/// What forward returns.
#[derive(Debug, Clone)]
pub struct LinearKlOut {
    /// Σ_r c_r·KL(softmax(teacher_r·Wᵀ) ‖ softmax(student_r·Wᵀ)), c_r = row weight or 1/rows.
    pub loss: f64,
    /// Teacher log-sum-exp per row, [rows] (0 for rows of weight 0).
    pub lse_teacher: Tensor,
    /// Student log-sum-exp per row, [rows] (0 for rows of weight 0).
    pub lse_student: Tensor,
}

/// Checks every input; returns (rows, hidden size, vocabulary, tiling).
fn validate(
    teacher: &Tensor,
    student: &Tensor,
    weight: &Tensor,
    row_weights: Option<&[f32]>,
    opts: &LinearKlOptions,
) -> Result<(usize, usize, usize, Tiling)> {
    let tiling = checked_tiling(OP, opts.row_chunk, opts.vocab_tile)?;
    let dim = *student
        .shape()
        .last()
        .ok_or_else(|| TensorError::shape(OP, "student", "rank >= 1 ([.., H])", student.shape()))?;
    teacher.expect_shape(OP, "teacher", student.shape())?;
    let (vocab, wdim) = weight.dims2(OP, "weight")?;
    if wdim != dim || vocab == 0 {
        return Err(TensorError::shape(
            OP,
            "weight",
            format!("[V >= 1, {dim}] (hidden size of `student`)"),
            weight.shape(),
        ));
    }
    crate::ops::same_device(OP, &[student, teacher, weight])?;
    let rows = student.numel() / dim.max(1);
    if let Some(w) = row_weights {
        check_row_weights(OP, w, rows)?;
    }
    Ok((rows, dim, vocab, tiling))
}

/// The CPU kernels' view of validated inputs (host f32 slices).
fn cpu_inputs<'a>(
    teacher: &'a Tensor,
    student: &'a Tensor,
    weight: &'a Tensor,
    dim: usize,
    row_weights: Option<&'a [f32]>,
) -> Result<KlInputs<'a, f32>> {
    Ok(KlInputs {
        teacher: teacher.f32s(OP, "teacher")?,
        student: student.f32s(OP, "student")?,
        weight: weight.f32s(OP, "weight")?,
        dim,
        row_weights,
    })
}

/// The CUDA launchers' view of validated inputs (device tensors).
fn cuda_args<'a>(
    teacher: &'a Tensor,
    student: &'a Tensor,
    weight: &'a Tensor,
    (rows, dim, vocab, tiling): (usize, usize, usize, Tiling),
    row_weights: Option<&'a [f32]>,
) -> cuda::linear_kl::KlArgs<'a> {
    cuda::linear_kl::KlArgs {
        teacher,
        student,
        weight,
        dim,
        vocab,
        rows,
        row_weights,
        tiling,
    }
}

/// KL(softmax(teacher·Wᵀ) ‖ softmax(student·Wᵀ)) per row, weighted and summed.
/// teacher, student: [.., H] (same shape); weight: [V, H]; `row_weights`: one per row;
/// f32 on the CPU, f32 or bf16 (all the same) on CUDA, where the lse are f32.
pub fn forward(
    teacher: &Tensor,
    student: &Tensor,
    weight: &Tensor,
    row_weights: Option<&[f32]>,
    opts: &LinearKlOptions,
) -> Result<LinearKlOut> {
    let v = validate(teacher, student, weight, row_weights, opts)?;
    let (rows, dim, _, tiling) = v;
    match student.device() {
        Device::Cpu => {
            let mut lse_teacher = Tensor::zeros(&[rows], student.dtype(), Device::Cpu);
            let mut lse_student = Tensor::zeros(&[rows], student.dtype(), Device::Cpu);
            let x = cpu_inputs(teacher, student, weight, dim, row_weights)?;
            let loss = cpu::linear_kl::forward(
                &x,
                tiling,
                lse_teacher.f32s_mut(OP, "lse_teacher")?,
                lse_student.f32s_mut(OP, "lse_student")?,
            );
            Ok(LinearKlOut {
                loss,
                lse_teacher,
                lse_student,
            })
        }
        Device::Cuda(_) => {
            let x = cuda_args(teacher, student, weight, v, row_weights);
            let (loss, lse_teacher, lse_student) = cuda::linear_kl::forward(&x)?;
            Ok(LinearKlOut {
                loss,
                lse_teacher,
                lse_student,
            })
        }
    }
}

/// Returns d(dloss·loss)/d student; adds the head's gradient (student side
/// only) into `dweight` when given. The lse tensors are forward's.
pub fn backward(
    dloss: f32,
    teacher: &Tensor,
    student: &Tensor,
    weight: &Tensor,
    row_weights: Option<&[f32]>,
    lse_teacher: &Tensor,
    lse_student: &Tensor,
    dweight: Option<&mut Tensor>,
    opts: &LinearKlOptions,
) -> Result<Tensor> {
    let v = validate(teacher, student, weight, row_weights, opts)?;
    let (rows, dim, _, tiling) = v;
    lse_teacher.expect_shape(OP, "lse_teacher", &[rows])?;
    lse_student.expect_shape(OP, "lse_student", &[rows])?;
    crate::ops::same_device(OP, &[student, lse_teacher, lse_student])?;
    if let Some(dw) = &dweight {
        dw.expect_shape(OP, "dweight", weight.shape())?;
        crate::ops::same_device(OP, &[student, dw])?;
    }
    match student.device() {
        Device::Cpu => {
            let mut ds = Tensor::zeros(student.shape(), student.dtype(), Device::Cpu);
            let dw = match dweight {
                Some(t) => Some(t.f32s_mut(OP, "dweight")?),
                None => None,
            };
            let x = cpu_inputs(teacher, student, weight, dim, row_weights)?;
            cpu::linear_kl::backward(
                &x,
                tiling,
                dloss,
                lse_teacher.f32s(OP, "lse_teacher")?,
                lse_student.f32s(OP, "lse_student")?,
                ds.f32s_mut(OP, "dstudent")?,
                dw,
            );
            Ok(ds)
        }
        Device::Cuda(_) => {
            let x = cuda_args(teacher, student, weight, v, row_weights);
            cuda::linear_kl::backward(&x, dloss, lse_teacher, lse_student, dweight)
        }
    }
}

/// Loss and d(student) (for dloss = 1; scale the row weights for another)
/// in one sweep of the vocabulary: the training path when the head is
/// frozen, 8·N·H·V FLOPs where `forward` + `backward` do 10·N·H·V. On CUDA
/// it runs the two passes (no one-sweep kernel yet), with the same results.
pub fn forward_backward(
    teacher: &Tensor,
    student: &Tensor,
    weight: &Tensor,
    row_weights: Option<&[f32]>,
    opts: &LinearKlOptions,
) -> Result<(LinearKlOut, Tensor)> {
    let v = validate(teacher, student, weight, row_weights, opts)?;
    let (rows, dim, _, tiling) = v;
    match student.device() {
        Device::Cpu => {
            let mut lse_teacher = Tensor::zeros(&[rows], student.dtype(), Device::Cpu);
            let mut lse_student = Tensor::zeros(&[rows], student.dtype(), Device::Cpu);
            let mut ds = Tensor::zeros(student.shape(), student.dtype(), Device::Cpu);
            let x = cpu_inputs(teacher, student, weight, dim, row_weights)?;
            let loss = cpu::linear_kl::forward_backward(
                &x,
                tiling,
                lse_teacher.f32s_mut(OP, "lse_teacher")?,
                lse_student.f32s_mut(OP, "lse_student")?,
                ds.f32s_mut(OP, "dstudent")?,
            );
            let out = LinearKlOut {
                loss,
                lse_teacher,
                lse_student,
            };
            Ok((out, ds))
        }
        Device::Cuda(_) => {
            let out = forward(teacher, student, weight, row_weights, opts)?;
            let ds = backward(
                1.0,
                teacher,
                student,
                weight,
                row_weights,
                &out.lse_teacher,
                &out.lse_student,
                None,
                opts,
            )?;
            Ok((out, ds))
        }
    }
}

/// Bytes of working memory forward/backward allocate on `device` beyond their
/// outputs, for `rows` hidden rows of size `dim` and a vocabulary of `vocab`.
pub fn workspace_bytes(
    device: Device,
    rows: usize,
    dim: usize,
    vocab: usize,
    opts: &LinearKlOptions,
) -> usize {
    let tiling = Tiling::at_least_one(opts.row_chunk, opts.vocab_tile);
    match device {
        Device::Cpu => cpu::linear_kl::workspace_bytes(rows, dim, vocab, tiling),
        Device::Cuda(_) => cuda::linear_kl::workspace_bytes(rows, dim, vocab, tiling),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_inputs() {
        let (t, s, w) = (zeros(&[3, 4]), zeros(&[3, 4]), zeros(&[9, 4]));
        let o = LinearKlOptions::default();
        let e = err(forward(&zeros(&[3, 5]), &s, &w, None, &o));
        assert!(
            e.contains("linear_kl") && e.contains("teacher") && e.contains("[3, 4]"),
            "{e}"
        );
        let e = err(forward(&t, &s, &zeros(&[9, 3]), None, &o));
        assert!(e.contains("weight") && e.contains("[V >= 1, 4]"), "{e}");
        let e = err(forward(&t, &s, &w, Some(&[1.0; 4]), &o));
        assert!(e.contains("row_weights") && e.contains("3 entries"), "{e}");
        let e = err(forward(&t, &s, &w, Some(&[1.0, f32::INFINITY, 0.0]), &o));
        assert!(e.contains("position 1"), "{e}");
        let z = LinearKlOptions { row_chunk: 0, ..o };
        assert!(err(forward(&t, &s, &w, None, &z)).contains("row_chunk"));
        let out = forward(&t, &s, &w, None, &o).unwrap();
        let e = err(backward(
            1.0,
            &t,
            &s,
            &w,
            None,
            &zeros(&[2]),
            &out.lse_student,
            None,
            &o,
        ));
        assert!(e.contains("lse_teacher"), "{e}");
        let mut dw = zeros(&[4, 9]);
        let (lt, ls) = (&out.lse_teacher, &out.lse_student);
        let e = err(backward(1.0, &t, &s, &w, None, lt, ls, Some(&mut dw), &o));
        assert!(e.contains("dweight"), "{e}");
    }

    #[test]
    fn zero_head_gives_zero_loss_and_keeps_shape() {
        // Both distributions uniform: KL 0, gradient 0, student's shape kept.
        let (t, s, w) = (zeros(&[2, 3, 4]), zeros(&[2, 3, 4]), zeros(&[9, 4]));
        let o = LinearKlOptions {
            row_chunk: 2,
            vocab_tile: 4,
        };
        let out = forward(&t, &s, &w, None, &o).unwrap();
        assert_eq!(out.loss, 0.0);
        assert!((out.lse_teacher.to_vec_f32()[5] - 9f32.ln()).abs() < 1e-6);
        let mut dw = zeros(&[9, 4]);
        let (lt, ls) = (&out.lse_teacher, &out.lse_student);
        let ds = backward(1.0, &t, &s, &w, None, lt, ls, Some(&mut dw), &o).unwrap();
        assert_eq!(ds.shape(), &[2, 3, 4]);
        assert!(ds.to_vec_f32().iter().all(|&g| g == 0.0));
    }

    /// The one-sweep entry point validates like the others and keeps the
    /// student's shape; its numbers are checked against the two passes in
    /// `cpu/linear_kl.rs`.
    #[test]
    fn forward_backward_checks_inputs_and_matches_two_passes() {
        let mut r = crate::testing::rng(3);
        let t = |n: usize, shape: &[usize], r: &mut rand::rngs::StdRng| {
            Tensor::from_vec(crate::testing::uniform::<f32>(r, n, 1.0), shape).unwrap()
        };
        let (te, st, w) = (
            t(24, &[2, 3, 4], &mut r),
            t(24, &[2, 3, 4], &mut r),
            t(36, &[9, 4], &mut r),
        );
        let o = LinearKlOptions {
            row_chunk: 4,
            vocab_tile: 4,
        };
        let rw = [0.5, 0.0, 0.25, 0.1, 0.1, 0.05];
        let (out, ds) = forward_backward(&te, &st, &w, Some(&rw), &o).unwrap();
        assert_eq!(ds.shape(), &[2, 3, 4]);
        let two = forward(&te, &st, &w, Some(&rw), &o).unwrap();
        let (lt, ls) = (&two.lse_teacher, &two.lse_student);
        let ds2 = backward(1.0, &te, &st, &w, Some(&rw), lt, ls, None, &o).unwrap();
        assert!((out.loss - two.loss).abs() <= 1e-6 * two.loss.abs());
        crate::testing::assert_close("dstudent", &ds.to_vec_f32(), &ds2.to_vec_f32(), 1e-5);
        let e = err(forward_backward(&te, &zeros(&[2, 3, 5]), &w, None, &o));
        assert!(
            e.contains("linear_kl") && e.contains("shape mismatch"),
            "{e}"
        );
    }
}
