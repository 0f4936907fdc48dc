#!/usr/bin/env bash
# One compression training step (kl, k = 8) of llm2comp against the authors'
# PyTorch formulation (scripts/bench_pretrain_torch.py: two model copies,
# materialised [B, S, V] logits, PEFT LoRA, the whole encoder embedding
# trainable) on the SAME batches: our run dumps every step's passages and
# splits (--dump-batches) and the PyTorch step replays them. Both on the CPU,
# f32, the same thread count. Prints per-step times, the ratio of medians
# and both processes' peak RSS, and writes OUT/summary.json.
#
#   scripts/bench-pretrain.sh [OUT=target/bench-pretrain]
#   env: PYTHON (a venv with torch, transformers, peft, gguf), GGUF (SmolLM2;
#        default: scripts/fetch-smollm2.sh), THREADS=2, WARMUP=1, STEPS=5,
#        BATCH=4, MAX_LENGTH=256, DATA=data/pretrain/wikitext2_test_paragraphs.txt,
#        TRAIN_EMBEDDINGS=all (as the authors; the PyTorch side always trains the
#        whole encoder embedding) or memory (our default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-pretrain}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-1}
STEPS=${STEPS:-5}
BATCH=${BATCH:-4}
MAX_LENGTH=${MAX_LENGTH:-256}
DATA=${DATA:-data/pretrain/wikitext2_test_paragraphs.txt}
TRAIN_EMBEDDINGS=${TRAIN_EMBEDDINGS:-all}
GGUF=${GGUF:-$(bash scripts/fetch-smollm2.sh)}
rm -rf "$OUT" && mkdir -p "$OUT"

cargo build --release -q -p llm2comp-cli
echo "== llm2comp ($THREADS threads)" >&2
/usr/bin/time -v -o "$OUT/ours.time" target/release/llm2comp --threads "$THREADS" pretrain \
  --model "$GGUF" --data "$DATA" --out "$OUT/ours" --objective kl \
  --steps $((WARMUP + STEPS)) --batch-size "$BATCH" --max-length "$MAX_LENGTH" \
  --train-embeddings "$TRAIN_EMBEDDINGS" --dump-batches "$OUT/batches.jsonl" --log-every 1 2>&1 | tee "$OUT/ours.log" >&2

echo "== PyTorch reference ($THREADS threads)" >&2
"$PYTHON" scripts/bench_pretrain_torch.py --gguf "$GGUF" --batches "$OUT/batches.jsonl" \
  --objective kl --warmup "$WARMUP" --steps "$STEPS" --threads "$THREADS" \
  --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log" >&2

"$PYTHON" - "$OUT" "$WARMUP" <<'PY'
import json, re, statistics, sys
out, warm = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(f"{out}/ours/metrics.jsonl")]
ours = [r["tokens"] / r["tokens_per_s"] for r in rows][warm:]
torch = json.load(open(f"{out}/torch.json"))
theirs = torch["step_seconds"]
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/ours.time").read()).group(1)) / 1024
o, t = statistics.median(ours), statistics.median(theirs)
text = sum(r["tokens"] for r in rows[warm:])
s = {
    "steps_timed": len(ours), "ours_step_s": ours, "torch_step_s": theirs,
    "ours_median_s": o, "torch_median_s": t, "speedup": t / o,
    "per_step_speedup": [b / a for a, b in zip(ours, theirs)],
    "text_tokens": text, "ours_text_tok_s": text / sum(ours), "torch_text_tok_s": torch["text_tokens"] / sum(theirs),
    "ours_peak_rss_mib": rss, "torch_peak_rss_mib": torch["peak_rss_mib"],
    "rss_ratio": rss / torch["peak_rss_mib"], "ours_losses": [r["loss"] for r in rows], "torch_losses": torch["losses"],
    "torch": torch["torch"], "threads": torch["threads"],
}
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
print(f"step (median of {len(ours)}): llm2comp {o:.2f} s, PyTorch {t:.2f} s -> {t/o:.2f}x "
      f"(per step {', '.join(f'{x:.2f}' for x in s['per_step_speedup'])})")
print(f"text tokens/s: llm2comp {s['ours_text_tok_s']:.1f}, PyTorch {s['torch_text_tok_s']:.1f}")
print(f"peak RSS: llm2comp {rss:.0f} MiB, PyTorch {torch['peak_rss_mib']:.0f} MiB -> {rss/torch['peak_rss_mib']:.2f}x")
print(f"losses: llm2comp {[round(x, 4) for x in s['ours_losses']]}\n        PyTorch  {[round(x, 4) for x in s['torch_losses']]}")
PY
