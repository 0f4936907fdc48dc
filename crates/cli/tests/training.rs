//! `llm2comp pretrain` and `llm2comp contrast` end to end on the committed tiny model
//! (`crates/backbone/tests/fixtures/tiny-embed`, a 2-layer Qwen2 with a
//! word-level tokenizer; its config gets a BOS id here): a run writes its
//! metrics, plot, checkpoints and adapters; a stopped-and-resumed run
//! reproduces the uninterrupted loss curve exactly; bad settings and bad
//! data are refused with messages that say what to do; the three stages
//! chain, each saving one adapter that `embed` uses alone, with the values
//! the library computes from that adapter one passage at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{RefPooling, Reference, npy_rows, worst_row_err};

fn model_dir(tmp: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backbone/tests/fixtures/tiny-embed");
    let dst = tmp.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["bos_token_id"] = serde_json::json!(2);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

fn data(tmp: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../backbone/tests/fixtures/tiny-embed/passages.txt");
    let dst = tmp.join("passages.txt");
    std::fs::copy(src, &dst).unwrap();
    dst
}

fn llm2comp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

fn pretrain(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--threads",
        "1",
        "pretrain",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--memory-tokens",
        "2",
        "--lora-r",
        "4",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--max-length",
        "64",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    llm2comp(&args)
}

/// A stopped-and-resumed run (`split`) reproduces the uninterrupted one
/// (`whole`): the same loss curve and byte-identical adapters.
fn assert_resumed_equals_whole(whole: &Path, split: &Path) {
    assert_eq!(
        losses(whole),
        losses(split),
        "the resumed loss curve differs"
    );
    let a = std::fs::read(whole.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(split.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed adapters differ from the uninterrupted run's"
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].to_string()
        })
        .collect()
}

#[test]
fn a_run_writes_everything_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let whole = tmp.path().join("whole");
    // A decaying schedule with a fixed horizon, so stopping at 2 and
    // resuming to 4 must retrace the 4-step run exactly.
    let sched = [
        "--decay",
        "linear",
        "--warmup",
        "1",
        "--schedule-steps",
        "4",
    ];
    let o = pretrain(
        &model,
        &data,
        &whole,
        &[&["--steps", "4", "--save-every", "2"][..], &sched].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "metrics.jsonl",
        "loss.svg",
        "checkpoints/latest",
        "adapter_config.json",
        "adapter_model.safetensors",
        "memory_tokens.safetensors",
        "llm2comp.json",
    ] {
        assert!(whole.join(f).is_file(), "{f} missing");
    }
    assert_eq!(losses(&whole).len(), 4);

    let split = tmp.path().join("split");
    let o = pretrain(
        &model,
        &data,
        &split,
        &[&["--steps", "2", "--save-every", "2"][..], &sched].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let split_s = split.to_str().unwrap();
    let resume = ["--steps", "4", "--save-every", "2", "--resume", split_s];
    let o = pretrain(&model, &data, &split, &[&resume[..], &sched].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_resumed_equals_whole(&whole, &split);

    // Same directory without --resume: refused, pointing at --resume.
    let o = pretrain(&model, &data, &split, &["--steps", "4"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    // A changed setting on resume: refused, naming it.
    let changed = ["--steps", "6", "--lr", "5e-4", "--resume", split_s];
    let o = pretrain(&model, &data, &split, &[&changed[..], &sched].concat());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lr"), "{}", stderr(&o));
}

#[test]
fn bad_settings_and_data_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let out = tmp.path().join("out");
    let cases: [(&[&str], &str); 4] = [
        // No driver here, or no 8th device on a GPU machine: named before any data is read.
        (&["--device", "cuda:7"], "cuda"),
        (&["--lora-targets", "q_proj,qkv"], "qkv"),
        (&["--objective", "mse"], "mse"),
        (&["--max-length", "3"], "--max-length"),
    ];
    for (extra, needle) in cases {
        let o = pretrain(&model, &data, &out, extra);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
    }
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, b"good words here\nbad \xff byte\n").unwrap();
    let o = pretrain(&model, &bad, &out, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("bad.txt") && e.contains("line 2") && e.contains("UTF-8"),
        "{e}"
    );
    // Every passage too short for kl's split: says why nothing is left.
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "sun moon\nsea sky\n").unwrap();
    let o = pretrain(&model, &short, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no passage left"), "{}", stderr(&o));
}

fn contrast(
    model: &Path,
    adapter: &Path,
    out: &Path,
    mode: &str,
    data: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "--threads",
        "1",
        "contrast",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--mode",
        mode,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "3",
        "--mini-batch",
        "2",
        "--lr",
        "1e-3",
        "--max-length",
        "24",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    llm2comp(&args)
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("llm2comp.json")).unwrap()).unwrap()
}

fn embed(model: &Path, adapter: &Path, input: &Path, out: &Path) -> Vec<u8> {
    let o = llm2comp(&[
        "--threads",
        "1",
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(out).unwrap()
}

/// Triples from the passages: query = a passage's first two words,
/// positive = the rest, negative = the next passage.
fn triples(tmp: &Path, data: &Path) -> PathBuf {
    let lines: Vec<String> = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .map(str::to_string)
        .filter(|l| l.split(' ').count() >= 4)
        .collect();
    let triples: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let words: Vec<&str> = l.split(' ').collect();
            let neg = &lines[(i + 1) % lines.len()];
            serde_json::json!({
                "query": words[..2].join(" "),
                "positive": words[2..].join(" "),
                "negative": neg,
            })
            .to_string()
                + "\n"
        })
        .collect();
    let tri = tmp.join("triples.jsonl");
    std::fs::write(&tri, triples).unwrap();
    tri
}

#[test]
fn the_three_stages_chain_and_each_adapter_embeds_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let pre = tmp.path().join("pre");
    let o = pretrain(&model, &data, &pre, &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let ucl = tmp.path().join("ucl");
    let o = contrast(&model, &pre, &ucl, "unsup", &data, &["--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&ucl).len(), 3);
    let m = meta(&ucl);
    assert_eq!(
        (m["stage"].as_str(), m["objective"].as_str()),
        (Some("ucl"), Some("simcse"))
    );
    assert_eq!(
        (m["lora"]["r"].as_u64(), m["lora"]["stage_r"].as_u64()),
        (Some(8), Some(4))
    );
    assert_eq!(m["parent"].as_str(), pre.to_str());

    let tri = triples(tmp.path(), &data);
    let scl = tmp.path().join("scl");
    let o = contrast(
        &model,
        &ucl,
        &scl,
        "sup",
        &tri,
        &["--steps", "2", "--instruction", "Find the rest"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = meta(&scl);
    assert_eq!(
        (m["lora"]["r"].as_u64(), m["lora"]["stage_r"].as_u64()),
        (Some(12), Some(4))
    );
    assert_eq!(m["stage"].as_str(), Some("scl"));

    // Each stage's adapter embeds alone, and each stage changed the embeddings.
    let e: Vec<Vec<u8>> = [&pre, &ucl, &scl]
        .iter()
        .enumerate()
        .map(|(i, a)| embed(&model, a, &data, &tmp.path().join(format!("e{i}.npy"))))
        .collect();
    assert!(
        e[0] != e[1] && e[1] != e[2],
        "a stage left the embeddings unchanged"
    );
    // And each is what its adapter computes: memory pooling, bidirectional,
    // `[BOS] text <mem>` with the BOS id the config gives (tests/support).
    let texts = std::fs::read_to_string(&data).unwrap();
    let texts: Vec<&str> = texts.lines().collect();
    for (i, a) in [&pre, &ucl, &scl].iter().enumerate() {
        let got = npy_rows(&tmp.path().join(format!("e{i}.npy")));
        let want =
            Reference::load(&model, Some(a)).embed(&texts, RefPooling::Memory, false, 512, false);
        let e = worst_row_err(&got, &want);
        // Packed vs alone: f32 rounding only (~1e-7); a wrong value is O(1).
        assert!(
            e <= 1e-5,
            "stage {i}: embed vs one passage at a time: {e:.2e}"
        );
    }

    // Resume: 1 step, then resumed to 3, equals the 3-step run.
    let part = tmp.path().join("ucl-part");
    let o = contrast(&model, &pre, &part, "unsup", &data, &["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let part_s = part.to_str().unwrap().to_string();
    let o = contrast(
        &model,
        &pre,
        &part,
        "unsup",
        &data,
        &["--steps", "3", "--resume", &part_s],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        losses(&ucl),
        losses(&part),
        "the resumed contrastive run differs"
    );
}

#[test]
fn contrast_refuses_bad_settings_and_data_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let pre = tmp.path().join("pre");
    let o = pretrain(&model, &data, &pre, &["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("x");
    let o = contrast(&model, &pre, &out, "unsup", &data, &["--instruction", "a"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--instruction"),
        "{}",
        stderr(&o)
    );
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"query\": \"q\", \"positive\": \"p\"}\n{\"query\": 3}\n",
    )
    .unwrap();
    let o = contrast(&model, &pre, &out, "sup", &bad, &[]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.jsonl:2"), "{}", stderr(&o));
    let missing = tmp.path().join("no-adapter");
    let o = contrast(&model, &missing, &out, "unsup", &data, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-adapter"), "{}", stderr(&o));
    // Contrast trains on CUDA: without a device (here: no driver; on a GPU
    // machine: no 8th device) it fails for want of one, naming the device,
    // before reading any data, and no longer says the stage is CPU-only.
    let mut devices = vec!["cuda:7"];
    if llm2comp_tensor::cuda::device_count() == 0 {
        devices.push("cuda");
    }
    for dev in devices {
        let o = contrast(&model, &pre, &out, "unsup", &data, &["--device", dev]);
        let e = stderr(&o);
        assert!(!o.status.success(), "--device {dev} was accepted: {e}");
        assert!(
            e.contains(&format!("--device {dev}")) && !e.contains("runs on the CPU"),
            "--device {dev}: {e}"
        );
    }
    // --out: a directory of other files is refused, not mixed into.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let o = contrast(&model, &pre, &mine, "unsup", &data, &["--steps", "1"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("is not an llm2comp training run (it holds notes.txt)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pretrain_out_is_its_own_locked_and_restartable() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    // A directory of a user's files: refused, untouched.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let o = pretrain(&model, &data, &mine, &["--steps", "1"]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains(&format!(
                "{} is not empty and is not an llm2comp training run (it holds notes.txt); \
                 choose an empty or new output directory",
                mine.display()
            )),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep"
    );

    // Another process (this test) holds the run lock: refused, naming the directory and pid.
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let lock = llm2comp_train::run_dir::RunLock::acquire(&run).unwrap();
    let o = pretrain(&model, &data, &run, &["--steps", "1"]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains(&format!(
                "{} is in use by another training run (pid {})",
                run.display(),
                std::process::id()
            )),
        "{e}"
    );
    drop(lock);

    // Killed before its first checkpoint (metrics lines, a half-built checkpoint, the dead
    // run's lock file): --resume has nothing to resume and says so; a fresh start runs.
    std::fs::create_dir_all(run.join("checkpoints/.tmp-step-00000004-4242")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "{\"step\":1,\"loss\":9.0}\n").unwrap();
    let run_s = run.to_str().unwrap();
    let o = pretrain(&model, &data, &run, &["--steps", "2", "--resume", run_s]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("it holds no checkpoint yet")
            && e.contains("without --resume to start over"),
        "{e}"
    );
    let o = pretrain(&model, &data, &run, &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&run).len(), 2);
    assert!(run.join("checkpoints/latest").is_file());
}

/// A four-pair STS-B test file laid out as `eval --data-dir` expects.
fn sts_eval_dir(tmp: &Path) -> PathBuf {
    let eval_dir = tmp.join("eval-data");
    std::fs::create_dir_all(eval_dir.join("sts/stsb")).unwrap();
    std::fs::write(
        eval_dir.join("sts/stsb/test.tsv"),
        "score\tsentence1\tsentence2\n4.5\tthe cat sat\tthe cat sat down\n\
         3\tblue sea\tgreen sea\n1\tdog run fast\tstar city night\n0.5\train\tbook\n",
    )
    .unwrap();
    eval_dir
}

/// The controls run through the same pipeline: MNTP (its stages pooled by
/// the mean) and no pretext (the untrained adapter, then stages 2 and 3).
#[test]
fn the_pipeline_runs_the_mntp_and_no_pretext_controls() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let tri = triples(tmp.path(), &data);
    let eval_dir = sts_eval_dir(tmp.path());
    for (objective, extra, label) in [
        (
            "mntp",
            "--mask-token [UNK] --lr 1e-3 --quiet",
            "+ mntp pretext (mean pooling)",
        ),
        ("none", "--quiet", "+ none pretext (memory pooling)"),
    ] {
        let out = tmp.path().join(objective);
        let o = pipeline(&model, &data, &tri, &eval_dir, &out, objective, extra);
        assert!(o.status.success(), "{objective}: {}", stderr(&o));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{objective}: {doc}");
        let table = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(table.contains(label), "{objective}: {table}");
        assert_eq!(losses(&out.join("3-scl")).len(), 2);
    }
}

/// `llm2comp pipeline` on the tiny model, 2 steps a stage, STS-B from `eval_dir`.
fn pipeline(
    model: &Path,
    data: &Path,
    tri: &Path,
    eval_dir: &Path,
    out: &Path,
    objective: &str,
    pretrain_args: &str,
) -> Output {
    llm2comp(&[
        "--threads",
        "1",
        "pipeline",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--objective",
        objective,
        "--pretrain-data",
        data.to_str().unwrap(),
        "--pretrain-steps",
        "2",
        "--ucl-data",
        data.to_str().unwrap(),
        "--ucl-steps",
        "2",
        "--ucl-batch-size",
        "3",
        "--scl-data",
        tri.to_str().unwrap(),
        "--scl-steps",
        "2",
        "--scl-batch-size",
        "3",
        "--mini-batch",
        "2",
        "--memory-tokens",
        "2",
        "--lora-r",
        "4",
        "--max-length",
        "24",
        "--eval-tasks",
        "stsb",
        "--eval-data-dir",
        eval_dir.to_str().unwrap(),
        "--pretrain-args",
        pretrain_args,
        "--ucl-args",
        "--quiet",
        "--scl-args",
        "--quiet",
    ])
}

#[test]
fn the_pipeline_runs_every_stage_then_continues_without_redoing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let tri = triples(tmp.path(), &data);
    let eval_dir = sts_eval_dir(tmp.path());
    let out = tmp.path().join("run");
    let run = || {
        pipeline(
            &model,
            &data,
            &tri,
            &eval_dir,
            &out,
            "kl",
            "--lr 1e-3 --quiet",
        )
    };
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "1-pretext/llm2comp.json",
        "2-ucl/llm2comp.json",
        "3-scl/llm2comp.json",
        "eval/base.json",
        "eval/pretext.json",
        "eval/ucl.json",
        "eval/scl.json",
        "results.md",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let results = std::fs::read_to_string(out.join("results.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&results).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert!(r["scores"]["stsb"]["main_score"].is_f64(), "{r}");
    }
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.contains("+ SCL") && table.contains("stsb"), "{table}");
    assert_eq!(losses(&out.join("3-scl")).len(), 2);

    // The same command again: every stage is found complete, nothing retrains.
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("reusing"), "{}", stderr(&o));
    assert_eq!(losses(&out.join("2-ucl")).len(), 2);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again["rows"], doc["rows"]);
}

/// `pretrain --objective mntp` (the LLM2Vec baseline): a LoRA-only adapter
/// (no memory file, k = 0 in llm2comp.json), a resumed run identical to an
/// uninterrupted one, `embed` using the adapter with mean pooling by
/// default, and the settings that make no sense for MNTP refused.
#[test]
fn mntp_trains_a_lora_only_adapter_that_embed_uses_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let mntp = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "--threads",
            "1",
            "pretrain",
            "--objective",
            "mntp",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lora-r",
            "4",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--max-length",
            "64",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        // The tiny tokenizer has no "_": any one of its tokens serves.
        if !extra.contains(&"--mask-token") {
            a.extend(["--mask-token", "[UNK]"]);
        }
        llm2comp(&a)
    };
    let whole = tmp.path().join("whole");
    let o = mntp(&whole, &["--steps", "4", "--save-every", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&whole).len(), 4);
    assert!(!whole.join("memory_tokens.safetensors").exists());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("llm2comp.json")).unwrap())
            .unwrap();
    assert_eq!(
        (meta["objective"].as_str(), meta["memory_tokens"].as_u64()),
        (Some("mntp"), Some(0))
    );

    let split = tmp.path().join("split");
    let o = mntp(&split, &["--steps", "2", "--save-every", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = split.to_str().unwrap();
    let o = mntp(
        &split,
        &["--steps", "4", "--save-every", "2", "--resume", s],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_resumed_equals_whole(&whole, &split);

    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "wind build old moon\nquiet red song\n").unwrap();
    let embed = |adapter: Option<&Path>, out: &Path| {
        let mut a = vec![
            "--threads",
            "1",
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        if let Some(d) = adapter {
            a.extend(["--adapter", d.to_str().unwrap()]);
        }
        llm2comp(&a)
    };
    let (e1, e0) = (tmp.path().join("mntp.npy"), tmp.path().join("base.npy"));
    let o = embed(Some(&whole), &e1);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(embed(None, &e0).status.success());
    let (r1, r0) = (npy_rows(&e1), npy_rows(&e0));
    assert_eq!(r1.len(), 2);
    assert!(r1.iter().flatten().all(|x| x.is_finite()));
    assert_ne!(r1, r0, "the adapter changed nothing");
    let o = llm2comp(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        whole.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        e1.to_str().unwrap(),
        "--pooling",
        "memory",
    ]);
    assert!(
        stderr(&o).contains("this adapter (LoRA only)"),
        "{}",
        stderr(&o)
    );

    // Stage 2 from the MNTP adapter (mean pooling throughout), then embed.
    let ucl = tmp.path().join("ucl");
    let o = contrast(&model, &whole, &ucl, "unsup", &data, &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!ucl.join("memory_tokens.safetensors").exists());
    let e2 = tmp.path().join("ucl.npy");
    let o = embed(Some(&ucl), &e2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(npy_rows(&e2), r1, "stage 2 changed nothing");

    for (flags, want) in [
        (
            &["--memory-tokens", "4"][..],
            "mntp trains no memory tokens",
        ),
        (
            &["--train-embeddings", "all"][..],
            "mntp trains the adapters only",
        ),
        (&["--mask-rate", "1.5"][..], "--mask-rate 1.5"),
        (&["--device", "cuda"][..], "mntp trains on the CPU for now"),
        (&["--mask-token", "zzz-not-a-word"][..], "is not one token"),
    ] {
        let o = mntp(&tmp.path().join("bad"), flags);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{flags:?}: {}", stderr(&o));
    }
}

#[test]
fn the_pipeline_on_a_missing_device_fails_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let out = tmp.path().join("run");
    // Here: no driver; on a GPU machine: no 8th device.
    let mut devices = vec!["cuda:7"];
    if llm2comp_tensor::cuda::device_count() == 0 {
        devices.push("cuda");
    }
    for dev in devices {
        let o = llm2comp(&[
            "pipeline",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--pretrain-data",
            data.to_str().unwrap(),
            "--device",
            dev,
        ]);
        let e = stderr(&o);
        assert!(!o.status.success(), "--device {dev} was accepted: {e}");
        assert!(e.contains(&format!("--device {dev}")), "{e}");
        assert!(!e.contains("=== eval"), "a stage ran: {e}");
        assert!(!out.exists(), "the run directory was created");
    }
}

/// `pretrain --objective none` writes the untrained starting adapter (the
/// no-pretext control): LoRA B = 0, so embedding with it equals the base
/// model's bidirectional mean pooling; stage 2 trains from it.
#[test]
fn objective_none_writes_the_untrained_adapter_that_stage_2_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let init = tmp.path().join("init");
    let o = pretrain(&model, &data, &init, &["--objective", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!init.join("metrics.jsonl").exists(), "nothing was trained");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(init.join("llm2comp.json")).unwrap())
            .unwrap();
    assert_eq!(
        (meta["objective"].as_str(), meta["memory_tokens"].as_u64()),
        (Some("none"), Some(2))
    );
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "wind build old moon\nquiet red song\n").unwrap();
    let embed = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "--threads",
            "1",
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--pooling",
            "mean",
            "--attention",
            "bidirectional",
        ];
        a.extend_from_slice(extra);
        let o = llm2comp(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        npy_rows(out)
    };
    let with = embed(
        &["--adapter", init.to_str().unwrap()],
        &tmp.path().join("a.npy"),
    );
    let without = embed(&[], &tmp.path().join("b.npy"));
    assert_eq!(with, without, "an untrained adapter changed the model");
    let ucl = tmp.path().join("ucl");
    let o = contrast(&model, &init, &ucl, "unsup", &data, &["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = pretrain(
        &model,
        &data,
        &tmp.path().join("r"),
        &["--objective", "none", "--resume", init.to_str().unwrap()],
    );
    assert!(stderr(&o).contains("nothing to resume"), "{}", stderr(&o));
}

/// `pipeline --config FILE`: the file's settings apply, a flag on the
/// command line wins over the file, and the file is recorded in results.json.
#[test]
fn the_pipeline_reads_a_recipe_and_the_command_line_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (model_dir(tmp.path()), data(tmp.path()));
    let eval_dir = sts_eval_dir(tmp.path());
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "pretrain_steps = 1\nucl_steps = 0\nmemory_tokens = 2\nlora_r = 4\nmax_length = 24\n\
             eval_tasks = \"stsb\"\neval_data_dir = {:?}\neval_limit = 3\n\
             pretrain_args = \"--lr 1e-3 --quiet\"\n",
            eval_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let o = llm2comp(&[
        "--threads",
        "1",
        "pipeline",
        "--config",
        recipe.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--pretrain-data",
        data.to_str().unwrap(),
        "--pretrain-steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        losses(&out.join("1-pretext")).len(),
        2,
        "the command line's --pretrain-steps"
    );
    assert!(!out.join("2-ucl").exists(), "the recipe's ucl_steps = 0");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(doc["eval_limit"], 3);
    assert_eq!(doc["config"].as_str(), recipe.to_str());
    std::fs::write(&recipe, "ucl_stepz = 1\n").unwrap();
    let o = llm2comp(&[
        "pipeline",
        "--config",
        recipe.to_str().unwrap(),
        "--model",
        "m",
        "--out",
        "o",
    ]);
    assert!(
        stderr(&o).contains("unknown setting `ucl_stepz`"),
        "{}",
        stderr(&o)
    );
}
