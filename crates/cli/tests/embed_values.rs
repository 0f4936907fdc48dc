//! The values `llm2comp embed` writes, not just their shape: on the
//! committed tiny Qwen2 (`crates/backbone/tests/fixtures/tiny-embed`, its
//! 12 passages cut to `--max-length 40`), for each pooling mode (mean and
//! last on the base model; memory, mean and last with an adapter), both
//! attention masks and `--normalize`, the rows equal
//!
//! - the library's packed `Embedder` given the same sequences and options
//!   (to f32 noise: the same computation),
//! - a naive reference that embeds each text alone and pools by hand
//!   (`tests/support`), both when the CLI packs several passages into one
//!   forward pass and when it runs one passage per pass,
//!
//! so a flag the CLI drops, a pooling or mask mixed up, packing that lets
//! passages see each other, rows written back in the wrong order or a wrong
//! cut all show as O(1) differences.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llm2comp_backbone::embedder::plan_batches;
use support::{RefPooling, Reference, npy_rows, worst_row_err, write_adapter};

const MAX_LEN: usize = 40;
/// Tokens per forward pass when packing: several 40-token passages a pass.
const PACK_TOKENS: usize = 100;
/// Memory tokens of the test adapter.
const K: usize = 3;
/// Packed against one-at-a-time: the same math with rows in other GEMM
/// blocks and attention tiles, so f32 rounding differs by ~1e-7 relative;
/// an error in the method is O(1).
const TOL_REF: f64 = 1e-5;
/// CLI against the library on identical batches: the same computation.
const TOL_LIB: f64 = 1e-6;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed")
}

fn passages() -> Vec<String> {
    std::fs::read_to_string(fixture().join("passages.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs `embed` on the passages with `flags`; the rows and the stderr.
fn cli(flags: &[&str], out: &Path) -> (Vec<Vec<f32>>, String) {
    let input = fixture().join("passages.txt");
    let max_len = MAX_LEN.to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(["embed", "--input", input.to_str().unwrap()])
        .args(["--output", out.to_str().unwrap(), "--max-length", &max_len])
        .args(flags)
        .output()
        .expect("the llm2comp binary runs");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "embed {flags:?} failed:\n{err}");
    (npy_rows(out), err)
}

/// One configuration: its CLI flags and what the reference does for them.
struct Case<'a> {
    flags: &'a [&'a str],
    pooling: RefPooling,
    causal: bool,
    normalize: bool,
}

/// Checks one configuration, packed and one passage per pass.
fn check(model: &Path, reference: &Reference, case: &Case, dir: &Path) {
    let texts = passages();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let what = format!("{:?}", case.flags);
    let model_flags = ["--model", model.to_str().unwrap()];
    let budget = PACK_TOKENS.to_string();
    let packed_flags = [
        &model_flags[..],
        case.flags,
        &["--max-batch-tokens", &budget],
    ]
    .concat();
    let (packed, err) = cli(&packed_flags, &dir.join("packed.npy"));
    // Several passages were longer than the cut, so truncation is checked too.
    assert!(err.contains("were truncated"), "{what}: {err}");
    let alone_flags = [&model_flags[..], case.flags, &["--batch-size", "1"]].concat();
    let (alone, _) = cli(&alone_flags, &dir.join("alone.npy"));

    let (p, c, n) = (case.pooling, case.causal, case.normalize);
    let naive = reference.embed(&texts, p, c, MAX_LEN, n);
    let library = reference.library(&texts, p, c, MAX_LEN, n, PACK_TOKENS);
    // The packed run did pack: some forward pass held several passages.
    let lens: Vec<usize> = reference
        .sequences(&texts, p, MAX_LEN)
        .iter()
        .map(Vec::len)
        .collect();
    assert!(
        plan_batches(&lens, PACK_TOKENS, None)
            .iter()
            .any(|b| b.len() > 1)
    );

    let e = worst_row_err(&packed, &library);
    assert!(
        e <= TOL_LIB,
        "{what}: packed CLI vs library Embedder: {e:.2e}"
    );
    let e = worst_row_err(&packed, &naive);
    assert!(
        e <= TOL_REF,
        "{what}: packed CLI vs one text at a time: {e:.2e}"
    );
    let e = worst_row_err(&alone, &naive);
    assert!(
        e <= TOL_REF,
        "{what}: --batch-size 1 vs one text at a time: {e:.2e}"
    );
    if n {
        for row in &packed {
            let norm = row.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "{what}: norm {norm}");
        }
    }
}

#[test]
fn base_model_rows_equal_the_library_and_one_text_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let reference = Reference::load(&model, None);
    let cases = [
        // The defaults without an adapter: mean pooling, causal.
        Case {
            flags: &[],
            pooling: RefPooling::Mean,
            causal: true,
            normalize: false,
        },
        Case {
            flags: &["--pooling", "mean", "--attention", "bidirectional"],
            pooling: RefPooling::Mean,
            causal: false,
            normalize: false,
        },
        Case {
            flags: &["--pooling", "last", "--normalize"],
            pooling: RefPooling::Last,
            causal: true,
            normalize: true,
        },
        Case {
            flags: &["--pooling", "last", "--attention", "bidirectional"],
            pooling: RefPooling::Last,
            causal: false,
            normalize: false,
        },
    ];
    for case in &cases {
        check(&model, &reference, case, dir.path());
    }
    // The comparisons discriminate: each setting changes the reference.
    let texts = passages();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let e = |p, c| reference.embed(&texts, p, c, MAX_LEN, false);
    let mean = e(RefPooling::Mean, true);
    assert!(worst_row_err(&e(RefPooling::Last, true), &mean) > 1e-2);
    assert!(worst_row_err(&e(RefPooling::Mean, false), &mean) > 1e-2);
}

#[test]
fn adapter_rows_equal_the_library_and_one_text_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let adapter = dir.path().join("adapter");
    write_adapter(&model, &adapter, 4, K);
    let reference = Reference::load(&model, Some(&adapter));
    let a = adapter.to_str().unwrap();
    let cases = [
        // The defaults with an adapter: memory pooling, bidirectional.
        Case {
            flags: &["--adapter", a],
            pooling: RefPooling::Memory,
            causal: false,
            normalize: false,
        },
        Case {
            flags: &["--adapter", a, "--pooling", "memory", "--normalize"],
            pooling: RefPooling::Memory,
            causal: false,
            normalize: true,
        },
        Case {
            flags: &["--adapter", a, "--pooling", "mean"],
            pooling: RefPooling::Mean,
            causal: false,
            normalize: false,
        },
        Case {
            flags: &["--adapter", a, "--pooling", "last", "--attention", "causal"],
            pooling: RefPooling::Last,
            causal: true,
            normalize: false,
        },
    ];
    for case in &cases {
        check(&model, &reference, case, dir.path());
    }
    // The adapter changes the vectors (mean pooling with and without it).
    let texts = passages();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let base = Reference::load(&model, None).embed(&texts, RefPooling::Mean, false, MAX_LEN, false);
    let with = reference.embed(&texts, RefPooling::Mean, false, MAX_LEN, false);
    assert!(worst_row_err(&with, &base) > 1e-2);
}
