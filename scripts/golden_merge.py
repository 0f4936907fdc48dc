#!/usr/bin/env python3
"""Golden hidden states of merged LLM2Comp models, from Hugging Face
`transformers` loading the merged directories that `llm2comp merge` writes,
for crates/backbone/tests/merge.rs (`merge_matches_transformers_on_the_merged_directory`).

Generated with transformers 5.24.0, torch 2.15.0 (CPU).

The merged directories are not committed: the Rust test rebuilds them from
the committed tiny models (fixtures/golden/llama: untied head, Llama-3 RoPE
scaling; fixtures/golden/qwen2: tied head, q/k/v biases, with the 89-entry
tiny-embed tokenizer, so 8 filler tokens precede the memory tokens) and a
seeded adapter (LoRA r 4 with non-zero B on q/v/o/gate/up/down, 3 random
memory rows; SplitMix64 in tests/support/mod.rs, so the numbers do not depend
on an RNG crate). Regenerate:

    LLM2COMP_MERGE_OUT=/tmp/merged cargo test -p llm2comp-backbone --test merge \
        -- --ignored merge_write_dirs_for_golden
    /work/venv/bin/python scripts/golden_merge.py /tmp/merged \
        crates/backbone/tests/fixtures/merge_golden.json

For each case it loads the directory with AutoTokenizer and AutoModel (the
bare decoder, causal: transformers' default) in float32, checks that the
tokenizer maps `<|mem_i|>` to V+i and that config.json's vocab_size is V+k,
checks with AutoModelForCausalLM that an untied head's k new rows are zero,
then encodes a few texts with the memory tokens appended as strings
(`text + "<|mem_0|>...<|mem_{k-1}|>"`, no special tokens added) and records
the ids and last_hidden_state (7 significant digits).

qwen2's tokenizer is loaded with PreTrainedTokenizerFast instead of
AutoTokenizer: transformers 5 always builds Qwen2Tokenizer for model_type
qwen2 (ignoring tokenizer_config's tokenizer_class), which rebuilds a
byte-level BPE from the vocabulary and cannot represent the word-level test
tokenizer (it drops words and adds <|endoftext|>). A real Qwen2 tokenizer is
that BPE and is unaffected. Both cases are also checked against the
`tokenizers` library reading tokenizer.json directly.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
import tokenizers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

TEXTS = {
    "llama": ["w5 w17 w3 w96 w40", "w88", "w12 w12 w70 w33 w4 w61 w9 w50"],
    "qwen2": ["the cat and a dog", "blue river", "a small red bird sings in the old tree"],
}


def case(d: Path, texts):
    meta = json.loads((d / "llm2comp.json").read_text())
    assert meta["merged"] is True
    v, k = meta["vocab_size"], meta["memory_tokens"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == v + k, (cfg["vocab_size"], v, k)
    loader = PreTrainedTokenizerFast if cfg["model_type"] == "qwen2" else AutoTokenizer
    tok = loader.from_pretrained(d)
    raw = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    mems = [f"<|mem_{i}|>" for i in range(k)]
    got = tok.convert_tokens_to_ids(mems)
    assert got == list(range(v, v + k)), (got, v, k)
    assert len(tok) == v + k, (len(tok), v, k)
    lm = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    head = lm.get_output_embeddings().weight
    assert head.shape[0] == v + k
    if not cfg["tie_word_embeddings"]:
        assert torch.all(head[v:] == 0), "untied head: memory rows must be zero"
    emb = lm.get_input_embeddings().weight
    model = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    out = {"vocab_size": v, "memory_tokens": k, "texts": texts, "ids": [], "hidden": []}
    for t in texts:
        ids = tok(t + "".join(mems), add_special_tokens=False)["input_ids"]
        assert ids[-k:] == list(range(v, v + k)), ids
        assert ids == raw.encode(t + "".join(mems), add_special_tokens=False).ids
        with torch.no_grad():
            h = model(torch.tensor([ids])).last_hidden_state[0]
        out["ids"].append(ids)
        out["hidden"].append([float(f"{x:.7g}") for x in h.flatten().tolist()])
    # The memory rows are where the merge put them.
    out["memory_row_norms"] = [float(f"{x:.7g}") for x in emb[v:].norm(dim=1).tolist()]
    return out


def main():
    root, dst = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    golden = {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "what": "AutoModel last_hidden_state (causal, float32) of merged llm2comp directories; "
        "ids from the merged tokenizer (see the script header) with the memory tokens appended as strings",
        "cases": {name: case(root / name, texts) for name, texts in TEXTS.items()},
    }
    dst.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
