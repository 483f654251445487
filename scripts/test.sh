#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, then every test, including the
# tests against a real llama.cpp server and model that scripts/llm.sh fetches.
# Usage: bash scripts/test.sh        (CI runs this with CI=true: missing or changed
#                                     insta snapshots fail instead of being written)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== llama-server and SmolLM2 for the real-model tests (scripts/llm.sh)"
# Downloads and verifies them on a fresh machine (seconds; or about 7-11 minutes where the
# prebuilt server cannot run and is built from source), then reuses the cache outside the repo.
fetch_start=$SECONDS
bash scripts/llm.sh fetch
mapfile -t llm < <(bash scripts/llm.sh path)
export BATON_LLAMA_SERVER=${llm[0]} BATON_LLAMA_MODEL=${llm[1]}
echo "llama-server: $BATON_LLAMA_SERVER ($((SECONDS - fetch_start)) s)"
echo "== cargo test"
cargo test --locked --all-targets
echo "== doctests (the README's examples included)"
cargo test --locked --doc
