//! `llm2comp embed` and `info` run as the user runs them, as a process.
//!
//! The end-to-end embedding needs a real model with a matching tokenizer;
//! the only one is SmolLM2-135M (98 MB, fetched by `scripts/fetch-smollm2.sh`
//! into a cache), so that test says it is SKIPPED on stderr when the file
//! is absent. Everything else always runs: the error paths (each message must
//! name the file, and the line where there is one, since the usual input is
//! a large generated file), and `info` on a tiny Hugging Face directory
//! assembled from test fixtures (a random Llama with SmolLM2's tokenizer:
//! enough for `info`, and for `embed` to refuse the vocabulary mismatch).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{RefPooling, Reference, worst_row_err};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../backbone/tests/fixtures");

fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

/// The process's stderr, after checking it failed (and did not panic).
fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// A temp dir holding `in.txt` with `input`.
fn with_input(input: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, input).unwrap();
    (dir, path)
}

/// A Hugging Face directory: the golden random Llama (vocab 97) with
/// SmolLM2's tokenizer.json (vocab 49152), a tokenizer that does not belong
/// to it (`info` shows it; the commands that use it refuse it).
fn tiny_hf_dir(with_tokenizer: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let llama = Path::new(FIXTURES).join("golden/llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(llama.join(f), dir.path().join(f)).unwrap();
    }
    if with_tokenizer {
        std::fs::copy(
            Path::new(FIXTURES).join("smollm2-tokenizer/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
    }
    dir
}

/// The tiny random model with its own word-level tokenizer (89 ids, 97 rows).
fn tiny_embed_dir() -> PathBuf {
    Path::new(FIXTURES).join("tiny-embed")
}

/// The SmolLM2 GGUF if downloaded (`LLM2COMP_SMOLLM2_GGUF`, else the cache
/// of `scripts/fetch-smollm2.sh`).
fn smollm2_path() -> Option<PathBuf> {
    let p = llm2comp_backbone::model::smollm2_gguf()?;
    assert!(
        p.is_file(),
        "LLM2COMP_SMOLLM2_GGUF={} does not exist",
        p.display()
    );
    Some(p)
}

/// Shape and data of a little-endian f32 .npy file, parsed independently of
/// the writer (only the header fields the format requires).
fn read_npy(bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(
        &bytes[..8],
        b"\x93NUMPY\x01\x00",
        "npy magic and version 1.0"
    );
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let inner = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("a shape tuple");
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "data size");
    (shape, data)
}

#[test]
fn embed_smollm2_end_to_end_writes_a_finite_3_by_576_npy() {
    let Some(model) = smollm2_path() else {
        let _ = std::io::stderr().write_all(
            b"embed_smollm2_end_to_end_writes_a_finite_3_by_576_npy: SKIPPED (SmolLM2 not \
              downloaded: run scripts/fetch-smollm2.sh)\n",
        );
        return;
    };
    let (dir, input) = with_input(
        "The capital of France is Paris.\nIn 2024, 17 robots painted 3 walls.\nA memory token \
         summarises a passage.\n"
            .as_bytes(),
    );
    let output = dir.path().join("out.npy");
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let _ = writeln!(std::io::stderr(), "{}", stderr.trim_end());
    let (shape, data) = read_npy(&std::fs::read(&output).unwrap());
    assert_eq!(shape, [3, 576]);
    assert!(data.iter().all(|v| v.is_finite()), "non-finite embedding");
    let rows: Vec<&[f32]> = data.chunks(576).collect();
    for r in &rows {
        assert!(r.iter().any(|&v| v != 0.0), "an all-zero embedding");
    }
    assert!(rows[0] != rows[1] && rows[1] != rows[2], "rows must differ");
    assert!(stderr.contains("[3 x 576]"), "{stderr}");
    // The values: the defaults (mean pooling, causal) of each passage run
    // alone through the library's model (tests/support).
    let texts = std::fs::read_to_string(&input).unwrap();
    let texts: Vec<&str> = texts.lines().collect();
    let want = Reference::load(&model, None).embed(&texts, RefPooling::Mean, true, 512, false);
    let got: Vec<Vec<f32>> = rows.iter().map(|r| r.to_vec()).collect();
    let e = worst_row_err(&got, &want);
    // Packed vs alone: f32 rounding only (7e-8 measured); a wrong value is O(1).
    assert!(e <= 1e-5, "embed vs one passage at a time: {e:.2e}");
}

#[test]
fn embed_names_a_missing_model_path() {
    let (dir, input) = with_input(b"hello\n");
    let model = dir.path().join("no-such-model.gguf");
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--output",
        s(&dir.path().join("out.npy")),
    ]);
    let e = failure(&out);
    assert!(e.contains("no-such-model.gguf"), "{e}");
}

#[test]
fn embed_and_info_refuse_a_directory_without_config_json() {
    let (dir, input) = with_input(b"hello\n");
    let model = dir.path().join("empty-model");
    std::fs::create_dir(&model).unwrap();
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--output",
        s(&dir.path().join("out.npy")),
    ]);
    let e = failure(&out);
    assert!(
        e.contains("empty-model") && e.contains("config.json"),
        "{e}"
    );
    let e = failure(&llm2comp(&["info", "--model", s(&model)]));
    assert!(
        e.contains("empty-model") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn embed_names_the_file_and_line_of_an_empty_passage() {
    let (dir, input) = with_input(b"first\n\nthird\n");
    let model = tiny_embed_dir();
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--output",
        s(&dir.path().join("out.npy")),
    ]);
    let e = failure(&out);
    assert!(
        e.contains(s(&input)) && e.contains("line 2") && e.contains("--skip-empty"),
        "{e}"
    );
}

#[test]
fn embed_names_the_file_line_and_column_of_invalid_utf8() {
    let (dir, input) = with_input(b"fine\nalso fine\nbad \xff byte\n");
    let model = tiny_embed_dir();
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--output",
        s(&dir.path().join("out.npy")),
    ]);
    let e = failure(&out);
    assert!(
        e.contains(s(&input))
            && e.contains("line 3")
            && e.contains("UTF-8")
            && e.contains("column 5"),
        "{e}"
    );
}

#[test]
fn embed_refuses_an_unknown_output_extension_before_any_work() {
    let (dir, input) = with_input(b"hello\n");
    // The model does not exist: the output name must be refused first, so a
    // typo in it is reported before minutes of embedding, not after.
    let out = llm2comp(&[
        "embed",
        "--model",
        s(&dir.path().join("no-such-model")),
        "--input",
        s(&input),
        "--output",
        s(&dir.path().join("vectors.csv")),
    ]);
    let e = failure(&out);
    assert!(
        e.contains("vectors.csv") && e.contains(".npy or .jsonl"),
        "{e}"
    );
    assert!(!dir.path().join("vectors.csv").exists());
}

#[test]
fn embed_refuses_a_tokenizer_whose_ids_pass_the_vocabulary_before_reading_input() {
    // SmolLM2's tokenizer gives ids up to 49151; the model has 97 rows. It
    // used to be found line by line, after part of the input was embedded.
    let (dir, input) = with_input(b"!\nThe capital of France\n");
    let model = tiny_hf_dir(true);
    let output = dir.path().join("out.npy");
    let out = llm2comp(&[
        "embed",
        "--model",
        s(model.path()),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]);
    let e = failure(&out);
    assert!(
        e.contains("tokenizer.json") && e.contains("ids up to 49151") && e.contains("97 rows"),
        "{e}"
    );
    assert!(!output.exists(), "no output on failure");
}

#[test]
fn info_describes_a_hugging_face_directory() {
    let model = tiny_hf_dir(true);
    let out = llm2comp(&["info", "--model", s(model.path())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "Hugging Face directory",
        "Llama",
        "2 layers, hidden 32, MLP 64, 4 heads (2 KV), head dim 8",
        "with Llama-3 scaling",
        "vocabulary   97 (tokenizer 49152)",
        "WARNING: ",
        "ids up to 49151 but the model's vocabulary has 97 rows",
        "separate LM head",
        "F32 x",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let out = llm2comp(&["info", "--model", s(model.path()), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hidden_size"], 32);
    assert_eq!(v["kv_heads"], 2);
    assert!(
        v["tokenizer_mismatch"]
            .as_str()
            .is_some_and(|m| m.contains("ids up to 49151")),
        "{v}"
    );
    assert_eq!(v["tie_word_embeddings"], false);
    // 97·32 embedding + 97·32 head + 32 final norm + 2 blocks of
    // (2·32 norms + 32·32 q + 2·16·32 k,v + 32·32 o + 3·64·32 MLP).
    let block = 2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 64 * 32;
    assert_eq!(v["parameters"], 2 * 97 * 32 + 32 + 2 * block);
    assert_eq!(v["stored_elements"], v["parameters"]);
}

#[test]
fn info_names_a_missing_tokenizer() {
    let model = tiny_hf_dir(false);
    let e = failure(&llm2comp(&["info", "--model", s(model.path())]));
    assert!(
        e.contains("tokenizer.json") && e.contains(s(model.path())),
        "{e}"
    );
}
