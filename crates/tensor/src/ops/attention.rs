//! Attention over packed variable-length sequences (FlashAttention varlen
//! style). Kernels: `cpu/attention.rs`.
//!
//! `cu_seqlens` is a host slice: the batch packer builds it on the host, and
//! validating it here (monotone, ending at T) is what lets kernels index
//! without bounds surprises. The CUDA backend uploads it.

use crate::{DType, Device, Result, Tensor, TensorError, cpu, cuda};

pub use crate::shared::attention::{AttentionGrads, AttentionKernel, AttentionOpts, AttentionOut};

const OP: &str = "attention";

/// (T, Hq, Hkv, D) after checking q, k, v, cu_seqlens and opts agree.
fn check(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
) -> Result<(usize, usize, usize, usize)> {
    let (t, hq, d) = q.dims3(OP, "q")?;
    let (tk, hkv, dk) = k.dims3(OP, "k")?;
    if tk != t || dk != d {
        return Err(TensorError::shape(
            OP,
            "k",
            format!("[{t}, Hkv, {d}] (q's tokens and head_dim)"),
            k.shape(),
        ));
    }
    v.expect_shape(OP, "v", k.shape())?;
    if d == 0 || hq == 0 || hkv == 0 {
        return Err(TensorError::invalid(
            OP,
            format!("heads and head_dim must be > 0 (Hq {hq}, Hkv {hkv}, D {d})"),
        ));
    }
    if hq % hkv != 0 {
        return Err(TensorError::invalid(
            OP,
            format!("query heads {hq} are not a multiple of kv heads {hkv}"),
        ));
    }
    check_cu_seqlens(cu_seqlens, t)?;
    if !(opts.scale.is_finite() && opts.scale > 0.0) {
        return Err(TensorError::invalid(
            OP,
            format!("scale must be finite and > 0, got {}", opts.scale),
        ));
    }
    if let Some(m) = &opts.dropout {
        if let Some(k) = &m.keys
            && k.cu_seqlens() != cu_seqlens
        {
            return Err(TensorError::invalid(
                OP,
                "the dropout keys' cu_seqlens differ from the call's".to_string(),
            ));
        }
        if !(0.0..1.0).contains(&m.p) {
            return Err(TensorError::invalid(
                OP,
                format!("dropout probability must be in [0, 1), got {}", m.p),
            ));
        }
        // The mask index (h·T + i)·T + j must not wrap.
        if (hq as u64)
            .checked_mul(t as u64)
            .and_then(|x| x.checked_mul(t as u64))
            .is_none()
        {
            return Err(TensorError::invalid(
                OP,
                format!("{hq} heads x {t}² tokens overflow the dropout mask index"),
            ));
        }
    }
    crate::ops::same_device(OP, &[q, k, v])?;
    // CUDA takes bf16 or f32 (checked by its launcher); the CPU kernels f32.
    if q.device() == Device::Cpu {
        for (what, x) in [("q", q), ("k", k), ("v", v)] {
            x.expect_dtype(OP, what, DType::F32)?;
        }
    }
    Ok((t, hq, hkv, d))
}

fn check_cu_seqlens(cu: &[u32], tokens: usize) -> Result<()> {
    let bad = |msg: String| Err(TensorError::invalid(OP, format!("cu_seqlens: {msg}")));
    match (cu.first(), cu.last()) {
        (None, _) => return bad("empty; need B + 1 offsets starting at 0".into()),
        (Some(&first), _) if first != 0 => return bad(format!("starts at {first}, not 0")),
        (_, Some(&last)) if last as usize != tokens => {
            return bad(format!("ends at {last}, but q has {tokens} tokens"));
        }
        _ => {}
    }
    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
        return bad(format!(
            "decreases at index {}: {} after {}",
            i + 1,
            cu[i + 1],
            cu[i]
        ));
    }
    Ok(())
}

fn problem<'a>(
    cu_seqlens: &'a [u32],
    hq: usize,
    hkv: usize,
    d: usize,
    opts: &AttentionOpts,
) -> cpu::attention::Problem<'a> {
    cpu::attention::Problem {
        cu_seqlens,
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
        causal: opts.causal,
        scale: opts.scale as f64,
        dropout: opts.dropout.clone(),
    }
}

/// o = dropout(softmax(scale·q·kᵀ + mask))·v within each packed sequence.
/// q: [T, Hq, D]; k, v: [T, Hkv, D] with Hq a multiple of Hkv (GQA);
/// `cu_seqlens`: B + 1 non-decreasing token offsets from 0 to T.
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
) -> Result<AttentionOut> {
    forward_with(q, k, v, cu_seqlens, opts, AttentionKernel::Auto)
}

/// [`forward`] with an explicit CUDA kernel set (tests and benchmarks).
pub fn forward_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
    kernel: AttentionKernel,
) -> Result<AttentionOut> {
    let (t, hq, hkv, d) = check(q, k, v, cu_seqlens, opts)?;
    match q.device() {
        Device::Cuda(_) => {
            let dims = cuda::attention::Dims {
                tokens: t,
                q_heads: hq,
                kv_heads: hkv,
                head_dim: d,
            };
            cuda::attention::forward(q, k, v, cu_seqlens, opts, dims, kernel)
        }
        Device::Cpu => {
            let mut o = Tensor::zeros(q.shape(), DType::F32, Device::Cpu);
            let mut lse = Tensor::zeros(&[hq, t], DType::F32, Device::Cpu);
            cpu::attention::forward(
                &problem(cu_seqlens, hq, hkv, d, opts),
                q.f32s(OP, "q")?,
                k.f32s(OP, "k")?,
                v.f32s(OP, "v")?,
                o.f32s_mut(OP, "o")?,
                lse.f32s_mut(OP, "lse")?,
            );
            Ok(AttentionOut { o, lse })
        }
    }
}

/// dq, dk, dv from dout = ∂L/∂o, given forward's inputs, `o` and `lse` and
/// the same `cu_seqlens` and `opts` (the dropout mask is regenerated).
pub fn backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
) -> Result<AttentionGrads> {
    backward_with(
        dout,
        q,
        k,
        v,
        o,
        lse,
        cu_seqlens,
        opts,
        AttentionKernel::Auto,
    )
}

/// [`backward`] with an explicit CUDA kernel set (tests and benchmarks).
pub fn backward_with(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    cu_seqlens: &[u32],
    opts: &AttentionOpts,
    kernel: AttentionKernel,
) -> Result<AttentionGrads> {
    let (t, hq, hkv, d) = check(q, k, v, cu_seqlens, opts)?;
    dout.expect_shape(OP, "dout", q.shape())?;
    o.expect_shape(OP, "o", q.shape())?;
    lse.expect_shape(OP, "lse", &[hq, t])?;
    lse.expect_dtype(OP, "lse", DType::F32)?;
    crate::ops::same_device(OP, &[q, dout, o, lse])?;
    if q.device() == Device::Cpu {
        for (what, x) in [("dout", dout), ("o", o)] {
            x.expect_dtype(OP, what, DType::F32)?;
        }
    }
    match q.device() {
        Device::Cuda(_) => {
            let dims = cuda::attention::Dims {
                tokens: t,
                q_heads: hq,
                kv_heads: hkv,
                head_dim: d,
            };
            cuda::attention::backward(dout, q, k, v, o, lse, cu_seqlens, opts, dims, kernel)
        }
        Device::Cpu => {
            let mut dq = Tensor::zeros(q.shape(), DType::F32, Device::Cpu);
            let mut dk = Tensor::zeros(k.shape(), DType::F32, Device::Cpu);
            let mut dv = Tensor::zeros(v.shape(), DType::F32, Device::Cpu);
            cpu::attention::backward(
                &problem(cu_seqlens, hq, hkv, d, opts),
                dout.f32s(OP, "dout")?,
                q.f32s(OP, "q")?,
                k.f32s(OP, "k")?,
                v.f32s(OP, "v")?,
                o.f32s(OP, "o")?,
                lse.f32s(OP, "lse")?,
                dq.f32s_mut(OP, "dq")?,
                dk.f32s_mut(OP, "dk")?,
                dv.f32s_mut(OP, "dv")?,
            );
            Ok(AttentionGrads { dq, dk, dv })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dropout::DropoutMask;

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, Device::Cpu)
    }

    fn err(q: &Tensor, k: &Tensor, cu: &[u32], opts: &AttentionOpts) -> String {
        forward(q, k, k, cu, opts).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_cu_seqlens() {
        let (q, k) = (zeros(&[5, 2, 4]), zeros(&[5, 1, 4]));
        let opts = AttentionOpts::new(4, true);
        let e = err(&q, &k, &[0, 3, 2, 5], &opts);
        assert!(
            e.contains("attention") && e.contains("decreases at index 2"),
            "{e}"
        );
        let e = err(&q, &k, &[0, 3, 4], &opts);
        assert!(e.contains("ends at 4") && e.contains("5 tokens"), "{e}");
        let e = err(&q, &k, &[1, 5], &opts);
        assert!(e.contains("starts at 1"), "{e}");
        assert!(err(&q, &k, &[], &opts).contains("empty"));
        // Empty sequences are fine.
        assert!(forward(&q, &k, &k, &[0, 0, 5, 5], &opts).is_ok());
    }

    #[test]
    fn rejects_bad_heads_shapes_scale_and_dropout() {
        let opts = AttentionOpts::new(4, false);
        let cu = [0, 5];
        let e = err(&zeros(&[5, 3, 4]), &zeros(&[5, 2, 4]), &cu, &opts);
        assert!(e.contains("not a multiple"), "{e}");
        let e = err(&zeros(&[5, 2, 4]), &zeros(&[5, 1, 3]), &cu, &opts);
        assert!(e.contains("k") && e.contains("[5, 1, 3]"), "{e}");
        let e = err(&zeros(&[5, 2, 4]), &zeros(&[5, 0, 4]), &cu, &opts);
        assert!(e.contains("> 0"), "{e}");
        let (q, k) = (zeros(&[5, 2, 4]), zeros(&[5, 1, 4]));
        let e = forward(&q, &k, &zeros(&[5, 2, 4]), &cu, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("v"), "{e}");
        for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = err(
                &q,
                &k,
                &cu,
                &AttentionOpts {
                    scale,
                    ..opts.clone()
                },
            );
            assert!(e.contains("scale"), "{e}");
        }
        let with_dropout = |m: DropoutMask| {
            let dropout = Some(m);
            err(
                &q,
                &k,
                &cu,
                &AttentionOpts {
                    dropout,
                    ..opts.clone()
                },
            )
        };
        let e = with_dropout(DropoutMask::new(1.0, 0, 0));
        assert!(e.contains("dropout probability"), "{e}");
        let keys = crate::ops::dropout::SeqKeys::new(&[0, 2, 5], &[1, 2]).unwrap();
        let e = with_dropout(DropoutMask::new(0.1, 0, 0).with_keys(Some(keys)));
        assert!(e.contains("keys' cu_seqlens differ"), "{e}");
        let e = err(&zeros(&[5, 8]), &k, &cu, &opts);
        assert!(e.contains("rank 3"), "{e}");
        let bf = zeros(&[5, 2, 4]).to_dtype(DType::BF16);
        assert!(err(&bf, &k, &cu, &opts).contains("BF16"));
    }

    #[test]
    fn backward_checks_saved_tensors_and_round_trips() {
        let opts = AttentionOpts::new(4, true);
        let cu = [0, 2, 5];
        let data = |n: usize, s: f32| (0..n).map(|i| (i as f32 * s).sin()).collect::<Vec<_>>();
        let q = Tensor::from_vec(data(40, 0.3), &[5, 2, 4]).unwrap();
        let k = Tensor::from_vec(data(20, 0.7), &[5, 1, 4]).unwrap();
        let v = Tensor::from_vec(data(20, 1.1), &[5, 1, 4]).unwrap();
        let out = forward(&q, &k, &v, &cu, &opts).unwrap();
        assert_eq!(out.lse.shape(), &[2, 5]);
        let g = backward(&out.o, &q, &k, &v, &out.o, &out.lse, &cu, &opts).unwrap();
        assert_eq!(g.dq.shape(), &[5, 2, 4]);
        assert_eq!(g.dk.shape(), &[5, 1, 4]);
        assert!(g.dv.to_vec_f32().iter().all(|x| x.is_finite()));
        let bad_lse = zeros(&[5, 2]);
        let e = backward(&out.o, &q, &k, &v, &out.o, &bad_lse, &cu, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lse") && e.contains("[2, 5]"), "{e}");
        let e = backward(&zeros(&[5, 2, 3]), &q, &k, &v, &out.o, &out.lse, &cu, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dout"), "{e}");
    }
}
