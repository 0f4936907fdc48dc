#!/usr/bin/env python3
"""Golden values for the MNTP baseline's step (LLM2Vec's masked next-token
prediction: loss and LoRA gradients), computed with Hugging Face
`transformers` in float64, independently of crates/compress, for its Rust
test crates/compress/tests/golden_mntp.rs.

Regenerate (overwrites the fixtures; numpy seeds make the inputs reproducible):

    /work/venv-torch/bin/python scripts/golden_mntp.py   # about a minute

Reuses golden_compress.py's float64 model loading (RMSNorm and RoPE kept in
float64), its LoRA wrapper (y = W x + (alpha/r) B A x, no dropout) and its
adapter values' construction (r 4, alpha 8 on q, v, o, gate, up, down).

The step, as LLM2Vec's run_mntp.py computes it:
- input `[BOS] c_1..c_T` where c is the passage with some tokens corrupted
  (chosen here with numpy: each text token with probability 0.2, at least
  one per passage; a chosen token becomes the mask id "_" / random id / itself
  with probability 0.8 / 0.1 / 0.1); BIDIRECTIONAL attention (a 4-D all-True
  mask, checked in golden_compress.py to reach SDPA unchanged);
- labels: the original token at chosen positions, -100 elsewhere; the loss is
  transformers' causal-LM shift (logits[:, :-1] against labels[:, 1:]), i.e.
  the token at position j is predicted from the output at j - 1, cross-entropy
  averaged over every chosen token of the batch.

Self-check (asserted): central differences (eps 1e-5) over every element of
layer 0's v_proj lora_A agree with autograd to <= 1e-7 + 1e-5 * max|grad|.

golden.json fields: generator, model, adapter, bos_id, mask_id, vocab_size,
lora {r, alpha, targets}, passages [{ids (t_1..t_T, no BOS), corrupted
(c_1..c_T), labels (per text position: the target id or -100)}], loss, grads
{<adapter key>: {shape, values}}, self_check.
"""
import json
import sys

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers.models.llama import modeling_llama

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import golden_compress as gc  # noqa: E402

OUT = gc.ROOT / "crates/compress/tests/fixtures/golden_mntp"
ARCHS = {"llama": 303, "llama_tied": 404}
LENGTHS = [23, 31, 40]
RATE = 0.2
MASK_ID = 5  # the tiny models' vocabularies have no "_": any fixed id serves the check


def corrupt(rng, ids, vocab):
    chosen = [j for j in range(len(ids)) if rng.random() < RATE] or [int(rng.integers(len(ids)))]
    out, labels = list(ids), [-100] * len(ids)
    for j in chosen:
        u = rng.random()
        if u < 0.8:
            out[j] = MASK_ID
        elif u < 0.9:
            out[j] = int(rng.integers(vocab))
        labels[j] = ids[j]
    return out, labels


def mntp_loss(enc, bos, passages):
    total, count = 0.0, 0
    for p in passages:
        x = torch.tensor([[bos] + p["corrupted"]])
        S = x.shape[1]
        full = torch.ones(1, 1, S, S, dtype=torch.bool)
        logits = enc(input_ids=x, attention_mask=full).logits[0]
        labels = torch.tensor([-100] + p["labels"])
        shift_logits, shift_labels = logits[:-1], labels[1:]
        keep = shift_labels != -100
        total = total + F.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum")
        count += int(keep.sum())
    return total / count


def write_golden(arch, seed):
    base = gc.load_model(arch)
    bos, vocab = base.config.bos_token_id, base.config.vocab_size
    f32, _ = gc.make_inputs(base, seed)
    f32.pop("memory_tokens")
    rng = np.random.default_rng(seed + 1)
    passages = []
    for T in LENGTHS:
        ids = rng.integers(3, vocab, size=T).tolist()
        corrupted, labels = corrupt(rng, ids, vocab)
        passages.append({"ids": ids, "corrupted": corrupted, "labels": labels})
    d = OUT / arch
    d.mkdir(parents=True, exist_ok=True)
    save_file(f32, d / "adapter.safetensors")
    leaves = {k: v.double().requires_grad_(True) for k, v in f32.items()}
    enc = gc.make_encoder(base, leaves)
    keys = list(leaves)
    loss = mntp_loss(enc, bos, passages)
    grads = torch.autograd.grad(loss, [leaves[k] for k in keys])
    print(f"{arch}: loss {loss.item():.12g}", flush=True)

    name = gc.lora_key(0, "v_proj", "A")
    g = dict(zip(keys, grads))[name].reshape(-1)
    saved = leaves[name]
    flat, eps, worst = saved.detach().reshape(-1), 1e-5, 0.0
    with torch.no_grad():
        for j in range(flat.numel()):
            vals = []
            for sgn in (1, -1):
                t = flat.clone()
                t[j] += sgn * eps
                leaves[name] = t.reshape(saved.shape)
                vals.append(mntp_loss(enc, bos, passages).item())
            worst = max(worst, abs((vals[0] - vals[1]) / (2 * eps) - g[j].item()))
    leaves[name] = saved
    scale = g.abs().max().item()
    assert worst <= 1e-7 + 1e-5 * scale, (worst, scale)
    print(f"{arch}: central differences on {name}: max abs diff {worst:.2e} (max grad {scale:.2e})")

    golden = {
        "generator": f"scripts/golden_mntp.py; transformers {transformers.__version__}, "
        f"torch {torch.__version__}, numpy {np.__version__}, safetensors {safetensors.__version__}",
        "model": f"{gc.MODELS}/{arch}",
        "adapter": "adapter.safetensors",
        "bos_id": bos,
        "mask_id": MASK_ID,
        "vocab_size": vocab,
        "lora": {"r": gc.R, "alpha": gc.ALPHA, "targets": gc.TARGETS},
        "passages": passages,
        "loss": loss.item(),
        "grads": {k: gc.tensor_json(v) for k, v in zip(keys, grads)},
        "self_check": {name: {"central_differences_eps": eps, "max_abs_diff": worst, "max_abs_grad": scale}},
    }
    (d / "golden.json").write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(arch, {p.name: p.stat().st_size for p in sorted(d.iterdir())})


def main():
    torch.set_default_dtype(torch.float64)
    modeling_llama.LlamaRMSNorm.forward = gc.rmsnorm_keep_dtype
    modeling_llama.LlamaRotaryEmbedding.forward = gc.rotary_keep_dtype
    for arch, seed in ARCHS.items():
        write_golden(arch, seed)


if __name__ == "__main__":
    main()
