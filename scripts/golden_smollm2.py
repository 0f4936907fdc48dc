#!/usr/bin/env python3
"""Reference outputs of the real SmolLM2-135M-Instruct (Q4_1 GGUF) from Hugging
Face `transformers`, for crates/backbone/tests/smollm2.rs.

The point is independence: transformers reads the GGUF with its own loader
(gguf-py dequantises the Q8_0/Q4_1 blocks, transformers un-permutes llama.cpp's
Q/K rows and maps the names), so our GGUF parser, dequantiser, un-permutation,
config reading and forward pass are all checked at once against code we did
not write. The reference is that model converted to float64 (`model.double()`
on the dequantised f32 weights, which widens them exactly); torch's own f32 run
of the same weights is measured against it and recorded as the yardstick.

Generated with transformers 5.24.0, torch 2.15.0 (CPU), gguf 0.19.0, accelerate 1.15.0
(transformers requires it for GGUF). Regenerate:

    scripts/fetch-smollm2.sh                # prints the GGUF path
    /work/venv/bin/pip install accelerate   # torch, transformers, gguf already there
    /work/venv/bin/python scripts/golden_smollm2.py [GGUF]

Writes crates/backbone/tests/fixtures/smollm2_golden.json: for each text its
token ids (from transformers' GGUF tokenizer, no special tokens added), the
final hidden states of every position (`hidden_states[-1]`, after the final
norm; float64 run, 6 significant digits) and the top-5 next-token ids and
logits at the last position.
"""
import json
import os
import pathlib
import subprocess
import sys

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/backbone/tests/fixtures/smollm2_golden.json"

# Short, and each exercises something: the MODELS.md check, digits split one
# by one by the pre-tokenizer plus punctuation, and the chat special tokens.
TEXTS = [
    "The capital of France is",
    "In 2024, 17 robots painted 3 walls.",
    "<|im_start|>user\nWhat is a memory token?<|im_end|>",
]


def gguf_path():
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    if os.environ.get("LLM2COMP_SMOLLM2_GGUF"):
        return pathlib.Path(os.environ["LLM2COMP_SMOLLM2_GGUF"])
    out = subprocess.run(
        [str(ROOT / "scripts/fetch-smollm2.sh")], check=True, capture_output=True, text=True
    )
    return pathlib.Path(out.stdout.strip().splitlines()[-1])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    path = gguf_path()
    kw = dict(gguf_file=path.name)
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=torch.float32, **kw
    ).eval()
    model64 = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=torch.float32, **kw
    ).eval().double()
    cases = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            r32 = model(x, output_hidden_states=True)
            r64 = model64(x, output_hidden_states=True)
        h64 = r64.hidden_states[-1][0]
        # hidden_states[-1] must be the normed state the LM head reads.
        assert rel(h64 @ model64.lm_head.weight.T, r64.logits[0]) < 1e-12
        last = r64.logits[0, -1]
        top = last.topk(5)
        logp = torch.log_softmax(last, -1)[top.indices[0]].item()
        h32 = r32.hidden_states[-1][0].double()
        case = {
            "text": text,
            "ids": ids,
            "hidden": [float(f"{v:.6g}") for v in h64.flatten().tolist()],
            "top5_ids": top.indices.tolist(),
            "top5_logits": [round(v, 5) for v in top.values.tolist()],
            "top1_logprob": round(logp, 5),
            "torch_f32_vs_f64_rel": {
                "hidden": float(f"{rel(h32, h64):.3g}"),
                "logits": float(f"{rel(r32.logits[0].double(), r64.logits[0]):.3g}"),
            },
        }
        print(text, ids, case["top5_ids"], case["top5_logits"], case["torch_f32_vs_f64_rel"])
        cases.append(case)
    golden = {
        "generator": f"transformers {transformers.__version__} GGUF loader, torch {torch.__version__}",
        "model": path.name,
        "reference": "float64 forward of the dequantised weights (model.double())",
        "hidden_size": model.config.hidden_size,
        "cases": cases,
    }
    OUT.write_text(json.dumps(golden, separators=(",", ":"), ensure_ascii=False) + "\n")
    print(OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
