//! Malformed inputs through the binary end in a clear error (exit status
//! non-zero, the file and the problem on stderr) and write nothing: weights
//! holding NaN, a model whose activations overflow, non-finite embeddings
//! handed to `eval --embeddings`, `--epochs` values that are not a number
//! of passes, and contrastive JSONL with an empty hard negative. Built on
//! the committed tiny model; each case is a fraction of a second.

mod support;

use std::path::Path;

use support::{copy_model, fixture, llm2comp, read_safetensors, stderr, write_safetensors};

/// `dir`'s model with every element of tensor `name` set to the bf16 `bits`.
fn fill_tensor(dir: &Path, name: &str, bits: u16) {
    let path = dir.join("model.safetensors");
    let mut tensors = read_safetensors(&std::fs::read(&path).unwrap());
    let t = tensors.iter_mut().find(|t| t.0 == name).expect("tensor");
    assert_eq!(t.1["dtype"], "BF16");
    for c in t.2.chunks_exact_mut(2) {
        c.copy_from_slice(&bits.to_le_bytes());
    }
    write_safetensors(&path, &tensors);
}

fn embed(model: &Path, out: &Path) -> std::process::Output {
    let passages = fixture().join("passages.txt");
    llm2comp(&[
        "--threads",
        "1",
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        passages.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ])
}

#[test]
fn weights_holding_nan_are_refused_at_load_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_model(&model);
    fill_tensor(&model, "model.layers.1.mlp.up_proj.weight", 0x7FC0); // bf16 NaN
    let out = tmp.path().join("e.npy");
    let o = embed(&model, &out);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("model.safetensors")
            && e.contains("tensor `model.layers.1.mlp.up_proj.weight` holds NaN at element 0"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn embed_refuses_to_write_non_finite_embeddings_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_model(&model);
    // Finite weights whose product overflows: the final norm's gain at the
    // largest bf16 (3.39e38) sends every normalised value above 1 to inf.
    fill_tensor(&model, "model.norm.weight", 0x7F7F);
    let out = tmp.path().join("e.npy");
    let o = embed(&model, &out);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("passages.txt: line 1: the embedding holds")
            && e.contains("nothing was written"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn eval_refuses_non_finite_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("sts/stsb")).unwrap();
    std::fs::write(
        data.join("sts/stsb/test.tsv"),
        "score\tsentence1\tsentence2\n1.0\ta\tb\n2.0\ta\tc\n",
    )
    .unwrap();
    let emb = tmp.path().join("emb");
    std::fs::create_dir_all(&emb).unwrap();
    // [3, 2] float32 rows; row 1 holds NaN. (The writer is the CLI's, so
    // the header is built here by hand as NumPy would.)
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
    let pad = (10 + h.len() + 1).next_multiple_of(64) - (10 + h.len() + 1);
    let h = format!("{h}{}\n", " ".repeat(pad));
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    for x in [1.0f32, 0.0, f32::NAN, 1.0, 0.5, 0.5] {
        npy.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(emb.join("stsb.npy"), npy).unwrap();
    let o = llm2comp(&[
        "eval",
        "--tasks",
        "stsb",
        "--data-dir",
        data.to_str().unwrap(),
        "--embeddings",
        emb.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("stsb.npy: row 1 (0-based) holds NaN at column 0"),
        "{e}"
    );
}

#[test]
fn epochs_that_are_not_a_number_of_passes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_model(&model);
    let passages = fixture().join("passages.txt");
    let run = |epochs: &str| {
        let out = tmp.path().join("run");
        let o = llm2comp(&[
            "--threads",
            "1",
            "pretrain",
            "--model",
            model.to_str().unwrap(),
            "--data",
            passages.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--memory-tokens",
            "2",
            "--lora-r",
            "4",
            "--max-length",
            "64",
            "--quiet",
            &format!("--epochs={epochs}"),
        ]);
        assert!(!o.status.success(), "--epochs {epochs} ran");
        assert!(!out.join("metrics.jsonl").exists());
        stderr(&o)
    };
    for bad in ["NaN", "-1", "0", "inf"] {
        let e = run(bad);
        assert!(
            e.contains("--epochs") && e.contains("finite number > 0"),
            "{bad}: {e}"
        );
    }
    let e = run("1e30");
    assert!(
        e.contains(
            "--epochs 1000000000000000000000000000000 would run more than 4294967296 optimiser steps"
        ),
        "{e}"
    );
}

#[test]
fn contrastive_jsonl_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_model(&model);
    let passages = fixture().join("passages.txt");
    let stage1 = tmp.path().join("kl");
    let o = llm2comp(&[
        "--threads",
        "1",
        "pretrain",
        "--model",
        model.to_str().unwrap(),
        "--data",
        passages.to_str().unwrap(),
        "--out",
        stage1.to_str().unwrap(),
        "--memory-tokens",
        "2",
        "--lora-r",
        "4",
        "--max-length",
        "64",
        "--steps",
        "1",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = tmp.path().join("sup.jsonl");
    let contrast = |body: &[u8]| {
        std::fs::write(&data, body).unwrap();
        let o = llm2comp(&[
            "--threads",
            "1",
            "contrast",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            stage1.to_str().unwrap(),
            "--mode",
            "sup",
            "--data",
            data.to_str().unwrap(),
            "--out",
            tmp.path().join("scl").to_str().unwrap(),
            "--quiet",
        ]);
        assert!(!o.status.success());
        stderr(&o)
    };
    let good = b"{\"query\": \"the cat\", \"positive\": \"a cat\"}\n";
    let e = contrast(
        &[
            &good[..],
            b"{\"query\": \"q\", \"positive\": \"p\", \"negative\": [\"n\", \"\"]}\n",
        ]
        .concat(),
    );
    assert!(
        e.contains("sup.jsonl:2: \"negative\"[1] is an empty string"),
        "{e}"
    );
    let e = contrast(&[&good[..], &good[..], b"{\"query\": \"\xff\"}\n"].concat());
    assert!(e.contains("sup.jsonl:3: not valid UTF-8"), "{e}");
}

/// Output paths are checked before the model is even opened (the model
/// here does not exist): a missing directory, a directory given as the
/// file, for `embed --output` and `eval --json`.
#[test]
fn unusable_output_paths_are_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let no_model = d.path().join("no-such-model");
    let input = d.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let run = |args: &[&str]| {
        let o = llm2comp(args);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let missing = d.path().join("missing/e.npy");
    let (m, i, nm) = (s(&missing), s(&input), s(&no_model));
    let e = run(&["embed", "--model", &nm, "--input", &i, "--output", &m]);
    assert!(
        e.contains("does not exist") && e.contains(&s(&d.path().join("missing"))),
        "{e}"
    );
    assert!(
        !e.contains("no-such-model"),
        "the output is checked first: {e}"
    );
    let as_dir = d.path().join("out.npy");
    std::fs::create_dir(&as_dir).unwrap();
    let e = run(&[
        "embed",
        "--model",
        &nm,
        "--input",
        &i,
        "--output",
        &s(&as_dir),
    ]);
    assert!(e.contains("is a directory"), "{e}");
    let e = run(&["eval", "--model", &nm, "--tasks", "stsb", "--json", &m]);
    assert!(e.contains("--json") && e.contains("does not exist"), "{e}");
    assert!(
        !e.contains("no-such-model"),
        "the output is checked first: {e}"
    );
}
