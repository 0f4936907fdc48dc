//! The fused LM head + cross-entropy at SmolLM2's head (H 576, V 49152) over a
//! 2048-token batch: forward and backward to the hidden states, head frozen,
//! as the compression objective uses it. FLOPs count the useful work of the
//! unfused computation, 4·N·H·V (logits, then dL/dh), which is also what the
//! one-sweep `forward_backward` does.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm2comp_benches::{config, random};
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};

const N: usize = 2048;
const H: usize = 576;
const V: usize = 49152;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_xent");
    let h = random(&[N, H], 1.0, 1);
    let w = random(&[V, H], 0.05, 2);
    let targets: Vec<i64> = (0..N).map(|i| ((i * 7919) % V) as i64).collect();
    let opts = LinearXentOptions::default();
    g.throughput(Throughput::Elements((4 * N * H * V) as u64));
    g.bench_function(
        BenchmarkId::new("forward_backward", format!("{N}x{H}x{V}")),
        |b| b.iter(|| linear_xent::forward_backward(&h, &w, &targets, None, None, &opts).unwrap()),
    );
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
