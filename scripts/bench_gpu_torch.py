"""PyTorch baselines for the GPU benchmarks, run by scripts/gpu-check.sh on
the GPU machine right after our own binaries, so every ratio in
docs/benchmarks.md compares two numbers from the same run on the same card.

Each result is one line `BENCH {json}` with the same names and FLOP counts as
our binaries (benches/src/bin/*-gpu.rs):
  attention: forward FLOPs = 4·B·S²·H·D (halved when causal), backward 2.5×;
  fused CE: the eager version materialises the [N, V] logits, as the authors'
  code does, and its peak memory is what the fused kernel avoids.
Timing: CUDA events, warm-up first, median of the repeats.
"""

import json
import statistics

import sys

import torch
import torch.nn.functional as F


def timed(fn, warmup=3, repeat=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def emit(**kw):
    print("BENCH " + json.dumps(kw), flush=True)


def attention():
    torch.manual_seed(0)
    h, d = 32, 128
    for b, s in [(8, 512), (2, 4096)]:
        for causal in [True, False]:
            q, k, v = (
                torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                for _ in range(3)
            )
            flops = 4 * b * s * s * h * d * (0.5 if causal else 1.0)
            fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            ms_f = timed(fwd)
            o = fwd()
            do = torch.randn_like(o)

            def bwd():
                torch.autograd.grad(o, (q, k, v), do, retain_graph=True)

            ms_b = timed(bwd)
            mode = "causal" if causal else "bidirectional"
            name = f"attention b{b} s{s} h{h} d{d} {mode}"
            emit(impl="torch-sdpa", name=name + " fwd", ms=ms_f, tflops=flops / ms_f / 1e9)
            emit(impl="torch-sdpa", name=name + " bwd", ms=ms_b, tflops=2.5 * flops / ms_b / 1e9)


SHAPES = [(4096, 576, 49152), (8192, 4096, 32000), (8192, 4096, 128256)]


def peak_and_time(step, reps):
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return timed(step, warmup=1, repeat=reps), peak


def fused_losses():
    for n, hid, vocab in SHAPES:
        torch.manual_seed(0)
        reps = 5 if n * hid * vocab > 1 << 32 else 10
        hs = torch.randn(n, hid, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        teacher = torch.randn(n, hid, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(vocab, hid, device="cuda", dtype=torch.bfloat16) * 0.05).requires_grad_()
        tgt = torch.randint(0, vocab, (n,), device="cuda")
        nhv = n * hid * vocab
        shape = f"n{n} h{hid} v{vocab}"

        # The authors' way: materialise the logits, upcast, cross_entropy.
        def ce():
            loss = F.cross_entropy((hs @ w.T).float(), tgt)
            loss.backward()
            loss.item()
            hs.grad = None
            w.grad = None

        ms, peak = peak_and_time(ce, reps)
        emit(impl="torch-eager", name=f"linear_xent fwd+bwd+dw {shape}", ms=ms,
             tflops=6 * nhv / ms / 1e9, peak_bytes=peak)

        def kl():
            with torch.no_grad():
                t_logp = F.log_softmax((teacher @ w.T).float(), dim=-1)
            s_logp = F.log_softmax((hs @ w.T).float(), dim=-1)
            loss = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
            loss.backward()
            loss.item()
            hs.grad = None
            w.grad = None

        ms, peak = peak_and_time(kl, reps)
        emit(impl="torch-eager", name=f"linear_kl fwd+bwd+dw {shape}", ms=ms,
             tflops=8 * nhv / ms / 1e9, peak_bytes=peak)
        del hs, teacher, w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    # `attention`, `losses` or both (default): gpu-check.sh's BENCH_TORCH.
    only = sys.argv[1:] or ["attention", "losses"]
    if "attention" in only:
        attention()
    if "losses" in only:
        fused_losses()
