//! Fused LM head + cross-entropy: the loss of h·Wᵀ against target ids without
//! the [N, V] logits ever existing. Kernels: `cpu/linear_xent.rs`.
//!
//! Forward returns the loss and the per-row log-sum-exp; backward recomputes
//! the logits tile by tile from that, so between the two calls the op holds
//! N floats instead of N·V. Targets and row weights are host slices: they are
//! small, and the caller builds them on the host from token ids anyway.

use crate::cpu::linear_xent::{Tiling, XentInputs};
use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::cpu::linear_xent::{IGNORE_INDEX, ROW_CHUNK, VOCAB_TILE};

const OP: &str = "linear_xent";

/// Ignore index and tile sizes; `Default` is PyTorch's −100 with the tuned tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearXentOptions {
    /// Rows whose target equals this contribute nothing.
    pub ignore_index: i64,
    /// Hidden rows per chunk (≥ 1).
    pub row_chunk: usize,
    /// Vocabulary entries per logit tile (≥ 1).
    pub vocab_tile: usize,
}

impl Default for LinearXentOptions {
    fn default() -> Self {
        Self {
            ignore_index: IGNORE_INDEX,
            row_chunk: ROW_CHUNK,
            vocab_tile: VOCAB_TILE,
        }
    }
}

/// Tiles for the CUDA path: [8192 rows × 4096 vocabulary] f32 logits (128 MiB),
/// large enough that each tile's GEMMs run near cuBLAS's peak. Measured on an
/// H100 (docs/benchmarks.md, 2026-11-27): the CPU's 256 × 4096 tiles ran the
/// fused CE 2.5–3× slower at the same shapes, because 256-row GEMMs leave
/// the tensor cores idle between launches.
pub const CUDA_ROW_CHUNK: usize = 8192;
/// See [`CUDA_ROW_CHUNK`].
pub const CUDA_VOCAB_TILE: usize = 4096;

impl LinearXentOptions {
    /// The tuned tiles for `device` (`Default` is the CPU's).
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cpu => Self::default(),
            Device::Cuda(_) => Self {
                row_chunk: CUDA_ROW_CHUNK,
                vocab_tile: CUDA_VOCAB_TILE,
                ..Self::default()
            },
        }
    }

    fn tiling(&self) -> Result<Tiling> {
        checked_tiling(OP, self.row_chunk, self.vocab_tile)
    }
}

/// The tiling of user-given tile sizes, both of which must be ≥ 1 (shared with `linear_kl`).
pub(crate) fn checked_tiling(
    op: &'static str,
    row_chunk: usize,
    vocab_tile: usize,
) -> Result<Tiling> {
    if row_chunk == 0 || vocab_tile == 0 {
        return Err(TensorError::invalid(
            op,
            format!("row_chunk and vocab_tile must be >= 1, got {row_chunk} and {vocab_tile}"),
        ));
    }
    Ok(Tiling {
        rows: row_chunk,
        vocab: vocab_tile,
    })
}

/// What forward returns.
#[derive(Debug, Clone)]
pub struct LinearXentOut {
    /// Σ_r c_r·(−log softmax(h_r·Wᵀ)[target_r]), c_r = row weight or 1/(non-ignored rows).
    pub loss: f64,
    /// Per-row log-sum-exp of the logits, [rows] (0 where the row contributes nothing); backward's input.
    pub lse: Tensor,
}

/// Checks every input; returns (rows, hidden size, vocabulary).
fn validate(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    row_weights: Option<&[f32]>,
    opts: &LinearXentOptions,
) -> Result<(usize, usize, usize, Tiling)> {
    let tiling = opts.tiling()?;
    let dim = *hidden
        .shape()
        .last()
        .ok_or_else(|| TensorError::shape(OP, "hidden", "rank >= 1 ([.., H])", hidden.shape()))?;
    let (vocab, wdim) = weight.dims2(OP, "weight")?;
    if wdim != dim || vocab == 0 {
        return Err(TensorError::shape(
            OP,
            "weight",
            format!("[V >= 1, {dim}] (hidden size of `hidden`)"),
            weight.shape(),
        ));
    }
    crate::ops::same_device(OP, &[hidden, weight])?;
    let rows = hidden.numel() / dim.max(1);
    check_rows(targets.len(), rows, "targets")?;
    if let Some(w) = row_weights {
        check_row_weights(OP, w, rows)?;
    }
    for (i, &t) in targets.iter().enumerate() {
        if t != opts.ignore_index && !(0..vocab as i64).contains(&t) {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "target {t} at position {i} is outside [0, {vocab}) and is not the ignore index {}",
                    opts.ignore_index
                ),
            ));
        }
    }
    Ok((rows, dim, vocab, tiling))
}

fn check_rows(found: usize, rows: usize, what: &'static str) -> Result<()> {
    if found == rows {
        Ok(())
    } else {
        Err(TensorError::shape(
            OP,
            what,
            format!("{rows} entries (one per hidden row)"),
            &[found],
        ))
    }
}

/// Row weights must have one finite entry per row (shared with `linear_kl`).
pub(crate) fn check_row_weights(op: &'static str, w: &[f32], rows: usize) -> Result<()> {
    if w.len() != rows {
        return Err(TensorError::shape(
            op,
            "row_weights",
            format!("{rows} entries (one per hidden row)"),
            &[w.len()],
        ));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(TensorError::invalid(
            op,
            format!("row weight at position {i} is {}", w[i]),
        ));
    }
    Ok(())
}

/// The CPU kernels' view of validated inputs (f32 slices of CPU tensors).
fn cpu_inputs<'a>(
    hidden: &'a Tensor,
    weight: &'a Tensor,
    dim: usize,
    targets: &'a [i64],
    row_weights: Option<&'a [f32]>,
    opts: &LinearXentOptions,
) -> Result<XentInputs<'a, f32>> {
    Ok(XentInputs {
        hidden: hidden.f32s(OP, "hidden")?,
        weight: weight.f32s(OP, "weight")?,
        dim,
        targets,
        row_weights,
        ignore_index: opts.ignore_index,
    })
}

/// The CUDA launchers' view of validated inputs (device tensors).
fn cuda_args<'a>(
    hidden: &'a Tensor,
    weight: &'a Tensor,
    dim: usize,
    vocab: usize,
    targets: &'a [i64],
    row_weights: Option<&'a [f32]>,
    opts: &LinearXentOptions,
    tiling: Tiling,
) -> cuda::linear_xent::XentArgs<'a> {
    cuda::linear_xent::XentArgs {
        hidden,
        weight,
        dim,
        vocab,
        targets,
        row_weights,
        ignore_index: opts.ignore_index,
        tiling,
    }
}

/// Loss of logits = hidden·weightᵀ against `targets`. hidden: [.., H]; weight: [V, H];
/// targets and optional `row_weights`: one per hidden row; f32 on the CPU,
/// f32 or bf16 (both the same) on CUDA, where `lse` is f32.
pub fn forward(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    row_weights: Option<&[f32]>,
    opts: &LinearXentOptions,
) -> Result<LinearXentOut> {
    let (rows, dim, vocab, tiling) = validate(hidden, weight, targets, row_weights, opts)?;
    match hidden.device() {
        Device::Cpu => {
            let mut lse = Tensor::zeros(&[rows], hidden.dtype(), Device::Cpu);
            let x = cpu_inputs(hidden, weight, dim, targets, row_weights, opts)?;
            let loss = cpu::linear_xent::forward(&x, tiling, lse.f32s_mut(OP, "lse")?);
            Ok(LinearXentOut { loss, lse })
        }
        Device::Cuda(_) => {
            let x = cuda_args(
                hidden,
                weight,
                dim,
                vocab,
                targets,
                row_weights,
                opts,
                tiling,
            );
            let (loss, lse) = cuda::linear_xent::forward(&x)?;
            Ok(LinearXentOut { loss, lse })
        }
    }
}

/// Returns d(dloss·loss)/d hidden; adds the head's gradient into `dweight`
/// when given (a frozen head passes `None`). `lse` is forward's.
pub fn backward(
    dloss: f32,
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    row_weights: Option<&[f32]>,
    lse: &Tensor,
    dweight: Option<&mut Tensor>,
    opts: &LinearXentOptions,
) -> Result<Tensor> {
    let (rows, dim, vocab, tiling) = validate(hidden, weight, targets, row_weights, opts)?;
    lse.expect_shape(OP, "lse", &[rows])?;
    crate::ops::same_device(OP, &[hidden, lse])?;
    if let Some(dw) = &dweight {
        dw.expect_shape(OP, "dweight", weight.shape())?;
        crate::ops::same_device(OP, &[hidden, dw])?;
    }
    match hidden.device() {
        Device::Cpu => {
            let mut dh = Tensor::zeros(hidden.shape(), hidden.dtype(), Device::Cpu);
            let dw = match dweight {
                Some(t) => Some(t.f32s_mut(OP, "dweight")?),
                None => None,
            };
            let x = cpu_inputs(hidden, weight, dim, targets, row_weights, opts)?;
            cpu::linear_xent::backward(
                &x,
                tiling,
                dloss,
                lse.f32s(OP, "lse")?,
                dh.f32s_mut(OP, "dhidden")?,
                dw,
            );
            Ok(dh)
        }
        Device::Cuda(_) => {
            let x = cuda_args(
                hidden,
                weight,
                dim,
                vocab,
                targets,
                row_weights,
                opts,
                tiling,
            );
            cuda::linear_xent::backward(&x, dloss, lse, dweight)
        }
    }
}

/// Loss and dL/d hidden (for dloss = 1; scale it for another) in one sweep of
/// the vocabulary, at the price of producing the gradients before the caller
/// knows dloss. With `dweight` (a trained head) dL/dW is added into it too.
///
/// Frozen head (`None`): 4·N·H·V FLOPs where `forward` + `backward` do
/// 6·N·H·V. Trained head on CUDA: 6·N·H·V where they do 8·N·H·V, holding
/// whole-vocabulary logit rows of as many rows as `row_chunk × vocab_tile`
/// floats allow (see `cuda::linear_xent::forward_backward_dw`), when that is
/// at least `cuda::linear_xent::SWEEP_MIN_ROWS` rows (or all of them);
/// otherwise, and on the CPU (the reference), `forward` then `backward`.
pub fn forward_backward(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    row_weights: Option<&[f32]>,
    dweight: Option<&mut Tensor>,
    opts: &LinearXentOptions,
) -> Result<(LinearXentOut, Tensor)> {
    let (rows, dim, vocab, tiling) = validate(hidden, weight, targets, row_weights, opts)?;
    // The CUDA launchers' view (references only: free to build for the CPU too).
    let cx = cuda_args(
        hidden,
        weight,
        dim,
        vocab,
        targets,
        row_weights,
        opts,
        tiling,
    );
    if let Some(dw) = dweight {
        dw.expect_shape(OP, "dweight", weight.shape())?;
        crate::ops::same_device(OP, &[hidden, dw])?;
        let sweep = matches!(hidden.device(), Device::Cuda(_))
            && cuda::linear_xent::sweep_pays(tiling, rows, vocab);
        return match hidden.device() {
            Device::Cuda(_) if sweep => {
                let (loss, lse, dh) = cuda::linear_xent::forward_backward_dw(&cx, dw)?;
                Ok((LinearXentOut { loss, lse }, dh))
            }
            _ => {
                let out = forward(hidden, weight, targets, row_weights, opts)?;
                let dh = backward(
                    1.0,
                    hidden,
                    weight,
                    targets,
                    row_weights,
                    &out.lse,
                    Some(dw),
                    opts,
                )?;
                Ok((out, dh))
            }
        };
    }
    match hidden.device() {
        Device::Cpu => {
            let mut lse = Tensor::zeros(&[rows], hidden.dtype(), Device::Cpu);
            let mut dh = Tensor::zeros(hidden.shape(), hidden.dtype(), Device::Cpu);
            let x = cpu_inputs(hidden, weight, dim, targets, row_weights, opts)?;
            let loss = cpu::linear_xent::forward_backward(
                &x,
                tiling,
                lse.f32s_mut(OP, "lse")?,
                dh.f32s_mut(OP, "dhidden")?,
            );
            Ok((LinearXentOut { loss, lse }, dh))
        }
        Device::Cuda(_) => {
            let (loss, lse, dh) = cuda::linear_xent::forward_backward(&cx)?;
            Ok((LinearXentOut { loss, lse }, dh))
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
    opts: &LinearXentOptions,
) -> usize {
    let tiling = Tiling::at_least_one(opts.row_chunk, opts.vocab_tile);
    match device {
        Device::Cpu => cpu::linear_xent::workspace_bytes(rows, dim, vocab, tiling),
        Device::Cuda(_) => cuda::linear_xent::workspace_bytes(rows, dim, vocab, tiling),
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
    fn rejects_bad_shapes_and_targets() {
        let (h, w) = (zeros(&[2, 3, 4]), zeros(&[10, 4]));
        let o = LinearXentOptions::default();
        let e = err(forward(&h, &zeros(&[10, 5]), &[0; 6], None, &o));
        assert!(
            e.contains("linear_xent") && e.contains("weight") && e.contains("[V >= 1, 4]"),
            "{e}"
        );
        let e = err(forward(&h, &w, &[0; 5], None, &o));
        assert!(e.contains("targets") && e.contains("6 entries"), "{e}");
        let e = err(forward(&h, &w, &[0, 1, -100, 10, 2, 3], None, &o));
        assert!(e.contains("target 10 at position 3"), "{e}");
        let e = err(forward(&h, &w, &[0, 1, 2, -1, 2, 3], None, &o));
        assert!(e.contains("target -1 at position 3"), "{e}");
        let e = err(forward(&h, &w, &[0; 6], Some(&[1.0; 5]), &o));
        assert!(e.contains("row_weights"), "{e}");
        let e = err(forward(
            &h,
            &w,
            &[0; 6],
            Some(&[1.0, f32::NAN, 1., 1., 1., 1.]),
            &o,
        ));
        assert!(e.contains("position 1"), "{e}");
        let tiny = LinearXentOptions { vocab_tile: 0, ..o };
        assert!(err(forward(&h, &w, &[0; 6], None, &tiny)).contains("vocab_tile"));
        let bf = h.to_dtype(DType::BF16);
        assert!(err(forward(&bf, &w, &[0; 6], None, &o)).contains("BF16"));
    }

    #[test]
    fn backward_rejects_mismatched_lse_and_dweight() {
        let (h, w) = (zeros(&[6, 4]), zeros(&[10, 4]));
        let o = LinearXentOptions::default();
        let lse = forward(&h, &w, &[0; 6], None, &o).unwrap().lse;
        let e = err(backward(1.0, &h, &w, &[0; 6], None, &zeros(&[5]), None, &o));
        assert!(e.contains("lse"), "{e}");
        let mut dw = zeros(&[10, 5]);
        let e = err(backward(
            1.0,
            &h,
            &w,
            &[0; 6],
            None,
            &lse,
            Some(&mut dw),
            &o,
        ));
        assert!(e.contains("dweight"), "{e}");
    }

    #[test]
    fn custom_ignore_index_and_leading_dims() {
        // Uniform logits (zero head): each counted row's loss is ln V.
        let (h, w) = (zeros(&[2, 2, 3]), zeros(&[7, 3]));
        let o = LinearXentOptions {
            ignore_index: 6,
            row_chunk: 1,
            vocab_tile: 2,
        };
        let out = forward(&h, &w, &[6, 1, 6, 0], None, &o).unwrap();
        assert!((out.loss - 7f64.ln()).abs() < 1e-6, "{}", out.loss);
        assert_eq!(out.lse.shape(), &[4]);
        let e = err(forward(&h, &w, &[-100, 1, 6, 0], None, &o));
        assert!(e.contains("target -100 at position 0"), "{e}");
        let mut dw = zeros(&[7, 3]);
        let dh = backward(
            1.0,
            &h,
            &w,
            &[6, 1, 6, 0],
            None,
            &out.lse,
            Some(&mut dw),
            &o,
        )
        .unwrap();
        assert_eq!(dh.shape(), &[2, 2, 3]);
    }
}
