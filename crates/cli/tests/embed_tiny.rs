//! Runs `llm2comp embed` end to end on the committed tiny model
//! (`crates/backbone/tests/fixtures/tiny-embed`, written by
//! `scripts/make_tiny_embed_model.py`): tokenizer, bf16 safetensors, packing,
//! pooling and the .npy writer, on the CPU. The same model and passages are
//! what `scripts/gpu-check.sh` embeds on CUDA and compares against this path.
//! (`embed_values.rs` checks every pooling, mask and adapter setting.)

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{RefPooling, Reference, read_npy, worst_row_err};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed")
}

fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("llm2comp-embed-tiny-{}-{name}", std::process::id()))
}

#[test]
fn embeds_the_tiny_model_on_the_cpu_into_n_by_d() {
    let dir = fixture();
    let passages = dir.join("passages.txt");
    let n = std::fs::read_to_string(&passages).unwrap().lines().count();
    let out = tmp("cpu.npy");
    let o = llm2comp(&[
        "embed",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        passages.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-batch-tokens",
        "200",
        "--device",
        "cpu",
    ]);
    assert!(
        o.status.success(),
        "embed failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (shape, v) = read_npy(&out);
    std::fs::remove_file(&out).ok();
    assert_eq!(shape, [n, 128]);
    assert!(v.iter().all(|x| x.is_finite()));
    // Distinct passages give distinct vectors (the model is not degenerate).
    let row = |i: usize| &v[i * 128..(i + 1) * 128];
    let gap: f32 = row(0).iter().zip(row(2)).map(|(a, b)| (a - b).abs()).sum();
    assert!(gap > 1e-2, "rows 0 and 2 nearly equal ({gap})");
    // The values: the defaults (mean pooling, causal, --max-length 512) of
    // each passage embedded alone through the library (tests/support).
    let texts = std::fs::read_to_string(&passages).unwrap();
    let texts: Vec<&str> = texts.lines().collect();
    let want = Reference::load(&dir, None).embed(&texts, RefPooling::Mean, true, 512, false);
    let got: Vec<Vec<f32>> = v.chunks(128).map(<[f32]>::to_vec).collect();
    let e = worst_row_err(&got, &want);
    // Packed vs alone: f32 rounding only (~1e-7); a wrong value is O(1).
    assert!(e <= 1e-5, "embed vs one passage at a time: {e:.2e}");
}

#[test]
fn cuda_without_a_device_and_bf16_on_the_cpu_are_clear_errors() {
    let dir = fixture();
    let passages = dir.join("passages.txt");
    let out = tmp("never.npy");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "embed",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            passages.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        llm2comp(&args)
    };
    let o = run(&["--device", "cpu", "--dtype", "bf16"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--dtype bf16"), "{err}");
    if llm2comp_tensor::cuda::device_count() == 0 {
        // An error exit (1), not a panic (101), saying what is missing.
        let o = run(&["--device", "cuda:0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.to_lowercase().contains("cuda"), "{err}");
        assert!(!out.exists());
    } else {
        llm2comp_tensor::testing::report_skip(
            "the no-device half: a CUDA device is present (gpu-check.sh embeds on it)",
        );
    }
}
