//! The backend itself: transfers, casts, the allocator and the cuBLAS GEMMs.

use llm2comp_tensor::ops::matmul;
use llm2comp_tensor::{DType, Device, Tensor, cuda};

use crate::common::{check, cuda, randn, rounded, to_cpu_f32, to_gpu};

#[test]
fn round_trip_is_exact_for_every_dtype() {
    let Some(dev) = cuda() else { return };
    let x = randn(&[37, 65], 1);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let host = x.to_dtype(dtype);
        let back = host.to_device(dev).unwrap().to_device(Device::Cpu).unwrap();
        assert_eq!(back, host, "{dtype:?} round trip changed values");
    }
}

#[test]
fn device_casts_match_host_casts_bit_for_bit() {
    let Some(dev) = cuda() else { return };
    // Include values that round differently (ties, overflow for f16).
    let mut x = randn(&[1000, 3], 2).to_vec_f32();
    x[0] = 1.0 + 1.0 / 256.0;
    x[1] = 3.0e38;
    x[2] = -1.0e-30;
    let x = Tensor::from_vec(x, &[1000, 3]).unwrap();
    for (from, to) in [
        (DType::F32, DType::BF16),
        (DType::F32, DType::F16),
        (DType::BF16, DType::F32),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F16),
        (DType::F16, DType::BF16),
    ] {
        let src = x.to_dtype(from);
        let want = src.to_dtype(to);
        let got = src
            .to_device(dev)
            .unwrap()
            .try_to_dtype(to)
            .unwrap()
            .to_device(Device::Cpu)
            .unwrap();
        let (g, w) = (got.to_vec_f32(), want.to_vec_f32());
        let same = g
            .iter()
            .zip(&w)
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        assert!(same, "cast {from:?} -> {to:?} differs from the host cast");
    }
}

#[test]
fn allocator_counts_peak_and_reuses_blocks() {
    let Some(dev) = cuda() else { return };
    let Device::Cuda(o) = dev else { unreachable!() };
    let d = cuda::device(o).unwrap();
    d.synchronize().unwrap();
    d.reset_peak();
    let base = d.in_use_bytes();
    let a = Tensor::empty(&[1 << 20], DType::F32, dev).unwrap();
    let ptr = a.cuda_ptr("test", "a").unwrap();
    assert!(d.peak_bytes() >= base + (4 << 20));
    drop(a);
    assert_eq!(d.in_use_bytes(), base);
    let b = Tensor::empty(&[1 << 20], DType::F32, dev).unwrap();
    assert_eq!(
        b.cuda_ptr("test", "b").unwrap(),
        ptr,
        "freed block not reused"
    );
    // Poisoned: an uninitialised tensor reads back as NaN.
    assert!(b.to_vec_f32().iter().all(|v| v.is_nan()));
    let z = Tensor::try_zeros(&[3, 5], DType::BF16, dev).unwrap();
    assert!(z.to_vec_f32().iter().all(|&v| v == 0.0));
}

#[test]
fn a_missing_ordinal_is_an_error() {
    let Some(_) = cuda() else { return };
    let err = Tensor::try_zeros(&[2], DType::F32, Device::Cuda(4096))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cuda:4096"), "{err}");
}

fn linear_case(rows: usize, d_in: usize, d_out: usize, dtype: DType, bound: f64) {
    let Some(dev) = cuda() else { return };
    let x = rounded(&randn(&[rows, d_in], 10), dtype);
    let w = rounded(&randn(&[d_out, d_in], 11), dtype);
    let dy = rounded(&randn(&[rows, d_out], 12), dtype);
    let y = matmul::linear_forward(&x, &w).unwrap();
    let dx = matmul::linear_backward_input(&dy, &w).unwrap();
    let mut dw = randn(&[d_out, d_in], 13);
    let dw0 = dw.clone();
    matmul::linear_backward_weight(&dy, &x, &mut dw).unwrap();

    let (xg, wg, dyg) = (
        to_gpu(&x, dtype, dev),
        to_gpu(&w, dtype, dev),
        to_gpu(&dy, dtype, dev),
    );
    let yg = matmul::linear_forward(&xg, &wg).unwrap();
    let dxg = matmul::linear_backward_input(&dyg, &wg).unwrap();
    // dW accumulates into f32 even for bf16 operands.
    let mut dwg = dw0.to_device(dev).unwrap();
    matmul::linear_backward_weight(&dyg, &xg, &mut dwg).unwrap();
    let tag = format!("linear {rows}x{d_in}->{d_out} {dtype:?}");
    check(&format!("{tag} y"), &to_cpu_f32(&yg), &y, bound);
    check(&format!("{tag} dx"), &to_cpu_f32(&dxg), &dx, bound);
    check(&format!("{tag} dw (+=)"), &to_cpu_f32(&dwg), &dw, bound);
    // The scaled forms (a LoRA side path's alpha/r): the GEMM's alpha on the
    // device, a multiply after the product on the CPU.
    let alpha = 2.5;
    let ys = matmul::linear_forward_scaled(&x, &w, alpha).unwrap();
    let dxs = matmul::linear_backward_input_scaled(&dy, &w, alpha).unwrap();
    let ysg = matmul::linear_forward_scaled(&xg, &wg, alpha).unwrap();
    let dxsg = matmul::linear_backward_input_scaled(&dyg, &wg, alpha).unwrap();
    check(&format!("{tag} alpha·y"), &to_cpu_f32(&ysg), &ys, bound);
    check(&format!("{tag} alpha·dx"), &to_cpu_f32(&dxsg), &dxs, bound);
}

/// Tensor::copy_rows on the device moves exactly the rows the host copy moves.
#[test]
fn copy_rows_matches_host() {
    let Some(dev) = cuda() else { return };
    for dtype in [DType::F32, DType::BF16] {
        let dst = randn(&[9, 37], 40).to_dtype(dtype);
        let src = randn(&[5, 37], 41).to_dtype(dtype);
        let mut want = dst.clone();
        want.copy_rows(2, &src, 1, 3).unwrap();
        let mut got = dst.to_device(dev).unwrap();
        got.copy_rows(2, &src.to_device(dev).unwrap(), 1, 3)
            .unwrap();
        assert_eq!(got.to_device(Device::Cpu).unwrap(), want, "{dtype:?}");
    }
}

/// y += bias per row (a rank-1 GEMM on the device) against the CPU loop on the
/// same values; rows and width odd, a 3-d y to check leading dims flatten.
#[test]
fn add_bias_matches_cpu() {
    let Some(dev) = cuda() else { return };
    for (dtype, bound) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        let y0 = rounded(&randn(&[5, 13, 67], 30), dtype);
        let b = rounded(&randn(&[67], 31), dtype);
        let mut want = y0.clone();
        matmul::add_bias(&mut want, &b).unwrap();
        let mut yg = to_gpu(&y0, dtype, dev);
        matmul::add_bias(&mut yg, &to_gpu(&b, dtype, dev)).unwrap();
        check(
            &format!("add_bias {dtype:?}"),
            &to_cpu_f32(&yg),
            &want,
            bound,
        );
    }
    let mut y = to_gpu(&randn(&[3, 4], 32), DType::BF16, dev);
    let e = matmul::add_bias(&mut y, &to_gpu(&randn(&[4], 33), DType::F32, dev))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias") && e.contains("F32"), "{e}");
}

#[test]
fn linear_f32_matches_cpu() {
    linear_case(77, 65, 33, DType::F32, 1e-5);
}

#[test]
fn linear_bf16_matches_cpu() {
    // Inputs are bf16-exact; only the bf16 rounding of y and dx differs.
    linear_case(513, 576, 1536, DType::BF16, 1e-2);
}
