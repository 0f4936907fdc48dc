#!/usr/bin/env python3
"""Pairs criterion results with PyTorch's (scripts/bench_torch.py) into the
markdown table of docs/benchmarks.md.

ratio = PyTorch time / llm2comp time, so > 1 means llm2comp is faster.
Times are medians on both sides (criterion's median estimate; PyTorch's median
over repeated calls). Throughput columns use the work criterion was told
(FLOPs or bytes), for both.

usage: bench_compare.py TORCH_JSON... [--criterion DIR] [--extra EXTRA_JSON]
"""
import argparse
import json
import pathlib
import sys


def criterion_results(root):
    out = {}
    for est in pathlib.Path(root).glob("**/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        median_s = json.loads(est.read_text())["median"]["point_estimate"] * 1e-9
        out[bench["full_id"]] = (median_s, bench.get("throughput"))
    return out


def fmt_rate(work, seconds):
    if not work:
        return "", ""
    (kind, amount), = work.items()
    unit = "GFLOP/s" if kind == "Elements" else "GB/s"
    return f"{amount / seconds / 1e9:.1f}", unit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("torch_json", nargs="+", help="outputs of bench_torch.py (merged)")
    ap.add_argument("--criterion", default="target/criterion", help="criterion's output folder")
    ap.add_argument("--extra", help="JSON with llm2comp's fused-CE peak (fused-ce-peak)")
    args = ap.parse_args()
    extra = json.loads(pathlib.Path(args.extra).read_text()) if args.extra else {}
    torch = {"seconds": {}}
    for path in args.torch_json:
        part = json.loads(pathlib.Path(path).read_text())
        torch["seconds"].update(part.pop("seconds"))
        torch.update(part)
    ours = criterion_results(args.criterion)
    print(f"PyTorch {torch['torch']}, {torch['threads']} threads, f32, CPU.\n")
    print("| op | shape | llm2comp | PyTorch | unit | llm2comp ms | PyTorch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for bid, t_torch in torch["seconds"].items():
        if bid not in ours:
            print(f"no criterion result for {bid}", file=sys.stderr)
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
        line = f"\nFused CE peak memory (peak RSS growth): PyTorch eager {peak / 2**20:.0f} MiB"
        if "linear_xent_peak_bytes" in extra:
            ours_peak = extra["linear_xent_peak_bytes"]
            line += (f", llm2comp {ours_peak / 2**20:.1f} MiB"
                     f" ({ours_peak / peak:.3f}× PyTorch's)")
        print(line + ".")


if __name__ == "__main__":
    main()
