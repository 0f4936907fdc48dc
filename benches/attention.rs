//! Packed varlen attention, forward and backward, at SmolLM2-135M's head
//! layout (9 query heads, 3 KV heads, head dim 64), one sequence of T tokens.
//! FLOPs count the useful work only: 4·pairs·Hq·D forward (QKᵀ and PV) and
//! 2.5× that backward (five products instead of two, no recomputation), where
//! pairs = T² bidirectional or T(T+1)/2 causal — the convention FlashAttention
//! papers use, applied to PyTorch's figure too.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llm2comp_benches::{config, random};
use llm2comp_tensor::ops::attention::{self, AttentionOpts};

const HQ: usize = 9;
const HKV: usize = 3;
const D: usize = 64;
const LENGTHS: &[usize] = &[128, 512, 2048];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    for &t in LENGTHS {
        let q = random(&[t, HQ, D], 1.0, 1);
        let k = random(&[t, HKV, D], 1.0, 2);
        let v = random(&[t, HKV, D], 1.0, 3);
        let dout = random(&[t, HQ, D], 1.0, 4);
        let cu = [0, t as u32];
        for causal in [true, false] {
            let opts = AttentionOpts::new(D, causal);
            let pairs = if causal { t * (t + 1) / 2 } else { t * t };
            let fwd_flops = (4 * pairs * HQ * D) as u64;
            let id = format!("{}-{t}", if causal { "causal" } else { "bidirectional" });
            g.throughput(Throughput::Elements(fwd_flops));
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter(|| attention::forward(&q, &k, &v, &cu, &opts).unwrap())
            });
            let out = attention::forward(&q, &k, &v, &cu, &opts).unwrap();
            g.throughput(Throughput::Elements(fwd_flops * 5 / 2));
            g.bench_function(BenchmarkId::new("backward", &id), |b| {
                b.iter(|| {
                    attention::backward(&dout, &q, &k, &v, &out.o, &out.lse, &cu, &opts).unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
