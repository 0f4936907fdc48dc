//! `llm2comp pretrain` end to end on the committed tiny model
//! (`crates/backbone/tests/fixtures/tiny-embed`, a 2-layer Qwen2 with a
//! word-level tokenizer; its config gets a BOS id here): a run writes its
//! metrics, plot, checkpoints and adapters; a stopped-and-resumed run
//! reproduces the uninterrupted loss curve exactly; bad settings and bad
//! data are refused with messages that say what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    assert_eq!(
        losses(&whole),
        losses(&split),
        "the resumed loss curve differs"
    );
    let a = std::fs::read(whole.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(split.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed adapters differ from the uninterrupted run's"
    );

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
        (&["--device", "cuda"], "CPU"),
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
