"""Pairs our GPU benchmark rows with their PyTorch baselines from the same
run (the `BENCH {json}` lines of benches/src/bin/*-gpu.rs and
scripts/bench_gpu_torch.py) and writes a markdown table.

Usage: python3 gpu_table.py LOG... > table.md
Speed-up = PyTorch ms / our ms (> 1: we are faster); memory = our peak bytes /
PyTorch's. Rows of ours with several tilings each get their own line; a row
with a "baseline" field is paired with the PyTorch row of that name.
"""

import json
import sys


def rows(paths):
    for p in paths:
        for line in open(p, errors="replace"):
            if line.startswith("BENCH "):
                yield json.loads(line[6:])


def main(paths):
    all_rows = list(rows(paths))
    torch = {r["name"]: r for r in all_rows if r["impl"].startswith("torch")}
    ours = [r for r in all_rows if r["impl"] == "llm2comp"]
    print("| benchmark | tiling | ours ms | ours TFLOP/s | PyTorch ms | speed-up | ours peak MiB | PyTorch peak MiB | memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ours:
        t = torch.get(r.get("baseline", r["name"]))
        speed = f"{t['ms'] / r['ms']:.2f}x" if t else "-"
        tms = f"{t['ms']:.3f}" if t else "-"
        ours_peak = r.get("peak_bytes")
        t_peak = t.get("peak_bytes") if t else None
        mem = f"{ours_peak / t_peak:.3%}" if ours_peak is not None and t_peak else "-"
        mib = lambda b: f"{b / 2**20:.1f}" if b is not None else "-"
        print(f"| {r['name']} | {r.get('tiling', '-')} | {r['ms']:.3f} | {r.get('tflops', 0):.1f} | {tms} | {speed} | {mib(ours_peak)} | {mib(t_peak)} | {mem} |")


if __name__ == "__main__":
    main(sys.argv[1:])
