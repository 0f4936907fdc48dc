//! A passage far longer than `--max-length` costs memory for the tokens
//! kept, not for the whole line: one 50 MB line used to take 6.6 GB, as the
//! whole passage was tokenised before truncation. Its own test binary, so the
//! child's peak memory is the only thing measured.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../backbone/tests/fixtures");

/// The child's peak resident set (VmHWM) in bytes, read while it runs: the
/// figure is a high-water mark, so the last reading before exit is its peak.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[test]
fn a_40_mb_line_is_cut_before_it_is_tokenised() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc to read the child's peak memory from");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    // Words the tiny model's tokenizer knows, 40 MB of them on line 2.
    let words = "wind build old moon quiet red song ";
    let long = words.repeat((40 << 20) / words.len());
    std::fs::write(&input, format!("short line\n{long}\nlast line\n")).unwrap();
    let out = dir.path().join("e.npy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm2comp"))
        .args(["--threads", "1", "embed", "--model"])
        .arg(Path::new(FIXTURES).join("tiny-embed"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        peak = peak.max(vm_hwm(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("1 passage(s) were longer than --max-length"),
        "{stderr}"
    );
    // The line itself is read once (40 MB); tokenising all of it took GBs.
    assert!(
        peak < 200 << 20,
        "embedding a 40 MB line peaked at {} MB",
        peak >> 20
    );
    eprintln!("peak resident memory: {} MB", peak >> 20);
}
