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
echo "== Chromium for the fleet page's test (scripts/chromium.sh)"
bash scripts/chromium.sh
echo "== PostgreSQL 15 on loopback for the journal's second store and the cluster (scripts/postgres.sh)"
# A new, empty server in a temporary directory, stopped when the suite ends. A BATON_PG_URL
# already set (a developer's own server) is used as it is.
if [ -z "${BATON_PG_URL:-}" ]; then
    eval "$(bash scripts/postgres.sh start)"
    trap 'bash scripts/postgres.sh stop "$BATON_PG_DIR"' EXIT
fi
echo "== cargo test"
cargo test --locked --all-targets
echo "== doctests (the README's examples included)"
cargo test --locked --doc
echo "== the Python client (clients/python) against a real baton serve"
# The venv lives outside the repo (scripts/python.sh); the suite starts its own servers from
# this binary, on 127.0.0.1 only.
cargo build --locked --bin baton
py=$(bash scripts/python.sh | tail -1)
export BATON_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/baton"
(cd clients/python && "$py" -m mypy --strict src examples && "$py" -m pytest -q -p no:cacheprovider)
