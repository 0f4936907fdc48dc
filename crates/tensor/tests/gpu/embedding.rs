//! Embedding on the GPU against the CPU op. The forward is a gather and the
//! backward sums each id's rows in the CPU's order, so both must match the
//! CPU exactly up to the bound (expected bit-identical: the lines print 0).

use llm2comp_tensor::ops::embedding;
use llm2comp_tensor::{DType, Device};

use crate::common;

/// Random ids < `vocab` with many repeats (N > vocab/2), from a seeded LCG.
fn random_ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn embedding_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[(301, 77, 513), (1000, 576, 2049)]);
}

/// Tiny sizes, for the compute-sanitizer pass (which runs tests named `small`).
#[test]
fn embedding_small_matches_cpu() {
    let Some(dev) = common::cuda() else { return };
    compare(dev, &[(45, 19, 33)]);
}

/// Forward, dense and sparse backward against the CPU for each (V, H, N).
fn compare(dev: Device, cases: &[(usize, usize, usize)]) {
    for &(vocab, hidden, n) in cases {
        // Ids from the lower part of the vocabulary: some rows are never looked up.
        let ids = random_ids(n, (vocab - 40) as u32, vocab as u64);
        let table = common::randn(&[vocab, hidden], 1);
        let dout = common::randn(&[n, hidden], 2);
        let dtable0 = common::randn(&[vocab, hidden], 3);
        for dt in [DType::F32, DType::BF16] {
            let tag = format!("embedding {dt} V={vocab} H={hidden} N={n}");
            let table_g = common::to_gpu(&table, dt, dev);
            let out = embedding::forward(&ids, &table_g).unwrap();
            assert_eq!(out.dtype(), dt, "{tag}: out dtype");
            let want = embedding::forward(&ids, &common::to_cpu_f32(&table_g)).unwrap();
            common::check(&format!("{tag} forward"), &out, &want, 0.0);

            // Dense backward: added into an f32 gradient that already holds values.
            let dout_g = common::to_gpu(&dout, dt, dev);
            let dout_c = common::to_cpu_f32(&dout_g);
            let mut dtable_g = common::to_gpu(&dtable0, DType::F32, dev);
            embedding::backward(&ids, &dout_g, &mut dtable_g).unwrap();
            let mut want = dtable0.clone();
            embedding::backward(&ids, &dout_c, &mut want).unwrap();
            assert_eq!(dtable_g.dtype(), DType::F32);
            common::check(&format!("{tag} backward dense"), &dtable_g, &want, 1e-6);

            let sparse = embedding::backward_sparse(&ids, &dout_g, vocab).unwrap();
            let want = embedding::backward_sparse(&ids, &dout_c, vocab).unwrap();
            assert_eq!(sparse.rows, want.rows, "{tag}: sparse rows");
            assert_eq!(sparse.grad.dtype(), DType::F32);
            common::check(
                &format!("{tag} backward sparse"),
                &sparse.grad,
                &want.grad,
                1e-6,
            );
        }
    }
}

#[test]
fn embedding_rejects_bad_ids_on_gpu() {
    let Some(dev) = common::cuda() else { return };
    let table = common::to_gpu(&common::randn(&[7, 3], 4), DType::F32, dev);
    let err = embedding::forward(&[1, 7], &table).unwrap_err().to_string();
    eprintln!("embedding bad id on GPU: {err}");
    assert!(err.contains("id 7") && err.contains("position 1"), "{err}");
    let empty = embedding::forward(&[], &table).unwrap();
    assert_eq!(empty.shape(), &[0, 3]);
}
