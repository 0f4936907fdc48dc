#!/usr/bin/env python3
"""PyTorch baselines for docs/benchmarks.md, on the CPU, f32, same thread count.

Each entry times the same operation as the criterion bench with the same id
(group/function/parameter), so scripts/bench_compare.py can pair them. Times
are medians over repeated calls after a warm-up. Backward passes are timed
alone: the graph is built once and `torch.autograd.grad(..., retain_graph=True)`
is called repeatedly.

usage: bench_torch.py --threads N [--only GROUP ...] > torch.json
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def timeit(fn, min_time=2.0, max_iters=50):
    fn()  # warm-up (allocations, kernel selection)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rand(*shape, scale=1.0):
    return (torch.rand(*shape) * 2 - 1) * scale


def matmul():
    out = {}
    for m, k, n in [(512, 576, 1536), (2048, 4096, 4096)]:
        x, w, dy = rand(m, k), rand(n, k, scale=0.05), rand(m, n)
        dw = torch.zeros(n, k)
        pid = f"{m}x{k}x{n}"
        out[f"matmul/x_wt/{pid}"] = timeit(lambda: F.linear(x, w))
        out[f"matmul/dy_w/{pid}"] = timeit(lambda: dy @ w)
        out[f"matmul/dyt_x/{pid}"] = timeit(lambda: dw.addmm_(dy.t(), x))
    return out


def rmsnorm():
    out = {}
    for rows, dim in [(4096, 576), (4096, 4096)]:
        x = rand(rows, dim).requires_grad_()
        w = rand(dim)
        dy = rand(rows, dim)
        pid = f"{rows}x{dim}"
        out[f"rmsnorm/forward/{pid}"] = timeit(lambda: F.rms_norm(x.detach(), (dim,), w, 1e-5))
        y = F.rms_norm(x, (dim,), w, 1e-5)
        out[f"rmsnorm/backward/{pid}"] = timeit(
            lambda: torch.autograd.grad(y, x, dy, retain_graph=True)
        )
    return out


def attention():
    out = {}
    hq, hkv, d = 9, 3, 64  # SmolLM2-135M's attention
    for t in [128, 512, 2048]:
        for causal in [True, False]:
            # [T, H, D] as llm2comp packs it, viewed as [1, H, T, D] for SDPA.
            q = rand(t, hq, d).transpose(0, 1).unsqueeze(0).requires_grad_()
            k = rand(t, hkv, d).transpose(0, 1).unsqueeze(0).requires_grad_()
            v = rand(t, hkv, d).transpose(0, 1).unsqueeze(0).requires_grad_()
            mode = "causal" if causal else "bidirectional"
            pid = f"{mode}-{t}"
            sdpa = lambda: F.scaled_dot_product_attention(  # noqa: E731
                q, k, v, is_causal=causal, enable_gqa=True
            )
            with torch.no_grad():
                out[f"attention/forward/{pid}"] = timeit(sdpa)
            o = sdpa()
            do = torch.rand_like(o)
            out[f"attention/backward/{pid}"] = timeit(
                lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
            )
    return out


CE_SHAPE = (2048, 576, 49152)


def ce_step(h, w, t):
    logits = h @ w.t()
    loss = F.cross_entropy(logits, t)
    (dh,) = torch.autograd.grad(loss, h)
    return loss, dh


def linear_xent():
    n, hdim, v = CE_SHAPE
    h = rand(n, hdim).requires_grad_()
    w = rand(v, hdim, scale=0.05)
    t = torch.randint(0, v, (n,))
    return {f"linear_xent/forward_backward/{n}x{hdim}x{v}": timeit(lambda: ce_step(h, w, t))}


def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def ce_peak_bytes():
    """Peak RSS growth of one eager CE step in a fresh process, inputs excluded:
    the peak-RSS mark is reset once the inputs exist (clear_refs 5), then
    VmHWM after the step minus VmRSS before it. fused-ce-peak does the same."""
    n, hdim, v = CE_SHAPE
    h = rand(n, hdim).requires_grad_()
    w = rand(v, hdim, scale=0.05)
    t = torch.randint(0, v, (n,))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    ce_step(h, w, t)
    print((status_kib("VmHWM") - before) * 1024)


GROUPS = {"matmul": matmul, "rmsnorm": rmsnorm, "attention": attention, "linear_xent": linear_xent}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--only", nargs="*", default=list(GROUPS))
    ap.add_argument("--ce-peak", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ce_peak:
        ce_peak_bytes()
        return
    results = {"torch": torch.__version__, "threads": args.threads, "seconds": {}}
    for g in args.only:
        results["seconds"].update(GROUPS[g]())
        print(f"torch: {g} done", file=sys.stderr)
    if "linear_xent" in args.only:
        peak = subprocess.run(
            [sys.executable, __file__, "--threads", str(args.threads), "--ce-peak"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        results["linear_xent_peak_bytes"] = int(peak)
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
