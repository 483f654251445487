#!/usr/bin/env bash
# Headless Chromium for the fleet page's test (tests/serve_page.rs): installs Debian's
# `chromium` package with apt-get when /usr/bin/chromium is missing, then prints its path.
# Idempotent: with Chromium present it installs nothing. Needs root (or sudo) to install.
set -euo pipefail

bin=/usr/bin/chromium
if [ ! -x "$bin" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "chromium.sh: installing Debian's chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi
if [ ! -x "$bin" ]; then
    echo "chromium.sh: $bin is still missing after the install" >&2
    exit 1
fi
echo "$bin"
