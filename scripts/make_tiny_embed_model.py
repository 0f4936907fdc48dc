#!/usr/bin/env python3
"""Writes crates/backbone/tests/fixtures/tiny-embed/: a tiny random Qwen2 model
(config.json, model.safetensors in bf16), a word-level tokenizer.json whose
ids stay below the model's vocabulary, and passages.txt.

Why these shapes: head_dim 64 (hidden 128 over 2 query heads, 1 KV head) is
what the CUDA tensor-core attention kernels take in bf16, so `llm2comp embed
--device cuda --dtype bf16` on this model runs them; Qwen2 brings the q/k/v
biases, so the device bias broadcast runs too. Weights are stored in bf16 so
the file stays under 1 MB and the f32 and bf16 runs start from identical
weights (their gap is then only activation rounding).

Needs only numpy; deterministic (fixed seed). Usage:
    python3 scripts/make_tiny_embed_model.py [OUT_DIR]
"""

import json
import os
import struct
import sys

import numpy as np

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 128, 192, 2, 2, 1, 64, 97

WORDS = (
    "the a an of to in on at for with from by and or but not is are was were be been "
    "cat dog bird fish tree river mountain city house road car train ship plane "
    "red green blue small large old new fast slow happy quiet bright dark warm cold "
    "run walk swim fly sing read write eat sleep see hear think build grow fall rise "
    "sun moon star rain snow wind cloud sea sky stone gold iron glass paper book song "
    "day night morning evening year"
).split()


def bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), little-endian bytes."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def tensors(rng: np.random.Generator) -> dict:
    def mat(out_f, in_f):
        b = 1.0 / np.sqrt(in_f)
        return rng.uniform(-b, b, size=(out_f, in_f)).astype(np.float32)

    def norm(n):
        return (1.0 + rng.uniform(-0.2, 0.2, size=(n,))).astype(np.float32)

    def bias(n):
        return rng.uniform(-0.1, 0.1, size=(n,)).astype(np.float32)

    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    t = {"model.embed_tokens.weight": rng.uniform(-1, 1, size=(VOCAB, HIDDEN)).astype(np.float32)}
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = norm(HIDDEN)
        t[p + "self_attn.q_proj.weight"] = mat(q, HIDDEN)
        t[p + "self_attn.q_proj.bias"] = bias(q)
        t[p + "self_attn.k_proj.weight"] = mat(kv, HIDDEN)
        t[p + "self_attn.k_proj.bias"] = bias(kv)
        t[p + "self_attn.v_proj.weight"] = mat(kv, HIDDEN)
        t[p + "self_attn.v_proj.bias"] = bias(kv)
        t[p + "self_attn.o_proj.weight"] = mat(HIDDEN, q)
        t[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        t[p + "mlp.gate_proj.weight"] = mat(INTER, HIDDEN)
        t[p + "mlp.up_proj.weight"] = mat(INTER, HIDDEN)
        t[p + "mlp.down_proj.weight"] = mat(HIDDEN, INTER)
    t["model.norm.weight"] = norm(HIDDEN)
    return t


def write_safetensors(path: str, ts: dict) -> None:
    header, blobs, off = {}, [], 0
    for name in sorted(ts):
        b = bf16_bytes(ts[name])
        header[name] = {"dtype": "BF16", "shape": list(ts[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def tokenizer() -> dict:
    vocab = {"[UNK]": 0}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    assert len(vocab) <= VOCAB, len(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }


def passages(rng: np.random.Generator) -> str:
    # Lengths from 1 to 150 words: short and long sequences packed together,
    # several attention tiles long, one a single token.
    lens = [1, 7, 150, 33, 64, 65, 12, 100, 3, 47, 128, 20]
    return "".join(" ".join(rng.choice(WORDS, size=n)) + "\n" for n in lens)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "crates", "backbone", "tests", "fixtures", "tiny-embed")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20260301)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "vocab_size": VOCAB,
        "hidden_act": "silu",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out, "model.safetensors"), tensors(rng))
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer(), f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "passages.txt"), "w") as f:
        f.write(passages(rng))


if __name__ == "__main__":
    main()
