//! The GGUF container parser on files written here byte by byte (following
//! the format's layout, independently of the parser): metadata of every
//! kind, tensor infos, alignment, and the defects a download can have.

use std::path::Path;

use llm2comp_backbone::{GgufArray, GgufFile, GgufValue};

fn s(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

/// A v3 file: 5 metadata entries, tensors `a` (F32, dims [3, 2]) and `q` (Q8_0, [32, 1]).
fn sample(version: u32, q_type: u32, q_offset: u64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(b"GGUF");
    f.extend(version.to_le_bytes());
    f.extend(2u64.to_le_bytes()); // tensors
    f.extend(5u64.to_le_bytes()); // metadata entries
    s(&mut f, "general.architecture");
    f.extend(8u32.to_le_bytes());
    s(&mut f, "llama");
    s(&mut f, "llama.block_count");
    f.extend(4u32.to_le_bytes());
    f.extend(30u32.to_le_bytes());
    s(&mut f, "llama.rope.freq_base");
    f.extend(6u32.to_le_bytes());
    f.extend(100000f32.to_le_bytes());
    s(&mut f, "tokenizer.ggml.tokens");
    f.extend(9u32.to_le_bytes());
    f.extend(8u32.to_le_bytes());
    f.extend(2u64.to_le_bytes());
    s(&mut f, "<|endoftext|>");
    s(&mut f, "Ġthe");
    s(&mut f, "general.flag");
    f.extend(7u32.to_le_bytes());
    f.push(1);
    // tensor infos
    s(&mut f, "a");
    f.extend(2u32.to_le_bytes());
    f.extend(3u64.to_le_bytes());
    f.extend(2u64.to_le_bytes());
    f.extend(0u32.to_le_bytes()); // F32
    f.extend(0u64.to_le_bytes());
    s(&mut f, "q");
    f.extend(2u32.to_le_bytes());
    f.extend(32u64.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.extend(q_type.to_le_bytes());
    f.extend(q_offset.to_le_bytes());
    while f.len() % 32 != 0 {
        f.push(0);
    }
    for x in [1f32, 2., 3., 4., 5., 6.] {
        f.extend(x.to_le_bytes());
    }
    f.extend([0u8; 8]); // pad to offset 32
    f.extend([7u8; 34]); // one Q8_0 block
    f
}

fn open(bytes: &[u8]) -> (tempfile::TempDir, Result<GgufFile, String>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    let r = GgufFile::open(&p).map_err(|e| e.to_string());
    (dir, r)
}

#[test]
fn metadata_and_tensors_of_a_v3_file() {
    let (_d, g) = open(&sample(3, 8, 32));
    let g = g.unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(
        g.get("general.architecture"),
        Some(&GgufValue::Str("llama".into()))
    );
    assert_eq!(g.get("llama.block_count"), Some(&GgufValue::U64(30)));
    assert_eq!(
        g.get("llama.rope.freq_base"),
        Some(&GgufValue::F64(100000.0))
    );
    assert_eq!(g.get("general.flag"), Some(&GgufValue::Bool(true)));
    assert_eq!(
        g.get("tokenizer.ggml.tokens"),
        Some(&GgufValue::Array(GgufArray::Str(
            ["<|endoftext|>", "Ġthe"].into_iter().collect()
        )))
    );
    let a = g.tensor_info("a").unwrap();
    assert_eq!((a.type_name, a.shape(), a.size), ("F32", vec![2, 3], 24));
    let bytes = g.tensor_bytes("a").unwrap();
    let vals: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, vec![1., 2., 3., 4., 5., 6.]);
    let q = g.tensor_info("q").unwrap();
    assert_eq!((q.type_name, q.shape(), q.size), ("Q8_0", vec![1, 32], 34));
    assert_eq!(g.tensor_bytes("q").unwrap(), &[7u8; 34][..]);
    assert!(
        g.tensor_bytes("missing")
            .unwrap_err()
            .to_string()
            .contains("`missing`")
    );
}

#[test]
fn version_2_reads_the_same() {
    let (_d, g) = open(&sample(2, 8, 32));
    assert_eq!(g.unwrap().tensors.len(), 2);
}

#[test]
fn defects_are_errors_naming_the_file() {
    let good = sample(3, 8, 32);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "lies outside"),
        (good[..40].to_vec(), "file ends while reading"),
        ([b"GGML".as_slice(), &good[4..]].concat(), "not a GGUF file"),
        (sample(1, 8, 32), "GGUF version 1"),
        (sample(3, 99, 32), "ggml type 99"),
        (sample(3, 8, 33), "misaligned"),
        (sample(3, 12, 32), "not a multiple of Q4_K's block of 256"),
    ];
    for (bytes, want) in cases {
        let (d, r) = open(&bytes);
        let e = r.expect_err(want);
        let file = d.path().join("m.gguf").display().to_string();
        assert!(
            e.contains(&file) && e.contains(want),
            "wanted `{want}` in: {e}"
        );
    }
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = GgufFile::open(Path::new("/nonexistent/m.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/m.gguf: "), "{e}");
}

/// llama.cpp's converter permutation, as its Python defines it: reshape to
/// [n_head, 2, head_dim/2, cols], swap axes 1 and 2, flatten.
fn llama_cpp_permute(w: &[f32], n_head: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for two in 0..2 {
            for i in 0..half {
                for c in 0..cols {
                    // source index [h, two, i, c]; destination [h, i, two, c]
                    let src = ((h * 2 + two) * half + i) * cols + c;
                    let dst = ((h * half + i) * 2 + two) * cols + c;
                    out[dst] = w[src];
                }
            }
        }
    }
    out
}

#[test]
fn qk_unpermutation_inverts_the_converter() {
    let (n_head, head_dim, cols) = (3, 8, 5);
    let hf: Vec<f32> = (0..n_head * head_dim * cols).map(|i| i as f32).collect();
    let mut w = llama_cpp_permute(&hf, n_head, head_dim, cols);
    assert_ne!(w, hf);
    llm2comp_backbone::unpermute_qk_rows(&mut w, n_head, head_dim, cols);
    assert_eq!(w, hf);
}
