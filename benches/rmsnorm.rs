//! RMSNorm forward and backward bandwidth. Throughput counts the bytes an
//! ideal kernel must move (read x and w, write y; backward reads dy, x, w,
//! rstd and writes dx), so criterion's GB/s compares against memory bandwidth.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm2comp_benches::{config, random};
use llm2comp_tensor::ops::rmsnorm;

/// (rows, dim): a packed batch of 8×512 tokens at SmolLM2's and Llama-7B's widths.
const SHAPES: &[(usize, usize)] = &[(4096, 576), (4096, 4096)];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rmsnorm");
    for &(rows, dim) in SHAPES {
        let x = random(&[rows, dim], 1.0, 1);
        let w = random(&[dim], 1.0, 2);
        let dy = random(&[rows, dim], 1.0, 3);
        let id = format!("{rows}x{dim}");
        g.throughput(Throughput::Bytes((4 * (2 * rows * dim + dim)) as u64));
        g.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter(|| rmsnorm::forward(&x, &w, 1e-5).unwrap())
        });
        let out = rmsnorm::forward(&x, &w, 1e-5).unwrap();
        g.throughput(Throughput::Bytes(
            (4 * (3 * rows * dim + dim + rows)) as u64,
        ));
        g.bench_function(BenchmarkId::new("backward", &id), |b| {
            b.iter(|| rmsnorm::backward(&dy, &x, &w, &out.rstd, None).unwrap())
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
