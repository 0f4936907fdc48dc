//! GEMM throughput at transformer shapes, in the three linear-layer layouts.
//! Throughput is reported in "elements" = floating-point operations, so
//! criterion's Gelem/s reads as GFLOP/s.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm2comp_benches::{config, random};
use llm2comp_tensor::{Tensor, ops::matmul};

/// (tokens m, in k, out n): SmolLM2-135M's MLP up-projection, and a 7B-class square layer.
const SHAPES: &[(usize, usize, usize)] = &[(512, 576, 1536), (2048, 4096, 4096)];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    for &(m, k, n) in SHAPES {
        let x = random(&[m, k], 1.0, 1);
        let w = random(&[n, k], 0.05, 2);
        let dy = random(&[m, n], 1.0, 3);
        let mut dw = Tensor::zeros(&[n, k], llm2comp_tensor::DType::F32, Default::default());
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::new("x_wt", &id), |b| {
            b.iter(|| matmul::linear_forward(&x, &w).unwrap())
        });
        g.bench_function(BenchmarkId::new("dy_w", &id), |b| {
            b.iter(|| matmul::linear_backward_input(&dy, &w).unwrap())
        });
        g.bench_function(BenchmarkId::new("dyt_x", &id), |b| {
            b.iter(|| matmul::linear_backward_weight(&dy, &x, &mut dw).unwrap())
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
