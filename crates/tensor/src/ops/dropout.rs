//! Dropout with a reproducible counter-based mask. Kernels: `cpu/dropout.rs`,
//! `cuda/dropout.rs` (the same hash: both backends drop the same elements).
//! f32 on the CPU; f32 or bf16 on CUDA.
//!
//! A mask is one stream over the whole tensor, or, with [`SeqKeys`], one
//! stream per packed sequence: then a sequence's mask depends on its key and
//! its own rows only, not on what else shares the call. That is what lets a
//! trainer pack many texts into one forward call and still give each text the
//! same mask however the batch is split (GradCache's re-run must see the
//! masks of the first pass). Per-sequence streams run on both devices for this
//! elementwise op (on CUDA one launch per sequence); attention's dropout takes
//! them on the CPU only so far.

use crate::{Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::shared::dropout::{DropoutMask, SeqKeys};

const OP: &str = "dropout";

fn check(x: &Tensor, mask: &DropoutMask) -> Result<()> {
    if !(0.0..1.0).contains(&mask.p) {
        return Err(TensorError::invalid(
            OP,
            format!("drop probability must be in [0, 1), got {}", mask.p),
        ));
    }
    if let Some(k) = &mask.keys {
        let rows = k.rows();
        if x.shape().first() != Some(&rows) {
            return Err(TensorError::invalid(
                OP,
                format!(
                    "per-sequence keys cover {rows} rows but the tensor has shape {:?}",
                    x.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// Applies `mask` on CUDA: one stream, or one per sequence's rows.
fn cuda_apply(src: &Tensor, mask: &DropoutMask, what: &'static str) -> Result<Tensor> {
    match &mask.keys {
        None => cuda::dropout::apply(src, mask.p, mask.seed, mask.offset, what),
        Some(k) => cuda::dropout::apply_keyed(src, mask.p, mask.seed, mask.offset, k, what),
    }
}

/// Applies `mask` on the CPU: one stream, or one per sequence's rows.
fn cpu_apply(src: &Tensor, mask: &DropoutMask, what: &'static str) -> Result<Tensor> {
    let mut dst = Tensor::zeros(src.shape(), src.dtype(), Device::Cpu);
    let (x, y) = (src.f32s(OP, what)?, dst.f32s_mut(OP, "out")?);
    match &mask.keys {
        None => cpu::dropout::forward(x, mask.p, mask.seed, mask.offset, y),
        Some(k) => {
            let width = x.len() / k.rows().max(1);
            for (s, w) in k.cu_seqlens().windows(2).enumerate() {
                let r = w[0] as usize * width..w[1] as usize * width;
                let seed = k.seed(mask.seed, s);
                cpu::dropout::forward(&x[r.clone()], mask.p, seed, mask.offset, &mut y[r]);
            }
        }
    }
    Ok(dst)
}

/// y = x · mask / (1 − p).
pub fn forward(x: &Tensor, mask: &DropoutMask) -> Result<Tensor> {
    check(x, mask)?;
    match x.device() {
        Device::Cpu => cpu_apply(x, mask, "x"),
        Device::Cuda(_) => cuda_apply(x, mask, "x"),
    }
}

/// dx = dy · mask / (1 − p), with forward's mask regenerated, not stored.
pub fn backward(dy: &Tensor, mask: &DropoutMask) -> Result<Tensor> {
    check(dy, mask)?;
    match dy.device() {
        // The mask is its own backward: dx = dy · mask / (1 − p).
        Device::Cpu => cpu_apply(dy, mask, "dy"),
        Device::Cuda(_) => cuda_apply(dy, mask, "dy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rng, uniform};

    const W: usize = 5;

    fn t(x: &[f32]) -> Tensor {
        Tensor::from_vec(x.to_vec(), &[x.len() / W, W]).unwrap()
    }

    fn keyed(p: f32, cu: &[u32], keys: &[u64]) -> DropoutMask {
        DropoutMask::new(p, 9, 0).with_keys(Some(SeqKeys::new(cu, keys).unwrap()))
    }

    fn vals(x: &Tensor) -> Vec<f32> {
        x.f32s("test", "x").unwrap().to_vec()
    }

    #[test]
    fn a_keyed_sequence_drops_the_same_elements_whatever_is_packed_beside_it() {
        // Four sequences of 3, 0, 7 and 4 rows.
        let cu = [0, 3, 3, 10, 14];
        let x: Vec<f32> = uniform(&mut rng(1), 14 * W, 1.0);
        let y = vals(&forward(&t(&x), &keyed(0.4, &cu, &[11, 12, 13, 14])).unwrap());
        assert!(y.contains(&0.0) && y.iter().any(|&v| v != 0.0));
        // Sequence 2 alone, with its key: the same elements dropped.
        let alone = t(&x[3 * W..10 * W]);
        let y1 = vals(&forward(&alone, &keyed(0.4, &[0, 7], &[13])).unwrap());
        assert_eq!(y1, &y[3 * W..10 * W]);
        // Another key, another mask.
        assert_ne!(
            vals(&forward(&alone, &keyed(0.4, &[0, 7], &[14])).unwrap()),
            y1
        );
        // Backward applies forward's mask.
        let dx = vals(&backward(&t(&[1.0; 7 * W]), &keyed(0.4, &[0, 7], &[13])).unwrap());
        for (d, y) in dx.iter().zip(&y1) {
            assert_eq!(*d == 0.0, *y == 0.0);
        }
    }

    #[test]
    fn keys_that_do_not_fit_are_refused() {
        let x = t(&[1.0; 7 * W]);
        assert!(SeqKeys::new(&[0, 3, 7], &[1]).is_err());
        assert!(SeqKeys::new(&[1, 7], &[1]).is_err());
        let e = forward(&x, &keyed(0.1, &[0, 3], &[1])).unwrap_err();
        assert!(e.to_string().contains("cover 3 rows"), "{e}");
        assert!(forward(&x, &DropoutMask::new(1.0, 1, 0)).is_err());
    }
}
