//! Linear layers (Llama's projections), and the bias broadcast some
//! architectures add after them (Qwen2's q/k/v). Kernels: `cpu/matmul.rs`.
//!
//! W is stored [out, in] as PyTorch stores `nn.Linear`, so checkpoints load
//! without a transpose. Every leading dimension of x is flattened into rows:
//! a [batch, seq, in] activation is one [batch·seq, in] GEMM, the shape that
//! keeps the GEMM large enough to pay for its packing.
//!
//! dtypes: CPU tensors are f32. On CUDA, x, w and dy share one dtype (bf16 or
//! f32; cuBLAS accumulates in f32), and dW may be f32 while they are bf16, so a
//! bf16 model can keep f32 gradient accumulators.

use crate::cuda::matmul::{Gemm, gemm};
use crate::{DType, Device, Result, Tensor, TensorError, cpu};

const OP: &str = "linear";

/// `[out, in]` of a weight-shaped tensor (`what`: weight or dweight), checking rank.
fn weight_dims(w: &Tensor, what: &'static str) -> Result<(usize, usize)> {
    w.dims2(OP, what)
}

/// Checks the operands' dtypes: f32 on the CPU; on CUDA the first tensor's
/// dtype (bf16 or f32) shared by the rest.
fn check_dtypes(ts: &[(&'static str, &Tensor)]) -> Result<DType> {
    let (_, first) = ts[0];
    let want = match (first.device(), first.dtype()) {
        (Device::Cuda(_), d @ (DType::BF16 | DType::F32)) => d,
        _ => DType::F32,
    };
    for (what, t) in ts {
        t.expect_dtype(OP, what, want)?;
    }
    Ok(want)
}

/// Splits `[.., last]` into (product of leading dims, last), requiring `last == want`.
fn rows_of(t: &Tensor, what: &'static str, want: usize) -> Result<usize> {
    match t.shape().split_last() {
        Some((&last, lead)) if last == want => Ok(lead.iter().product()),
        _ => Err(TensorError::shape(
            OP,
            what,
            format!("[.., {want}]"),
            t.shape(),
        )),
    }
}

/// The shape `t` gets when its last dimension becomes `last`.
fn with_last(t: &Tensor, last: usize) -> Vec<usize> {
    let mut s = t.shape().to_vec();
    if let Some(l) = s.last_mut() {
        *l = last;
    }
    s
}

/// y = x·Wᵀ. x: [.., in]; w: [out, in]; returns [.., out]. f32.
pub fn linear_forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_forward_scaled(x, w, 1.0)
}

/// Multiplies every element of a CPU f32 result by `alpha` (after the
/// product, as the CUDA GEMM's alpha does) unless alpha is 1.
fn scale_host(t: &mut Tensor, alpha: f32, what: &'static str) -> Result<()> {
    if alpha != 1.0 {
        for v in t.f32s_mut(OP, what)? {
            *v *= alpha;
        }
    }
    Ok(())
}

/// y = alpha·x·Wᵀ: [`linear_forward`] with the scale folded into the GEMM
/// on CUDA (a LoRA side path's alpha/r), applied after it on the CPU.
pub fn linear_forward_scaled(x: &Tensor, w: &Tensor, alpha: f32) -> Result<Tensor> {
    let (d_out, d_in) = weight_dims(w, "weight [out, in]")?;
    let rows = rows_of(x, "x", d_in)?;
    crate::ops::same_device(OP, &[x, w])?;
    let dtype = check_dtypes(&[("x", x), ("weight", w)])?;
    match x.device() {
        Device::Cpu => {
            let mut y = Tensor::zeros(&with_last(x, d_out), x.dtype(), Device::Cpu);
            cpu::matmul::x_wt(
                x.f32s(OP, "x")?,
                w.f32s(OP, "weight")?,
                y.f32s_mut(OP, "y")?,
                rows,
                d_in,
                d_out,
                false,
            );
            scale_host(&mut y, alpha, "y")?;
            Ok(y)
        }
        Device::Cuda(_) => {
            let y = Tensor::empty(&with_last(x, d_out), dtype, x.device())?;
            let g = Gemm {
                m: rows,
                n: d_out,
                k: d_in,
                a: x.cuda_ptr(OP, "x")?,
                a_t: false,
                b: w.cuda_ptr(OP, "weight")?,
                b_t: true,
                c: y.cuda_ptr(OP, "y")?,
                alpha,
                beta: 0.0,
                ab: dtype,
                c_dtype: dtype,
            };
            gemm(&*x.cuda_device(OP, "x")?, &g)?;
            Ok(y)
        }
    }
}

/// dx = dy·W. dy: [.., out]; w: [out, in]; returns [.., in]. f32.
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_backward_input_scaled(dy, w, 1.0)
}

/// dx = alpha·dy·W, scaled as [`linear_forward_scaled`].
pub fn linear_backward_input_scaled(dy: &Tensor, w: &Tensor, alpha: f32) -> Result<Tensor> {
    let (d_out, d_in) = weight_dims(w, "weight [out, in]")?;
    let rows = rows_of(dy, "dy", d_out)?;
    crate::ops::same_device(OP, &[dy, w])?;
    let dtype = check_dtypes(&[("dy", dy), ("weight", w)])?;
    match dy.device() {
        Device::Cpu => {
            let mut dx = Tensor::zeros(&with_last(dy, d_in), dy.dtype(), Device::Cpu);
            cpu::matmul::dy_w(
                dy.f32s(OP, "dy")?,
                w.f32s(OP, "weight")?,
                dx.f32s_mut(OP, "dx")?,
                rows,
                d_out,
                d_in,
                false,
            );
            scale_host(&mut dx, alpha, "dx")?;
            Ok(dx)
        }
        Device::Cuda(_) => {
            let dx = Tensor::empty(&with_last(dy, d_in), dtype, dy.device())?;
            let g = Gemm {
                m: rows,
                n: d_in,
                k: d_out,
                a: dy.cuda_ptr(OP, "dy")?,
                a_t: false,
                b: w.cuda_ptr(OP, "weight")?,
                b_t: false,
                c: dx.cuda_ptr(OP, "dx")?,
                alpha,
                beta: 0.0,
                ab: dtype,
                c_dtype: dtype,
            };
            gemm(&*dy.cuda_device(OP, "dy")?, &g)?;
            Ok(dx)
        }
    }
}

/// dw += dyᵀ·x. dy: [.., out]; x: [.., in] with dy's leading dims; dw: [out, in]. f32.
pub fn linear_backward_weight(dy: &Tensor, x: &Tensor, dw: &mut Tensor) -> Result<()> {
    let (d_out, d_in) = weight_dims(dw, "dweight [out, in]")?;
    let rows = rows_of(x, "x", d_in)?;
    dy.expect_shape(OP, "dy", &with_last(x, d_out))?;
    crate::ops::same_device(OP, &[dy, x, dw])?;
    let dtype = check_dtypes(&[("dy", dy), ("x", x)])?;
    if dw.dtype() != DType::F32 {
        dw.expect_dtype(OP, "dweight", dtype)?;
    }
    match dy.device() {
        Device::Cpu => {
            cpu::matmul::dyt_x(
                dy.f32s(OP, "dy")?,
                x.f32s(OP, "x")?,
                dw.f32s_mut(OP, "dweight")?,
                rows,
                d_out,
                d_in,
            );
            Ok(())
        }
        Device::Cuda(_) => {
            let g = Gemm {
                m: d_out,
                n: d_in,
                k: rows,
                a: dy.cuda_ptr(OP, "dy")?,
                a_t: true,
                b: x.cuda_ptr(OP, "x")?,
                b_t: false,
                c: dw.cuda_ptr(OP, "dweight")?,
                alpha: 1.0,
                beta: 1.0,
                ab: dtype,
                c_dtype: dw.dtype(),
            };
            gemm(&*dy.cuda_device(OP, "dy")?, &g)
        }
    }
}

/// y[r, :] += bias for every row of y: [.., out]; bias: [out], y's dtype and device.
/// On CUDA this is a rank-1 GEMM, y += ones[rows, 1]·bias[1, out] with beta 1
/// (cuBLAS, f32 accumulation, one rounding per element), so no kernel of its
/// own is needed; the ones column costs one small upload per call.
pub fn add_bias(y: &mut Tensor, bias: &Tensor) -> Result<()> {
    const OP: &str = "add_bias";
    let d_out = match bias.shape() {
        [n] => *n,
        _ => return Err(TensorError::shape(OP, "bias", "rank 1", bias.shape())),
    };
    let rows = match y.shape().split_last() {
        Some((&last, lead)) if last == d_out => lead.iter().product::<usize>(),
        _ => {
            return Err(TensorError::shape(
                OP,
                "y",
                format!("[.., {d_out}] (the bias length)"),
                y.shape(),
            ));
        }
    };
    crate::ops::same_device(OP, &[y, bias])?;
    bias.expect_dtype(OP, "bias", y.dtype())?;
    match y.device() {
        Device::Cpu => {
            let b = bias.f32s(OP, "bias")?;
            cpu::matmul::add_bias(y.f32s_mut(OP, "y")?, b);
            Ok(())
        }
        Device::Cuda(_) => {
            let dtype = match y.dtype() {
                d @ (DType::F32 | DType::BF16) => d,
                found => {
                    return Err(TensorError::invalid(
                        OP,
                        format!("y is {found}; the CUDA path takes f32 or bf16"),
                    ));
                }
            };
            if rows == 0 || d_out == 0 {
                return Ok(());
            }
            let dev = y.cuda_device(OP, "y")?;
            let ones = match dtype {
                DType::BF16 => dev.upload(&vec![half::bf16::ONE; rows])?,
                _ => dev.upload(&vec![1.0f32; rows])?,
            };
            let g = Gemm {
                m: rows,
                n: d_out,
                k: 1,
                a: ones.ptr(),
                a_t: false,
                b: bias.cuda_ptr(OP, "bias")?,
                b_t: false,
                c: y.cuda_ptr(OP, "y")?,
                alpha: 1.0,
                beta: 1.0,
                ab: dtype,
                c_dtype: dtype,
            };
            gemm(&dev, &g)?;
            // `ones` returns to the cache here; stream order keeps the GEMM's reads first.
            drop(ones);
            Ok(())
        }
    }
}

/// The whole backward: returns dx and adds dW into `dweight` when given (`None` for a frozen weight).
pub fn backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dweight: Option<&mut Tensor>,
) -> Result<Tensor> {
    let (d_out, d_in) = weight_dims(w, "weight [out, in]")?;
    rows_of(x, "x", d_in)?;
    dy.expect_shape(OP, "dy", &with_last(x, d_out))?;
    if let Some(dw) = &dweight {
        dw.expect_shape(OP, "dweight", w.shape())?;
    }
    let dx = linear_backward_input(dy, w)?;
    if let Some(dw) = dweight {
        linear_backward_weight(dy, x, dw)?;
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::testing::{assert_close, rng, uniform};

    fn t(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(uniform::<f32>(&mut rng(seed), n, 1.0), shape).unwrap()
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn leading_dims_flatten_into_rows() {
        let (b, s, d_in, d_out) = (2, 3, 5, 4);
        let x = rand_t(&[b, s, d_in], 1);
        let w = rand_t(&[d_out, d_in], 2);
        let y = linear_forward(&x, &w).unwrap();
        assert_eq!(y.shape(), &[b, s, d_out]);
        let (xv, wv) = (x.to_vec_f32(), w.to_vec_f32());
        let want: Vec<f32> = (0..b * s * d_out)
            .map(|i| {
                let (r, o) = (i / d_out, i % d_out);
                (0..d_in)
                    .map(|k| xv[r * d_in + k] as f64 * wv[o * d_in + k] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        assert_close("linear forward", &y.to_vec_f32(), &want, 1e-6);

        let dy = rand_t(&[b, s, d_out], 3);
        let mut dw = t(&[d_out, d_in]);
        let dx = backward(&dy, &x, &w, Some(&mut dw)).unwrap();
        assert_eq!(dx.shape(), x.shape());
        let dyv = dy.to_vec_f32();
        let want_dw: Vec<f32> = (0..d_out * d_in)
            .map(|i| {
                let (o, k) = (i / d_in, i % d_in);
                (0..b * s)
                    .map(|r| dyv[r * d_out + o] as f64 * xv[r * d_in + k] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        assert_close("linear dw", &dw.to_vec_f32(), &want_dw, 1e-6);
        // A second call accumulates.
        linear_backward_weight(&dy, &x, &mut dw).unwrap();
        let twice: Vec<f32> = want_dw.iter().map(|v| 2.0 * v).collect();
        assert_close("linear dw accumulates", &dw.to_vec_f32(), &twice, 1e-6);
    }

    #[test]
    fn scaled_forms_are_the_product_times_alpha() {
        let x =
            Tensor::from_vec((0..12).map(|i| i as f32 * 0.25 - 1.0).collect(), &[3, 4]).unwrap();
        let w =
            Tensor::from_vec((0..8).map(|i| 0.5 - i as f32 * 0.125).collect(), &[2, 4]).unwrap();
        let dy = Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0, -1.5, 0.25], &[3, 2]).unwrap();
        let y = linear_forward(&x, &w).unwrap().to_vec_f32();
        let ys = linear_forward_scaled(&x, &w, -1.5).unwrap().to_vec_f32();
        assert_eq!(ys, y.iter().map(|v| v * -1.5).collect::<Vec<_>>());
        let dx = linear_backward_input(&dy, &w).unwrap().to_vec_f32();
        let dxs = linear_backward_input_scaled(&dy, &w, 3.0)
            .unwrap()
            .to_vec_f32();
        assert_eq!(dxs, dx.iter().map(|v| v * 3.0).collect::<Vec<_>>());
        assert_ne!(ys, y, "alpha applied");
    }

    #[test]
    fn forward_rejects_bad_shapes_and_dtypes() {
        let e = err_text(linear_forward(&t(&[3, 5]), &t(&[4, 6])));
        assert!(
            e.contains("linear") && e.contains("x") && e.contains("[.., 6]"),
            "{e}"
        );
        let e = err_text(linear_forward(&t(&[3, 5]), &t(&[4, 5, 1])));
        assert!(e.contains("weight") && e.contains("rank 2"), "{e}");
        let e = err_text(linear_forward(&t(&[]), &t(&[4, 5])));
        assert!(e.contains("x") && e.contains("[]"), "{e}");
        let w16 = Tensor::zeros(&[4, 5], DType::BF16, Device::Cpu);
        let e = err_text(linear_forward(&t(&[3, 5]), &w16));
        assert!(e.contains("weight") && e.contains("BF16"), "{e}");
        let x16 = Tensor::zeros(&[3, 5], DType::F16, Device::Cpu);
        let e = err_text(linear_forward(&x16, &t(&[4, 5])));
        assert!(e.contains("x") && e.contains("F16"), "{e}");
    }

    #[test]
    fn backward_rejects_bad_shapes() {
        let w = t(&[4, 5]);
        let e = err_text(linear_backward_input(&t(&[3, 5]), &w));
        assert!(e.contains("dy") && e.contains("[.., 4]"), "{e}");
        let e = err_text(linear_backward_weight(
            &t(&[3, 4]),
            &t(&[2, 5]),
            &mut t(&[4, 5]),
        ));
        assert!(e.contains("dy") && e.contains("[2, 4]"), "{e}");
        let e = err_text(linear_backward_weight(
            &t(&[3, 4]),
            &t(&[3, 5]),
            &mut t(&[4, 6]),
        ));
        assert!(e.contains("x") && e.contains("[.., 6]"), "{e}");
        let e = err_text(linear_backward_weight(
            &t(&[3, 4]),
            &t(&[3, 5]),
            &mut t(&[20]),
        ));
        assert!(e.contains("weight") && e.contains("rank 2"), "{e}");
        let e = err_text(backward(
            &t(&[3, 4]),
            &t(&[3, 5]),
            &w,
            Some(&mut t(&[5, 4])),
        ));
        assert!(e.contains("dweight") && e.contains("[4, 5]"), "{e}");
        let e = err_text(backward(&t(&[2, 3, 4]), &t(&[3, 2, 5]), &w, None));
        assert!(e.contains("dy") && e.contains("[3, 2, 4]"), "{e}");
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        let y = linear_forward(&t(&[3, 0]), &t(&[4, 0])).unwrap();
        assert_eq!(y.shape(), &[3, 4]);
        assert!(y.to_vec_f32().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn add_bias_checks_shapes_and_dtypes_then_adds_per_row() {
        let mut y = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 1, 3]).unwrap();
        let b = Tensor::from_vec(vec![0.5f32, -1.0, 2.0], &[3]).unwrap();
        add_bias(&mut y, &b).unwrap();
        assert_eq!(y.to_vec_f32(), [1.5, 1.0, 5.0, 4.5, 4.0, 8.0]);
        let e = err_text(add_bias(&mut t(&[2, 4]), &b));
        assert!(
            e.contains("add_bias") && e.contains("y") && e.contains("[.., 3]"),
            "{e}"
        );
        let e = err_text(add_bias(&mut t(&[2, 3]), &t(&[1, 3])));
        assert!(e.contains("bias") && e.contains("rank 1"), "{e}");
        let bf = Tensor::zeros(&[3], DType::BF16, Device::Cpu);
        let e = err_text(add_bias(&mut t(&[2, 3]), &bf));
        assert!(e.contains("bias") && e.contains("BF16"), "{e}");
    }
}
