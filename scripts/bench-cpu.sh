#!/usr/bin/env bash
# Measures every figure of docs/benchmarks.md in one run: the criterion benches
# of llm2comp and the same operations in PyTorch (CPU, f32, same threads), then
# prints the comparison table. Run on an otherwise idle machine.
#
#   PYTHON=/path/to/venv/bin/python scripts/bench-cpu.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
py=${PYTHON:-python3}
out=bench-results
mkdir -p "$out"
"$py" -c 'import torch' 2>/dev/null || {
  echo "bench-cpu.sh: $py has no torch; set PYTHON to an interpreter with torch installed" >&2
  exit 1
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$threads"
export RAYON_NUM_THREADS=$threads
rm -rf target/criterion
cargo bench -p llm2comp-benches 2>&1 | grep -E "^[a-z_]+/|time:|thrpt:" | tee "$out/criterion.txt"
"$py" scripts/bench_torch.py --threads "$threads" > "$out/torch.json"
cargo run --release -q -p llm2comp-benches --bin fused-ce-peak > "$out/ours-peak.json"
"$py" scripts/bench_compare.py "$out/torch.json" target/criterion --extra "$out/ours-peak.json" | tee "$out/table.md"
