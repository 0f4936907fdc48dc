#!/usr/bin/env python3
"""Pairs criterion results with PyTorch's (scripts/bench_torch.py) into the
markdown table of docs/benchmarks.md.

ratio = PyTorch time / llm2comp time, so > 1 means llm2comp is faster.
Throughput columns use the work criterion was told (FLOPs or bytes).

usage: bench_compare.py TORCH_JSON [CRITERION_DIR] [--extra EXTRA_JSON]
"""
import json
import pathlib
import sys


def criterion_results(root):
    out = {}
    for est in pathlib.Path(root).glob("**/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        mean_s = json.loads(est.read_text())["mean"]["point_estimate"] * 1e-9
        out[bench["full_id"]] = (mean_s, bench.get("throughput"))
    return out


def fmt_rate(work, seconds):
    if not work:
        return "", ""
    (kind, amount), = work.items()
    unit = "GFLOP/s" if kind == "Elements" else "GB/s"
    return f"{amount / seconds / 1e9:.1f}", unit


def main():
    args = sys.argv[1:]
    extra = {}
    if "--extra" in args:
        i = args.index("--extra")
        extra = json.loads(pathlib.Path(args[i + 1]).read_text())
        del args[i : i + 2]
    torch = json.loads(pathlib.Path(args[0]).read_text())
    ours = criterion_results(args[1] if len(args) > 1 else "target/criterion")
    print(f"PyTorch {torch['torch']}, {torch['threads']} threads, f32, CPU.\n")
    print("| op | shape | llm2comp | PyTorch | unit | llm2comp ms | PyTorch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for bid, t_torch in torch["seconds"].items():
        if bid not in ours:
            print(f"| {bid} | (no criterion result) | | | | | {t_torch * 1e3:.2f} | |", file=sys.stderr)
            continue
        t_ours, work = ours[bid]
        group, fn, shape = bid.split("/", 2)
        r_ours, unit = fmt_rate(work, t_ours)
        r_torch, _ = fmt_rate(work, t_torch)
        print(
            f"| {group} {fn} | {shape} | {r_ours} | {r_torch} | {unit} "
            f"| {t_ours * 1e3:.2f} | {t_torch * 1e3:.2f} | {t_torch / t_ours:.2f}× |"
        )
    peak = torch.get("linear_xent_peak_bytes")
    if peak:
        print(f"\nFused CE peak memory: PyTorch eager {peak / 2**20:.0f} MiB (peak RSS growth)", end="")
        if "linear_xent_peak_bytes" in extra:
            ours_peak = extra["linear_xent_peak_bytes"]
            print(f", llm2comp {ours_peak / 2**20:.1f} MiB (peak RSS growth), "
                  f"{ours_peak / peak:.3f}× PyTorch's.")
        else:
            print(".")


if __name__ == "__main__":
    main()
