#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, everything scripts/gpu-check.sh runs on
# the GPU machine, which has no Rust toolchain: the GPU test executable, the
# GPU benchmark binaries and the CLI, stripped, into gpu-bin/ (git-ignored;
# name it in the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bin
rm -rf "$out"
mkdir -p "$out"

# The GPU test target of a crate (`--test gpu`), copied to gpu-bin/NAME:
# the tensor crate's kernels against the CPU ops (gpu-tests), and the
# training steps on CUDA against the CPU's: stage 1 with the whole table
# trained (gpu-tests-compress) and the contrastive step (gpu-tests-contrast).
# The tensor crate cannot depend on the crates above it, hence one
# executable per crate.
gpu_test() {
    local exe
    exe=$(cargo test --release --locked -p "$1" --test gpu --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
    [ -n "$exe" ] || { echo "gpu-build: no GPU test executable from $1" >&2; exit 1; }
    cp "$exe" "$out/$2"
}
gpu_test llm2comp-tensor gpu-tests
gpu_test llm2comp-compress gpu-tests-compress
gpu_test llm2comp-contrast gpu-tests-contrast

# GPU benchmark binaries (each skips cleanly without a device).
bins=()
for f in benches/src/bin/*-gpu.rs; do
    [ -e "$f" ] && bins+=(--bin "$(basename "$f" .rs)")
done
if [ ${#bins[@]} -gt 0 ]; then
    cargo build --release --locked -p llm2comp-benches "${bins[@]}"
    for b in "${bins[@]}"; do
        [ "$b" = --bin ] || cp "target/release/$b" "$out/"
    done
fi
cargo build --release --locked -p llm2comp-cli
cp target/release/llm2comp "$out/"

strip "$out"/*
cp scripts/gpu-check.sh scripts/gpu-profile.sh scripts/bench_gpu_torch.py scripts/bench_pretrain_torch.py \
    scripts/gpu_table.py "$out/"
# The tiny model gpu-check.sh embeds on CUDA and on the CPU.
cp -r crates/backbone/tests/fixtures/tiny-embed "$out/"
du -sh "$out"
ls -l "$out"
