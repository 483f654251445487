#!/usr/bin/env bash
# The Python client's test environment: a venv outside the repo with the exact versions of
# clients/python/requirements-test.txt and the client installed in it (editable).
# Usage: bash scripts/python.sh    prints the venv's python on its last line of standard output.
# Idempotent: the venv's name is a hash of the interpreter's version, of this checkout's path
# (the editable install points at it) and of the files that decide what goes in it, so a warm
# venv is reused in milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
client=$root/clients/python

py=${BATON_PYTHON:-python3}
command -v "$py" >/dev/null || { echo "python.sh: $py not found" >&2; exit 1; }
version=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
hash=$( { echo "$version $client"; cat "$client/requirements-test.txt" "$client/pyproject.toml"; } \
    | sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/baton
venv=$cache/py-$hash
# Written last: a venv whose set-up was cut short is made again.
stamp=$venv/.baton-ready

if [[ ! -f $stamp ]]; then
    echo "python.sh: creating $venv (python $version)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$client/requirements-test.txt" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
        --no-deps -e "$client" >&2
    echo "$client" > "$stamp"
    # Venvs this checkout made before (other requirements) are of no more use.
    for old in "$cache"/py-*; do
        if [[ $old != "$venv" && -f $old/.baton-ready && "$(cat "$old/.baton-ready")" == "$client" ]]; then
            rm -rf "$old"
        fi
    done
fi
echo "$venv/bin/python"
