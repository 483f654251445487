#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, then every test.
# Usage: bash scripts/test.sh        (CI runs this with CI=true: missing or changed
#                                     insta snapshots fail instead of being written)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== doctests (the README's examples included)"
cargo test --locked --doc
