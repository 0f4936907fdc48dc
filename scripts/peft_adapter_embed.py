#!/usr/bin/env python3
"""Embeds texts with an llm2comp adapter through PEFT + transformers, to
check that the adapter means in PyTorch what it means in llm2comp (a
stacked adapter from `llm2comp contrast` included: PEFT sees one LoRA of
rank r1 + r2).

The model is transformers' own Llama loaded from the same GGUF, the LoRA
attached by `PeftModel.from_pretrained`, the k memory rows appended to the
input embeddings from `memory_tokens.safetensors`. Each text becomes
`[BOS] text m_1..m_k` (the text's ids from the tokenizer without special
tokens, cut to max_length - 1 - k), run with a 4-D all-true attention mask
(bidirectional; see scripts/golden_compress.py for the check that this mask
is honoured), and the embedding is the mean of the last k final-norm hidden
states. Compares with a float32 .npy from `llm2comp embed` and prints the
largest absolute difference and the smallest cosine between matching rows.

usage: peft_adapter_embed.py MODEL.gguf ADAPTER_DIR TEXTS.txt LLM2COMP.npy
"""
import json
import os
import sys

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    gguf, adapter, texts_path, npy = sys.argv[1:5]
    meta = json.load(open(os.path.join(adapter, "llm2comp.json")))
    k = meta["memory_tokens"]
    max_length = 512
    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = PeftModel.from_pretrained(base, adapter).eval()
    r = model.peft_config["default"].r
    mem = load_file(os.path.join(adapter, "memory_tokens.safetensors"))["memory_tokens"]
    table = model.get_input_embeddings().weight
    bos = tok.bos_token_id
    texts = [t for t in open(texts_path, encoding="utf-8").read().split("\n") if t]
    ours = np.load(npy)
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][: max_length - 1 - k]
            x = torch.cat([table[[bos] + ids], mem]).unsqueeze(0)
            s = x.shape[1]
            full = torch.ones(1, 1, s, s, dtype=torch.bool)
            out = model(inputs_embeds=x, attention_mask=full, output_hidden_states=True)
            rows.append(out.hidden_states[-1][0, -k:].mean(0).numpy())
    theirs = np.stack(rows)
    diff = np.abs(theirs - ours).max()
    cos = (theirs * ours).sum(1) / (np.linalg.norm(theirs, axis=1) * np.linalg.norm(ours, axis=1))
    print(
        f"PEFT LoRA rank {r}, k = {k}, {len(texts)} texts: max |PEFT - llm2comp| = {diff:.3g} "
        f"(largest value {np.abs(ours).max():.3g}), min cosine {cos.min():.7f}"
    )


if __name__ == "__main__":
    main()
