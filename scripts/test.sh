#!/usr/bin/env bash
# The project's test command (README): every test of every crate, and every
# bench run once in test mode so a broken bench cannot hide.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked "$@"
