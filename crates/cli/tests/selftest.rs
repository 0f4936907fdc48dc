//! Runs the `llm2comp selftest` binary end to end at a small vocabulary: the
//! whole-block gradient check and the falling loss must both hold.

use std::process::Command;

fn llm2comp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(args)
        .output()
        .expect("the llm2comp binary runs")
}

#[test]
fn selftest_passes_its_gradient_check_and_learns() {
    let out = llm2comp(&[
        "selftest",
        "--steps",
        "4",
        "--vocab",
        "512",
        "--sequences",
        "3",
        "--seq-len",
        "40",
        "--attn-dropout",
        "0.1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "selftest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gradient check"), "{stdout}");
    assert_eq!(
        stdout.matches("rel. gap").count(),
        11,
        "one row per parameter tensor:\n{stdout}"
    );
    assert!(stdout.contains("ok: gradients match"), "{stdout}");
}

#[test]
fn selftest_rejects_a_useless_step_count() {
    let out = llm2comp(&["selftest", "--steps", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--steps must be at least 2"), "{stderr}");
}

#[test]
fn selftest_rejects_an_invalid_dropout_with_the_op_named() {
    let out = llm2comp(&[
        "selftest",
        "--steps",
        "2",
        "--vocab",
        "64",
        "--attn-dropout",
        "1.5",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attention") || stderr.contains("dropout"),
        "{stderr}"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_run_without_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args([
            "selftest",
            "--steps",
            "3",
            "--vocab",
            "64",
            "--seq-len",
            "16",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the llm2comp binary starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut first)
        .expect("one line");
    // The reader (and with it the pipe) is gone now, as with `| head -1`.
    let out = child.wait_with_output().expect("the run ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("llm2comp selftest"), "{first}");
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
}
