#!/usr/bin/env python3
"""Golden forward passes from Hugging Face `transformers`, independent of our
Rust code, for crates/backbone/tests/golden_transformers.rs.

Generated with transformers 5.24.0, torch 2.15.0 (CPU), safetensors 0.8.0.
Regenerate (overwrites the fixtures; the seeds make the weights reproducible
for a given torch version):

    /work/venv/bin/pip install transformers safetensors   # torch (CPU) and numpy already there
    /work/venv/bin/python scripts/golden_transformers.py

For each architecture (llama: Llama-3 `rope_scaling` with all three frequency
bands in play, untied LM head; llama_tied: plain RoPE with theta 5e5, LM head
tied to the embeddings; qwen2: q/k/v biases, tied embeddings; mistral:
explicit `head_dim` != hidden/heads, a sliding window longer than any input;
all with grouped-query attention, 4 query heads on 2 KV heads) it builds a tiny model with non-trivial random weights (norm weights and
biases random too, matrices uniform with bound 1/sqrt(in) so activations stay
O(1)), saves it with `save_pretrained(safe_serialization=True)` into
crates/backbone/tests/fixtures/golden/<arch>/ and writes golden.json there:
two token sequences of different lengths, and for each sequence run alone
the final hidden states (`hidden_states[-1]`, after the final norm) and the
logits of every position, from the f32 model (rounded to 7 significant
digits) and from the same weights in float64 (`model.double()`, 10
significant digits; the reference the Rust test compares its f32 forward to).

bf16 checkpoints: llama, llama_tied and qwen2 are also saved in bfloat16
(`model.to(torch.bfloat16)`, round-to-nearest-even) into golden/<arch>_bf16/.
Their weights differ from the f32 ones by that rounding, so they get their own
golden.json, same sequences and layout. Its reference is NOT a bf16 forward:
it is transformers run on the bf16 weights widened exactly to float64 (and to
float32 for the f32 yardstick), i.e. what our loader does (it widens bf16 to
f32 and computes in f32). The "weights" field of golden.json says which.
"""
import copy
import json
import pathlib

import safetensors
import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/backbone/tests/fixtures/golden"

COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="eager",
)

# head_dim 8 with theta 10000: wavelengths 2*pi/inv_freq are 6.3, 63, 628 and
# 6283 positions; with original_max_position_embeddings 128, low/high
# frequency factors 1 and 4, the first is kept (< 32), the second is
# smoothed (between 32 and 128) and the last two are divided by the factor.
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 128,
}

ARCHS = {
    "llama": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            rope_theta=10000.0,
            rope_scaling=LLAMA3_SCALING,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
        ),
        11,
    ),
    "llama_tied": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            rope_theta=500000.0,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
        ),
        44,
    ),
    "qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(rope_theta=1_000_000.0, tie_word_embeddings=True, use_sliding_window=False),
        22,
    ),
    "mistral": (
        MistralConfig,
        MistralForCausalLM,
        dict(rope_theta=10000.0, head_dim=16, sliding_window=4096, tie_word_embeddings=False),
        33,
    ),
}

# The checkpoints also written in bfloat16, into golden/<arch>_bf16/.
BF16 = ["llama", "llama_tied", "qwen2"]

SEQS = [
    [1, 17, 42, 5, 96, 0, 63],
    [1, 88, 3, 3, 51, 29, 70, 12, 95, 44, 8, 61],
]


def randomise(model, seed):
    """Every parameter random and O(1)-scaled; the norms are not ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            u = torch.rand(p.shape, generator=g, dtype=torch.float32) * 2 - 1
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.5 * u)
            elif name.endswith(".bias"):
                p.copy_(0.5 * u)
            elif "embed_tokens" in name or name == "lm_head.weight":
                p.copy_(u)
            else:
                p.copy_(u / p.shape[1] ** 0.5)


def rounded(t, digits):
    return [float(f"{v:.{digits}g}") for v in t.flatten().tolist()]


def run(model, digits):
    out = []
    for ids in SEQS:
        with torch.no_grad():
            r = model(torch.tensor([ids]), output_hidden_states=True)
        out.append(
            {
                "hidden": rounded(r.hidden_states[-1][0], digits),
                "logits": rounded(r.logits[0], digits),
            }
        )
    return out


def save(model, d, model_cls, weights, f32_model, f64_model):
    """Writes `model` (in its own dtype) and the outputs of the two given runs."""
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    f32 = run(f32_model, 7)
    f64 = run(f64_model, 10)
    golden = {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"safetensors {safetensors.__version__}",
        "architecture": model_cls.__name__,
        "weights": weights,
        "seqs": SEQS,
        "f32": f32,
        "f64": f64,
    }
    (d / "golden.json").write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
    print(d.name, sizes)


def main():
    for arch, (cfg_cls, model_cls, extra, seed) in ARCHS.items():
        cfg = cfg_cls(**COMMON, **extra)
        torch.manual_seed(seed)
        model = model_cls(cfg).eval()
        randomise(model, seed)
        if arch in BF16:
            d16 = OUT / f"{arch}_bf16"
            d16.mkdir(parents=True, exist_ok=True)
            copy.deepcopy(model).to(torch.bfloat16).save_pretrained(d16, safe_serialization=True)
            # Reload the checkpoint rather than cast the model: `.to(bfloat16)`
            # also rounds the RoPE inverse-frequency buffer, which no loader
            # of a bf16 checkpoint does (transformers recomputes it).
            load = lambda dtype: model_cls.from_pretrained(d16, dtype=dtype).eval()
            save(
                load(torch.bfloat16),
                d16,
                model_cls,
                "bfloat16 checkpoint; outputs from transformers loading it with "
                "dtype=float32 (f32) and dtype=float64 (f64), i.e. the bf16 weights widened exactly",
                load(torch.float32),
                load(torch.float64),
            )
        save(
            model,
            OUT / arch,
            model_cls,
            "float32 checkpoint; outputs from transformers in float32 (f32) and on the "
            "weights widened to float64 (f64)",
            model,
            copy.deepcopy(model).double(),
        )


if __name__ == "__main__":
    main()
