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

With `--merged DIR` it checks a directory from `llm2comp merge` instead:
transformers' AutoModelForCausalLM and AutoTokenizer load DIR alone (merged
weights, vocabulary extended by `<|mem_0|>`..), the memory tokens go in as
those tokens' ids (checked to be V..V+k-1), the rest as above.

usage: peft_adapter_embed.py MODEL.gguf ADAPTER_DIR TEXTS.txt LLM2COMP.npy
       peft_adapter_embed.py --merged MERGED_DIR TEXTS.txt LLM2COMP.npy
"""
import json
import os
import sys

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def embed(model, x: torch.Tensor, k: int) -> np.ndarray:
    """Mean of the last k final hidden states, all positions attending to all."""
    s = x.shape[1]
    full = torch.ones(1, 1, s, s, dtype=torch.bool)
    out = model(inputs_embeds=x, attention_mask=full, output_hidden_states=True)
    return out.hidden_states[-1][0, -k:].mean(0).numpy()


def compare(what: str, theirs: np.ndarray, ours: np.ndarray) -> None:
    diff = np.abs(theirs - ours).max()
    cos = (theirs * ours).sum(1) / (np.linalg.norm(theirs, axis=1) * np.linalg.norm(ours, axis=1))
    print(
        f"{what}, {len(ours)} texts: max |transformers - llm2comp| = {diff:.3g} "
        f"(largest value {np.abs(ours).max():.3g}), min cosine {cos.min():.7f}"
    )


def merged(directory: str, texts_path: str, npy: str) -> None:
    meta = json.load(open(os.path.join(directory, "llm2comp.json")))
    k = meta["memory_tokens"]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    table = model.get_input_embeddings().weight
    v = table.shape[0] - k
    mem = tok.convert_tokens_to_ids([f"<|mem_{i}|>" for i in range(k)])
    assert mem == list(range(v, v + k)), f"memory tokens map to {mem}, not {v}..{v + k - 1}"
    texts = [t for t in open(texts_path, encoding="utf-8").read().split("\n") if t]
    with torch.no_grad():
        rows = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][: 512 - 1 - k]
            rows.append(embed(model, table[[tok.bos_token_id] + ids + mem].unsqueeze(0), k))
    compare(f"merged directory (vocabulary {v} + {k}), k = {k}", np.stack(rows), np.load(npy))


def main() -> None:
    if sys.argv[1] == "--merged":
        merged(*sys.argv[2:5])
        return
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
            rows.append(embed(model, torch.cat([table[[bos] + ids], mem]).unsqueeze(0), k))
    compare(f"PEFT LoRA rank {r}, k = {k}", np.stack(rows), ours)


if __name__ == "__main__":
    main()
