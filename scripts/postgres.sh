#!/usr/bin/env bash
# A throwaway PostgreSQL 15 on loopback for baton's tests and benchmarks (issue 15).
#
#   eval "$(bash scripts/postgres.sh start)"   # installs if needed, starts, exports BATON_PG_URL
#   bash scripts/postgres.sh stop "$BATON_PG_DIR"
#
# `start` installs Debian's postgresql-15 with apt-get when it is missing (pinned; Debian's
# archive keeps only the newest build of a release, so when the pin is gone the script says so and
# installs the current bookworm build), runs `initdb` into a new temporary directory as an
# unprivileged user (`postgres` when run as root, else the caller), starts the server on
# 127.0.0.1 on a free port with password authentication (a random password, scram-sha-256), and
# prints the two `export` lines to evaluate. The server's log is `$BATON_PG_DIR/log`.
# Idempotent per call: each `start` is a new, empty server.
set -euo pipefail

pin=15.18-0+deb12u1
bin=/usr/lib/postgresql/15/bin

install() {
    if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
        return
    fi
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "postgres.sh: installing Debian's postgresql-15" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    if apt-cache show "postgresql-15=$pin" >/dev/null 2>&1; then
        package="postgresql-15=$pin postgresql-client-15=$pin"
    else
        echo "postgres.sh: postgresql-15 $pin is no longer in Debian's archive; installing its current build" >&2
        package="postgresql-15 postgresql-client-15"
    fi
    # shellcheck disable=SC2086
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends $package >&2
    if [ ! -x "$bin/initdb" ]; then
        echo "postgres.sh: $bin/initdb is still missing after the install" >&2
        exit 1
    fi
}

# Runs a PostgreSQL program as the unprivileged owner of the data directory.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        # From /, which the unprivileged user can enter (the caller's directory may be private).
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    install
    local dir port password
    dir=$(mktemp -d /tmp/baton-pg.XXXXXX)
    chmod 700 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    printf '%s\n' "$password" >"$dir.pw"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir.pw"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U baton --pwfile="$dir.pw" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --no-instructions >"$dir.initdb.log" 2>&1 || {
        cat "$dir.initdb.log" >&2
        exit 1
    }
    rm -f "$dir.pw" "$dir.initdb.log"
    port=$(free_port)
    # Loopback only; the socket directory is the temporary one. Durable commits (fsync on).
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c shared_buffers=64MB" >&2 || {
        cat "$dir/log" >&2
        exit 1
    }
    PGPASSWORD=$password "$bin/psql" -q -h 127.0.0.1 -p "$port" -U baton -d postgres \
        -c "CREATE DATABASE baton" >&2
    echo "export BATON_PG_URL='postgres://baton:$password@127.0.0.1:$port/baton'"
    echo "export BATON_PG_DIR='$dir'"
}

stop() {
    local dir=${1:?usage: postgres.sh stop DIR}
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
*)
    echo "usage: postgres.sh start | stop DIR" >&2
    exit 2
    ;;
esac
