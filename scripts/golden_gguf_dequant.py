#!/usr/bin/env python3
"""Golden values for the GGUF dequantisation tests, from llama.cpp's own
Python package (`pip install gguf`), independent of our Rust code.

Writes crates/backbone/tests/fixtures/dequant.json: for each ggml type, a few
blocks of random bytes (scale fields replaced by finite f16 values) and the
f32 values `gguf.quants.dequantize` gives for them.

usage: python scripts/golden_gguf_dequant.py   (needs numpy and gguf)
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/backbone/tests/fixtures/dequant.json"

# (type, block bytes, byte offsets of f16 scale fields within a block)
TYPES = {
    "F16": (T.F16, 2, []),
    "BF16": (T.BF16, 2, []),
    "Q8_0": (T.Q8_0, 34, [0]),
    "Q4_0": (T.Q4_0, 18, [0]),
    "Q4_1": (T.Q4_1, 20, [0, 2]),
    "Q4_K": (T.Q4_K, 144, [0, 2]),
    "Q5_K": (T.Q5_K, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 210, [208]),
    # Appended after the K-quants so the earlier types' random draws (and
    # so their golden values) are unchanged. Q4_K_M files use these for
    # rows whose length is not a multiple of 256.
    "Q5_0": (T.Q5_0, 22, [0]),
    "Q5_1": (T.Q5_1, 24, [0, 2]),
}


def main():
    rng = np.random.default_rng(7)
    out = {}
    for name, (qt, block_bytes, scales) in TYPES.items():
        n_blocks = 64 if block_bytes == 2 else 4
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        if name == "F16":
            raw = rng.uniform(-4, 4, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        if name == "BF16":
            f = rng.uniform(-4, 4, n_blocks).astype(np.float32).view(np.uint32) >> 16
            raw = f.astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
        for off in scales:
            s = rng.uniform(-2, 2, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
            raw[:, off : off + 2] = s
        values = dequantize(raw.reshape(-1), qt).reshape(-1).astype(np.float32)
        out[name] = {"bytes": raw.reshape(-1).tobytes().hex(), "values": [float(v) for v in values]}
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
