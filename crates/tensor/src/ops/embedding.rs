//! Token embedding lookup. Kernels: `cpu/embedding.rs`, `cuda/embedding.rs`.
//!
//! Token ids are host data (`&[u32]`): the tokenizer produces them on the
//! host and every id is range-checked here, before any backend indexes with
//! it, so a bad id is an error naming it rather than an out-of-bounds read.
//! The table gradient has two forms: dense (added into a [V, H] buffer) and
//! sparse (only the looked-up rows), for trainers that train a few rows.

use crate::{DType, Device, Result, Tensor, TensorError, cpu, cuda};

const OP: &str = "embedding";

/// The gradient of the looked-up rows only: row `rows[u]` of the table gets `grad[u]`.
#[derive(Debug, Clone)]
pub struct SparseRowGrad {
    /// Distinct ids that were looked up, ascending.
    pub rows: Vec<u32>,
    /// Their gradients: [rows.len(), H].
    pub grad: Tensor,
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match cpu::embedding::find_out_of_range(ids, vocab) {
        None => Ok(()),
        Some((pos, id)) => Err(TensorError::invalid(
            OP,
            format!("token id {id} at position {pos} is out of range for vocabulary size {vocab}"),
        )),
    }
}

/// Checks dout is [ids.len(), hidden] (its dtype is the backend's to check: f32 on the
/// CPU, f32 or bf16 on CUDA).
fn check_dout(ids: &[u32], dout: &Tensor, hidden: usize) -> Result<()> {
    dout.expect_shape(OP, "dout", &[ids.len(), hidden])
}

/// out[p] = table[ids[p]]. table: [V, H] (f32; f32 or bf16 on CUDA); returns [ids.len(), H]
/// of the table's dtype.
pub fn forward(ids: &[u32], table: &Tensor) -> Result<Tensor> {
    let (vocab, hidden) = table.dims2(OP, "table [V, H]")?;
    check_ids(ids, vocab)?;
    match table.device() {
        Device::Cpu => {
            let mut out = Tensor::zeros(&[ids.len(), hidden], table.dtype(), Device::Cpu);
            cpu::embedding::forward(
                ids,
                table.f32s(OP, "table")?,
                hidden,
                out.f32s_mut(OP, "out")?,
            );
            Ok(out)
        }
        Device::Cuda(_) => cuda::embedding::forward(ids, table, hidden),
    }
}

/// dtable[ids[p]] += dout[p]; rows no id names are left untouched. dout: [ids.len(), H]
/// (f32; f32 or bf16 on CUDA); dtable: [V, H] f32. (There is no input gradient, so a
/// frozen table simply skips this call.)
pub fn backward(ids: &[u32], dout: &Tensor, dtable: &mut Tensor) -> Result<()> {
    let (vocab, hidden) = dtable.dims2(OP, "dtable [V, H]")?;
    dtable.expect_dtype(OP, "dtable", DType::F32)?;
    check_dout(ids, dout, hidden)?;
    check_ids(ids, vocab)?;
    crate::ops::same_device(OP, &[dout, dtable])?;
    match dout.device() {
        Device::Cpu => {
            cpu::embedding::backward(
                ids,
                dout.f32s(OP, "dout")?,
                hidden,
                dtable.f32s_mut(OP, "dtable")?,
            );
            Ok(())
        }
        Device::Cuda(_) => cuda::embedding::backward(ids, dout, hidden, dtable),
    }
}

/// The table gradient of the looked-up rows only, never allocating [V, H].
/// `vocab` is the table's row count, for the range check. dout: [ids.len(), H]
/// (f32; f32 or bf16 on CUDA); the gradient is f32 on dout's device.
pub fn backward_sparse(ids: &[u32], dout: &Tensor, vocab: usize) -> Result<SparseRowGrad> {
    let hidden = match dout.shape() {
        [n, h] if *n == ids.len() => *h,
        _ => {
            return Err(TensorError::shape(
                OP,
                "dout",
                format!("[{}, H]", ids.len()),
                dout.shape(),
            ));
        }
    };
    check_dout(ids, dout, hidden)?;
    check_ids(ids, vocab)?;
    match dout.device() {
        Device::Cpu => {
            let (rows, grad) = cpu::embedding::backward_sparse(ids, dout.f32s(OP, "dout")?, hidden);
            let grad = Tensor::from_vec(grad, &[rows.len(), hidden])?;
            Ok(SparseRowGrad { rows, grad })
        }
        Device::Cuda(_) => {
            let (rows, grad) = cuda::embedding::backward_sparse(ids, dout, hidden)?;
            Ok(SparseRowGrad { rows, grad })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    #[test]
    fn out_of_range_id_names_id_position_and_vocab() {
        let e = forward(&[1, 2, 7, 9], &t(&[7, 3])).unwrap_err().to_string();
        assert!(
            e.contains("embedding")
                && e.contains("id 7")
                && e.contains("position 2")
                && e.contains("size 7"),
            "{e}"
        );
        let e = backward(&[0, 8], &t(&[2, 3]), &mut t(&[7, 3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("id 8") && e.contains("position 1"), "{e}");
        let e = backward_sparse(&[9], &t(&[1, 3]), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("id 9") && e.contains("position 0"), "{e}");
    }

    #[test]
    fn rejects_bad_shapes_and_dtypes() {
        let e = forward(&[0], &t(&[7])).unwrap_err().to_string();
        assert!(e.contains("table") && e.contains("rank 2"), "{e}");
        let bf = Tensor::zeros(&[7, 3], DType::BF16, Device::Cpu);
        let e = forward(&[0], &bf).unwrap_err().to_string();
        assert!(e.contains("table") && e.contains("BF16"), "{e}");
        let e = backward(&[0, 1], &t(&[3, 3]), &mut t(&[7, 3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dout") && e.contains("[2, 3]"), "{e}");
        let e = backward(&[0, 1], &t(&[2, 3]), &mut t(&[7, 4]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dout") && e.contains("[2, 4]"), "{e}");
        let e = backward_sparse(&[0, 1], &t(&[3, 3]), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dout") && e.contains("[2, H]"), "{e}");
    }

    #[test]
    fn round_trip_through_tensors() {
        let table = Tensor::from_vec((0..12).map(|v| v as f32).collect(), &[4, 3]).unwrap();
        let out = forward(&[3, 0, 3], &table).unwrap();
        assert_eq!(out.shape(), &[3, 3]);
        assert_eq!(
            out.to_vec_f32(),
            vec![9., 10., 11., 0., 1., 2., 9., 10., 11.]
        );
        let mut dt = t(&[4, 3]);
        backward(&[3, 0, 3], &out, &mut dt).unwrap();
        let s = backward_sparse(&[3, 0, 3], &out, 4).unwrap();
        assert_eq!(s.rows, vec![0, 3]);
        assert_eq!(s.grad.to_vec_f32(), vec![0., 1., 2., 18., 20., 22.]);
        assert_eq!(&dt.to_vec_f32()[9..], &[18., 20., 22.]);
    }
}
