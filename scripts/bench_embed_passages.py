#!/usr/bin/env python3
"""Builds the passage files of scripts/bench-embed.sh from real Wikipedia text.

short.txt: the first N sentences of wiki1m_head.txt that the SmolLM2 tokenizer
cuts into 16-32 tokens; long.txt: the first M paragraphs of
wikitext2_raw_test.txt with 256-512 tokens. Both keep file order (no sampling),
so rerunning on the same inputs writes the same files. The outputs are
committed under data/bench-embed/ (CC BY-SA 3.0, see LICENSE.md there): a
clone of the project has no /work/shared.

usage: bench_embed_passages.py --shared /work/shared/data --model FILE.gguf --out data/bench-embed
"""
import argparse
import os

from transformers import AutoTokenizer


def pick(path, tok, lo, hi, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if not text:
                continue
            if lo <= len(tok(text)["input_ids"]) <= hi:
                out.append(text)
                if len(out) == n:
                    return out
    raise SystemExit(f"{path}: only {len(out)} passages of {lo}-{hi} tokens, wanted {n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True, help="the data folder with text/")
    ap.add_argument("--model", required=True, help="the SmolLM2 .gguf (for its tokenizer)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--short", type=int, default=256)
    ap.add_argument("--long", type=int, default=32)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(args.model)), gguf_file=os.path.basename(args.model)
    )
    os.makedirs(args.out, exist_ok=True)
    sets = {
        "short.txt": pick(f"{args.shared}/text/wiki1m_head.txt", tok, 16, 32, args.short),
        "long.txt": pick(f"{args.shared}/text/wikitext2_raw_test.txt", tok, 256, 512, args.long),
    }
    for name, texts in sets.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        print(f"{name}: {len(texts)} passages")


if __name__ == "__main__":
    main()
