#!/usr/bin/env python3
"""Combines several runs of scripts/bench-cpu.sh (their table.md files) into
one table: per op, the median llm2comp and PyTorch times and the median,
lowest and highest of the per-run ratios. On a shared machine a single run's
ratio can move by a third; the spread over runs says how far to trust it.

usage: bench_aggregate.py RUN1/table.md RUN2/table.md ...
"""
import statistics
import sys


def rows(path):
    out = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or not cells[-1].endswith("×"):
            continue
        op, shape, ours_rate, torch_rate, unit, ours_ms, torch_ms, ratio = cells
        out[(op, shape)] = (
            unit,
            float(ours_ms),
            float(torch_ms),
            float(ratio.rstrip("×")),
            float(ours_rate),
            float(torch_rate),
        )
    return out


def main():
    runs = [rows(p) for p in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    print(
        f"{len(runs)} runs. Rates and times are medians over the runs; "
        "ratio = PyTorch time / llm2comp time, per run.\n"
    )
    print(
        "| op | shape | llm2comp | PyTorch | unit | llm2comp ms | PyTorch ms "
        "| ratio (median) | ratio (min–max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        ours = statistics.median(r[k][1] for r in runs)
        torch = statistics.median(r[k][2] for r in runs)
        ratios = [r[k][3] for r in runs]
        rate_ours = statistics.median(r[k][4] for r in runs)
        rate_torch = statistics.median(r[k][5] for r in runs)
        print(
            f"| {k[0]} | {k[1]} | {rate_ours:.1f} | {rate_torch:.1f} | {runs[0][k][0]} "
            f"| {ours:.2f} | {torch:.2f} | {statistics.median(ratios):.2f}× "
            f"| {min(ratios):.2f}–{max(ratios):.2f}× |"
        )


if __name__ == "__main__":
    main()
