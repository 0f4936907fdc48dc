//! Peak resident-memory growth of one fused cross-entropy forward + backward
//! at the bench shape, measured the way `scripts/bench_torch.py` measures
//! PyTorch's (peak-RSS mark reset once the inputs exist, then VmHWM after the
//! call minus VmRSS before it), so `docs/benchmarks.md` compares like with
//! like. Prints one JSON object. Linux only (/proc/self).

use llm2comp_benches::random;
use llm2comp_tensor::ops::linear_xent::{self, LinearXentOptions};

const N: usize = 2048;
const H: usize = 576;
const V: usize = 49152;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status exists");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} line in /proc/self/status"));
    kb * 1024
}

fn main() {
    let h = random(&[N, H], 1.0, 1);
    let w = random(&[V, H], 0.05, 2);
    let targets: Vec<i64> = (0..N).map(|i| ((i * 7919) % V) as i64).collect();
    let opts = LinearXentOptions::default();
    // Reset the peak-RSS mark once the inputs exist (Linux: clear_refs 5).
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs is writable");
    let before = status_bytes("VmRSS");
    let (out, dh) =
        linear_xent::forward_backward(&h, &w, &targets, None, None, &opts).expect("valid inputs");
    let after = status_bytes("VmHWM");
    assert!(out.loss.is_finite() && dh.numel() == N * H);
    let reported = linear_xent::workspace_bytes(Default::default(), N, H, V, &opts);
    println!(
        "{{\"linear_xent_peak_bytes\": {}, \"linear_xent_workspace_bytes\": {reported}}}",
        after - before
    );
}
