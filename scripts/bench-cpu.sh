#!/usr/bin/env bash
# Measures every figure of docs/benchmarks.md in one run: the criterion benches
# of llm2comp and the same operations in PyTorch (CPU, f32, same threads), then
# prints the comparison table. Each op group is measured on both sides back to
# back (llm2comp, then PyTorch) so that a slow spell of a shared machine hits
# both halves of a ratio alike. Run on an otherwise idle machine.
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
echo "rustc: $(rustc --version); torch: $("$py" -c 'import torch; print(torch.__version__)')"
export RAYON_NUM_THREADS=$threads
rm -rf target/criterion "$out"/torch-*.json
cargo bench -p llm2comp-benches --no-run 2>&1 | tail -1
for group in matmul rmsnorm attention linear_xent; do
  cargo bench -q -p llm2comp-benches --bench "$group" 2>&1 | grep -E "^[a-z_]+/|time:|thrpt:" | tee -a "$out/criterion.txt"
  "$py" scripts/bench_torch.py --threads "$threads" --only "$group" > "$out/torch-$group.json"
done
cargo run --release -q -p llm2comp-benches --bin fused-ce-peak > "$out/ours-peak.json"
"$py" scripts/bench_compare.py "$out"/torch-*.json --criterion target/criterion --extra "$out/ours-peak.json" | tee "$out/table.md"
