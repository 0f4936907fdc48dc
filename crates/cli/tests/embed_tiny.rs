//! Runs `llm2comp embed` end to end on the committed tiny model
//! (`crates/backbone/tests/fixtures/tiny-embed`, written by
//! `scripts/make_tiny_embed_model.py`): tokenizer, bf16 safetensors, packing,
//! pooling and the .npy writer, on the CPU. The same model and passages are
//! what `scripts/gpu-check.sh` embeds on CUDA and compares against this path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed")
}

fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

/// (shape, values) of a little-endian f32 .npy file as `npy_bytes` writes it.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let inside = header.split("'shape': (").nth(1).unwrap();
    let inside = &inside[..inside.find(')').unwrap()];
    let shape: Vec<usize> = inside
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let vals = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, vals)
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
    }
}
