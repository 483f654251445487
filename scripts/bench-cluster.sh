#!/usr/bin/env bash
# The cluster's benchmarks (issue 15), on this machine: throughput with 1, 2 and 3 nodes on one
# PostgreSQL and the rows and WAL bytes per rotation (cargo bench --bench cluster), then failover
# times over repeated SIGKILLs of real `baton serve --cluster` processes
# (clients/python/benches/failover.py).
#   bash scripts/bench-cluster.sh [--trials N]
# Starts a throwaway PostgreSQL unless BATON_PG_URL is set; BATON_BENCH_SESSIONS sets the
# sessions per node (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BATON_PG_URL:-}" ]; then
    eval "$(bash scripts/postgres.sh start)"
    trap 'bash scripts/postgres.sh stop "$BATON_PG_DIR"' EXIT
fi
echo "== cargo bench --bench cluster"
cargo bench --locked --bench cluster
echo "== failover (clients/python/benches/failover.py)"
cargo build --locked --release --bin baton
py=$(bash scripts/python.sh | tail -1)
export BATON_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/release/baton"
(cd clients/python && "$py" benches/failover.py "$@")
