//! The attention kernels' fragment logic, checked without a GPU:
//! `kernels/emu/attention_emu.cpp` compiles `kernels/attention.cu` on the host
//! with an emulation of the warp-level PTX instructions (a fiber per CUDA
//! thread) and compares every kernel version (MMA v1, v2, v3 and the simple
//! kernels) with an f64 reference, forward and backward, causal and
//! bidirectional, GQA, dropout, ragged packed sequences.
//!
//! Runs the emulator's quick set (sequences of 1, 7 and 72 tokens) unless
//! `LLM2COMP_EMU_FULL=1` asks for the full one (adds a 129-token sequence,
//! which spans several 128-row tiles; about 2 minutes on 2 cores). Needs a
//! C++20 compiler (`$CXX`, else `c++`); without one it says SKIPPED on the
//! terminal (past the harness's capture).

use std::path::Path;
use std::process::Command;

use llm2comp_tensor::testing::report_skip;

#[test]
fn attention_kernels_match_the_reference_under_the_host_emulator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src = root.join("kernels/emu/attention_emu.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    // Cargo's scratch directory for integration tests (inside target/).
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attention_emu");
    let built = Command::new(&cxx)
        .args(["-O2", "-std=c++20", "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    let built = match built {
        Ok(o) => o,
        Err(e) => {
            report_skip(&format!("no C++ compiler `{cxx}`: {e}"));
            return;
        }
    };
    assert!(
        built.status.success(),
        "{cxx} could not build {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let full = std::env::var("LLM2COMP_EMU_FULL").is_ok_and(|v| v == "1");
    let mut run = Command::new(&exe);
    if !full {
        run.arg("quick");
    }
    let out = run.output().expect("the emulator runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("0 failures"),
        "emulated kernels differ from the reference:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every version ran: a kernel dropped from the emulator would pass silently.
    for version in ["mma v1", "mma v2", "mma v3", "simple"] {
        assert!(stdout.contains(version), "{version} did not run");
    }
}
