#!/usr/bin/env bash
# Embedding throughput and peak memory of `llm2comp embed` against Hugging Face
# transformers on the same passages, the same GGUF model (f32), the same thread
# count, measured back to back in one run (docs/benchmarks.md, "Embedding
# throughput"). Each run embeds the short set then the long set
# (data/bench-embed/), llm2comp first then PyTorch; RUNS runs (default 3) are
# summarised as the median and the min-max of each figure.
#
# llm2comp's figures: tokens/s as `llm2comp embed` prints it (the embed call
# only: tokenising and loading excluded), peak RSS from `/usr/bin/time -v`
# (the whole process, loading included). PyTorch's: scripts/bench_embed_torch.py.
#
#   PYTHON=/work/venv/bin/python scripts/bench-embed.sh MODEL.gguf [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: PYTHON=... scripts/bench-embed.sh MODEL.gguf [THREADS]}
threads=${2:-2}
runs=${RUNS:-3}
py=${PYTHON:-python3}
out=bench-results/embed
mkdir -p "$out"
"$py" -c 'import torch, transformers, gguf, accelerate' 2>/dev/null || {
  echo "bench-embed.sh: $py lacks torch, transformers, gguf or accelerate" >&2
  exit 1
}
[ -x /usr/bin/time ] || { echo "bench-embed.sh: needs /usr/bin/time (GNU time) for peak RSS" >&2; exit 1; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$threads"
echo "rustc: $(rustc --version); $("$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
echo "llm2comp: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+changes')"
cargo build --release -q -p llm2comp-cli
bin=${CARGO_TARGET_DIR:-target}/release/llm2comp
export RAYON_NUM_THREADS=$threads
rm -f "$out"/run-*.json
for run in $(seq 1 "$runs"); do
  for set in short long; do
    input=data/bench-embed/$set.txt
    log=$out/$set-ours.log
    /usr/bin/time -v "$bin" --threads "$threads" embed --model "$model" --input "$input" \
      --output "$out/$set.npy" --pooling mean --attention causal 2> "$log"
    ours=$(grep -oE '^embedded .*tokens/s' "$log")
    rss_kib=$(grep -oE 'Maximum resident set size \(kbytes\): [0-9]+' "$log" | grep -oE '[0-9]+$')
    # 8 long passages a batch: 32 (sentence-transformers' default) would pad
    # this set to 1.6x its tokens; 8 pads it to 1.12x (short at 32: 1.04x).
    batch=32; [ "$set" = long ] && batch=8
    "$py" scripts/bench_embed_torch.py --model "$model" --threads "$threads" --input "$input" \
      --batch-size "$batch" --compare "$out/$set.npy" 2>/dev/null > "$out/$set-torch.json"
    "$py" - "$set" "$run" "$ours" "$rss_kib" "$out/$set-torch.json" > "$out/run-$run-$set.json" <<'PY'
import json, re, sys
name, run, ours, rss_kib, torch_json = sys.argv[1:]
m = re.search(r"embedded (\d+) passages \((\d+) tokens\) in ([0-9.]+) s \((\d+) tokens/s", ours)
t = json.load(open(torch_json))
r = {"set": name, "run": int(run), "tokens": int(m[2]), "ours_seconds": float(m[3]),
     "ours_tokens_per_s": int(m[2]) / float(m[3]), "ours_peak_rss_bytes": int(rss_kib) * 1024,
     "torch": t}
assert r["tokens"] == t["tokens"], f"token counts differ: llm2comp {r['tokens']}, transformers {t['tokens']}"
json.dump(r, sys.stdout)
PY
    echo "run $run $set (load average $(cut -d' ' -f1-3 /proc/loadavg)): $ours; peak RSS $((rss_kib / 1024)) MiB | transformers $("$py" -c "import json; t=json.load(open('$out/$set-torch.json')); print(f\"{t['tokens_per_s']:.0f} tokens/s; peak RSS {t['peak_rss_bytes']>>20} MiB; min cos vs llm2comp {t['min_cosine_vs_llm2comp']:.5f}\")")"
  done
done
"$py" - "$out"/run-*.json <<'PY' | tee "$out/table.md"
import json, statistics, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
f32_weights = 134_515_008 * 4  # SmolLM2-135M's parameters in f32
mib = lambda b: b / 2**20
print(f"{len({r['run'] for r in rows})} runs; median (min-max). f32 weights: {mib(f32_weights):.1f} MiB\n")
print("| passages | tokens | llm2comp tokens/s | transformers tokens/s | ratio | llm2comp peak RSS | × f32 weights | transformers peak RSS |")
print("|---|---|---|---|---|---|---|---|")
for name in ["short", "long"]:
    rs = [r for r in rows if r["set"] == name]
    if not rs:
        continue
    def stat(xs, fmt):
        return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"
    ours = [r["ours_tokens_per_s"] for r in rs]
    theirs = [r["torch"]["tokens_per_s"] for r in rs]
    ratio = [a / b for a, b in zip(ours, theirs)]
    rss = [r["ours_peak_rss_bytes"] for r in rs]
    trss = [r["torch"]["peak_rss_bytes"] for r in rs]
    print(f"| {name} ({rs[0]['torch']['passages']}) | {rs[0]['tokens']} | {stat(ours, lambda v: f'{v:.0f}')} "
          f"| {stat(theirs, lambda v: f'{v:.0f}')} | {stat(ratio, lambda v: f'{v:.2f}×')} "
          f"| {stat(rss, lambda v: f'{mib(v):.0f} MiB')} | {max(rss) / f32_weights:.2f}× (max) "
          f"| {stat(trss, lambda v: f'{mib(v):.0f} MiB')} |")
PY
