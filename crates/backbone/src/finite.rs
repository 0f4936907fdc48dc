//! Refusing NaN and infinite values in loaded weights. A checkpoint with
//! one NaN (a diverged fine-tune, a bad conversion) would otherwise load
//! fine and turn every output it touches into NaN, far from the cause. The
//! check is one read of each tensor as it is loaded, next to the copy out
//! of the file that loading already does.

use std::path::Path;

use half::{bf16, f16};
use llm2comp_tensor::{DType, Tensor};

use crate::{BackboneError, Result};

/// Index and value of the first non-finite element of a host tensor, if
/// any (`None` for a tensor not on the host: nothing loaded from a file is).
pub fn first_non_finite(t: &Tensor) -> Option<(usize, f32)> {
    let find = |it: &mut dyn Iterator<Item = f32>| it.enumerate().find(|(_, x)| !x.is_finite());
    match t.dtype() {
        DType::F32 => find(&mut t.as_slice::<f32>().ok()?.iter().copied()),
        DType::BF16 => find(&mut t.as_slice::<bf16>().ok()?.iter().map(|x| x.to_f32())),
        DType::F16 => find(&mut t.as_slice::<f16>().ok()?.iter().map(|x| x.to_f32())),
    }
}

/// Errors naming `name` and `file` when `t` holds NaN or an infinity.
pub fn check_finite(t: &Tensor, name: &str, file: &Path) -> Result<()> {
    match first_non_finite(t) {
        None => Ok(()),
        Some((i, x)) => Err(BackboneError::Invalid {
            path: file.to_path_buf(),
            msg: format!(
                "tensor `{name}` holds {x} at element {i} (shape {:?}); a diverged or corrupt \
                 checkpoint?",
                t.shape()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_non_finite_element_in_every_dtype() {
        let t = Tensor::from_vec(vec![1.0, 2.0, f32::NAN, f32::INFINITY], &[2, 2]).unwrap();
        assert_eq!(first_non_finite(&t).map(|p| p.0), Some(2));
        for dt in [DType::BF16, DType::F16] {
            let n = t.to_dtype(dt);
            assert_eq!(first_non_finite(&n).map(|p| p.0), Some(2), "{dt:?}");
        }
        let ok = Tensor::from_vec(vec![f32::MAX, -0.0, 1e-45], &[3]).unwrap();
        assert_eq!(first_non_finite(&ok), None);
        let inf = Tensor::from_vec(vec![0.0, f32::NEG_INFINITY], &[2]).unwrap();
        let e = check_finite(&inf, "w", Path::new("m.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("tensor `w` holds -inf at element 1"),
            "{e}"
        );
    }
}
