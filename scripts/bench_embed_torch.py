#!/usr/bin/env python3
"""The PyTorch half of scripts/bench-embed.sh: embeds the same passages with
Hugging Face transformers as a user would, and times it.

The model is read from the same GGUF (`gguf_file=`, dequantised to f32) with
`AutoModel` (the bare LlamaModel: no LM head, like `llm2comp embed`), on the
CPU with `torch.set_num_threads(N)`. Passages are tokenised without special
tokens (as `llm2comp embed` does), truncated at 512, sorted by length and
batched --batch-size at a time (sentence-transformers' policy; its default
size is 32) with right padding and an attention mask; the embedding is the mean of the last hidden
states over the real tokens. One untimed warm-up batch, then one timed pass
over every passage in `torch.inference_mode()`. Tokenisation is not timed (it
is not timed on the llm2comp side either).

Peak RSS: VmHWM of this process after the pass (model loading included), and
the growth of the peak during the pass (VmHWM after minus VmRSS before, the
mark reset through /proc/self/clear_refs once the model is loaded).

usage: bench_embed_torch.py --model F.gguf --threads N --input short.txt
       [--compare ours.npy] > result.json
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def embed_batch(model, tok, texts, max_length):
    enc = tok(
        texts,
        add_special_tokens=False,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--compare", help="llm2comp's embeddings (.npy) of the same passages")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = os.path.abspath(args.model)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    model = AutoModel.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    with open(args.input, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    lens = [
        min(len(ids), args.max_length)
        for ids in tok(texts, add_special_tokens=False)["input_ids"]
    ]
    order = sorted(range(len(texts)), key=lambda i: -lens[i])
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        embed_batch(model, tok, [texts[i] for i in batches[0]], args.max_length)  # warm-up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss_before = status_kib("VmRSS")
        start = time.perf_counter()
        for b in batches:
            e = embed_batch(model, tok, [texts[i] for i in b], args.max_length)
            out[b] = e.numpy()
        secs = time.perf_counter() - start
    tokens = sum(lens)
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "passages": len(texts),
        "tokens": tokens,
        "padded_tokens": sum(max(lens[i] for i in b) * len(b) for b in batches),
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "peak_rss_bytes": status_kib("VmHWM") * 1024,
        "embed_peak_growth_bytes": (status_kib("VmHWM") - rss_before) * 1024,
    }
    if args.compare:
        ours = np.load(args.compare)
        cos = (ours * out).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(out, axis=1))
        result["min_cosine_vs_llm2comp"] = float(cos.min())
        result["max_abs_diff_vs_llm2comp"] = float(np.abs(ours - out).max())
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
