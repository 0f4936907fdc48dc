//! `llm2comp merge` and `llm2comp embed --adapter` end to end on the
//! committed tiny Qwen2 (`crates/backbone/tests/fixtures/tiny-embed`, whose
//! 89-entry tokenizer is shorter than its 97-row vocabulary): embedding with
//! the adapter (LoRA as a side path) and with the merged directory give the
//! same vectors, and both equal memory pooling computed here from the
//! library (`[text] <mem_0..k-1>`, bidirectional, mean of the last k rows,
//! text truncated so the whole fits --max-length). With the SmolLM2 GGUF
//! downloaded (scripts/fetch-smollm2.sh), the same on a GGUF base with a BOS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use llm2comp_backbone::{
    AdapterMeta, Input, LoraConfig, LoraTarget, Pass, Pooling, TrainEmbeddings, Transformer,
    load_adapter, model, save_adapter,
};
use llm2comp_tensor::Tensor;

const K: usize = 3;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed")
}

fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "llm2comp failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "llm2comp should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llm2comp-cli-merge-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Values uniform in [−bound, bound) from SplitMix64.
fn uniform(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut z = seed;
    (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

/// Saves a seeded adapter (non-zero B, k random memory rows) for `base` into `dir`.
fn write_adapter(base: &Path, dir: &Path, r: usize, targets: Vec<LoraTarget>) {
    let mut m = model::load_transformer(base).unwrap();
    let cfg = LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        dropout: 0.0,
        targets,
    };
    m.add_lora(&cfg, 7).unwrap();
    let mut seed = 100;
    for block in m.blocks_mut() {
        for &t in &cfg.targets {
            let lora = block.linear_mut(t).lora_mut().unwrap();
            let shape = lora.b.shape().to_vec();
            seed += 1;
            lora.b = Tensor::from_vec(uniform(seed, shape[0] * shape[1], 0.3), &shape).unwrap();
        }
    }
    let h = m.config().hidden_size;
    m.set_extra_rows(Some(
        Tensor::from_vec(uniform(9, K * h, 1.0), &[K, h]).unwrap(),
    ))
    .unwrap();
    let meta = AdapterMeta::new(
        base.display().to_string(),
        &m,
        K,
        &cfg,
        TrainEmbeddings::Memory,
    );
    save_adapter(dir, &m, &meta).unwrap();
}

/// f32 values of a .npy file written by `embed` (header skipped).
fn npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Memory-pooled embeddings computed from the library: [BOS] text (cut to
/// `max_len` − k − BOS tokens) then the memory ids, bidirectional with LoRA.
fn reference(base: &Path, adapter: &Path, texts: &[&str], max_len: usize) -> Vec<f32> {
    let mut m: Transformer = model::load_transformer(base).unwrap();
    let meta = load_adapter(adapter, &mut m).unwrap();
    let tok = model::load_tokenizer(base).unwrap();
    let bos: Vec<u32> = tok.bos_id().into_iter().collect();
    let mut out = Vec::new();
    for t in texts {
        let mut ids = tok.encode(t, false).unwrap();
        ids.truncate(max_len - K - bos.len());
        let ids = [bos.clone(), ids, meta.memory_token_ids.clone()].concat();
        let cu = [0, ids.len() as u32];
        let h = m
            .infer(Input::Ids(&ids), &cu, &Pass::bidirectional())
            .unwrap();
        out.extend(Pooling::LastK(K).forward(&h, &cu).unwrap().0.to_vec_f32());
    }
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn merge_then_embed_equals_embed_with_the_adapter() {
    let dir = tmp("tiny");
    let base = fixture();
    let adapter = dir.join("adapter");
    use LoraTarget::*;
    write_adapter(&base, &adapter, 4, vec![Q, V, O, Gate, Up, Down]);
    let merged = dir.join("merged");
    ok(&llm2comp(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]));
    let passages = base.join("passages.txt");
    let texts = std::fs::read_to_string(&passages).unwrap();
    let texts: Vec<&str> = texts.lines().collect();
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    let common = [
        "--input",
        s(&passages),
        "--max-length",
        "24",
        "--max-batch-tokens",
        "64",
    ];
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec!["embed"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&common);
        args.extend_from_slice(&["--output", s(out)]);
        ok(&llm2comp(&args));
    };
    run(&["--model", s(&base), "--adapter", s(&adapter)], &a);
    run(&["--model", s(&merged)], &b);
    let (va, vb) = (npy(&a), npy(&b));
    assert_eq!(va.len(), texts.len() * 128);
    let want = reference(&base, &adapter, &texts, 24);
    let e_ref = rel_err(&va, &want);
    let e_merged = rel_err(&vb, &va);
    assert!(e_ref < 1e-6, "embed --adapter vs library: {e_ref:e}");
    assert!(e_merged < 1e-5, "merged vs adapter: {e_merged:e}");
    // Without the adapter the vectors differ (the adapter is applied at all).
    let c = dir.join("c.npy");
    run(&["--model", s(&base), "--pooling", "mean"], &c);
    assert!(rel_err(&npy(&c), &va) > 1e-2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_and_embed_refuse_bad_combinations() {
    let dir = tmp("refuse");
    let base = fixture();
    let adapter = dir.join("adapter");
    write_adapter(&base, &adapter, 2, vec![LoraTarget::Q]);
    let merged = dir.join("merged");
    let merge = |force: bool| {
        let mut a = vec![
            "merge",
            "--model",
            s(&base),
            "--adapter",
            s(&adapter),
            "--out",
            s(&merged),
            "--dtype",
            "bf16",
        ];
        if force {
            a.push("--force");
        }
        llm2comp(&a)
    };
    ok(&merge(false));
    let e = stderr(&merge(false));
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    ok(&merge(true));
    force_replaces_only_an_earlier_merge(&merged, &merge);
    let passages = base.join("passages.txt");
    let out = dir.join("x.npy");
    let embed = |extra: &[&str]| {
        let mut a = vec!["embed", "--input", s(&passages), "--output", s(&out)];
        a.extend_from_slice(extra);
        llm2comp(&a)
    };
    let e = stderr(&embed(&["--model", s(&base), "--pooling", "memory"]));
    assert!(
        e.contains("--pooling memory") && e.contains("--adapter"),
        "{e}"
    );
    let e = stderr(&embed(&["--model", s(&merged), "--adapter", s(&adapter)]));
    assert!(e.contains("merged") && e.contains("drop --adapter"), "{e}");
    let e = stderr(&embed(&["--model", s(&adapter)]));
    assert!(
        e.contains("is an adapter") && e.contains("--adapter"),
        "{e}"
    );
    let e = stderr(&embed(&["--model", s(&base), "--adapter", s(&merged)]));
    assert!(e.contains("merged model directory"), "{e}");
    let e = stderr(&embed(&[
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--max-length",
        "3",
    ]));
    assert!(
        e.contains("--max-length 3") && e.contains("memory token"),
        "{e}"
    );
    let e = stderr(&llm2comp(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&dir.join("nope")),
        "--out",
        s(&dir.join("o")),
    ]));
    assert!(e.contains("nope") && e.contains("llm2comp.json"), "{e}");
    assert!(!dir.join("o").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The SmolLM2 GGUF if downloaded (as in tests/embed.rs).
fn smollm2() -> Option<PathBuf> {
    llm2comp_backbone::model::smollm2_gguf()
}

#[test]
fn merge_a_gguf_base_and_embed_with_bos() {
    let Some(gguf) = smollm2() else {
        // Straight to stderr: the harness captures eprintln!, a skip must show.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "merge_a_gguf_base_and_embed_with_bos: SKIPPED (SmolLM2 GGUF not downloaded)"
        );
        return;
    };
    let dir = tmp("gguf");
    let adapter = dir.join("adapter");
    write_adapter(&gguf, &adapter, 2, vec![LoraTarget::Q, LoraTarget::Down]);
    let merged = dir.join("merged");
    ok(&llm2comp(&[
        "merge",
        "--model",
        s(&gguf),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]));
    let input = dir.join("in.txt");
    std::fs::write(
        &input,
        "The capital of France is Paris.\nMemory tokens compress text.\n",
    )
    .unwrap();
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    let emb = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "embed",
            "--input",
            s(&input),
            "--output",
            s(out),
            "--max-length",
            "9",
        ];
        args.extend_from_slice(extra);
        ok(&llm2comp(&args));
    };
    emb(&["--model", s(&gguf), "--adapter", s(&adapter)], &a);
    emb(&["--model", s(&merged)], &b);
    let tok = model::load_tokenizer(&gguf).unwrap();
    assert!(
        tok.bos_id().is_some(),
        "the GGUF case is the one with a BOS"
    );
    let want = reference(
        &gguf,
        &adapter,
        &[
            "The capital of France is Paris.",
            "Memory tokens compress text.",
        ],
        9,
    );
    let (va, vb) = (npy(&a), npy(&b));
    assert!(rel_err(&va, &want) < 1e-6);
    let e = rel_err(&vb, &va);
    assert!(e < 1e-4, "merged vs adapter on SmolLM2: {e:e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `merge --force` replaces an earlier merge output only: a directory of
/// other files, or a merge output a user added files to, is refused and
/// left as it was (it used to be deleted whole).
fn force_replaces_only_an_earlier_merge(
    merged: &Path,
    merge: &dyn Fn(bool) -> std::process::Output,
) {
    let notes = merged.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let e = stderr(&merge(true));
    assert!(
        e.contains("holds files a merge does not write (notes.txt)")
            && e.contains("--force replaces only an earlier merge output"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    std::fs::remove_file(&notes).unwrap();
    // A directory that is not a merge output at all (no merged marker).
    let meta_path = merged.join("llm2comp.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(
        &meta_path,
        meta.replace("\"merged\": true", "\"merged\": false"),
    )
    .unwrap();
    let e = stderr(&merge(true));
    assert!(
        e.contains("is not a merged model directory (no llm2comp.json saying \"merged\": true)"),
        "{e}"
    );
    std::fs::write(&meta_path, meta).unwrap();
    ok(&merge(true));
}
