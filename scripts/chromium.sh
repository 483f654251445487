#!/usr/bin/env bash
# Headless Chromium for the fleet page's test (tests/serve_page.rs): installs Debian's
# `chromium` package with apt-get when /usr/bin/chromium is missing, then prints its path.
# Idempotent: with Chromium present it installs nothing. Needs root (or sudo) to install.
set -euo pipefail

bin=/usr/bin/chromium
# The version the fleet page's test was written and checked against. Debian's security archive
# keeps only the newest build, so when this one has been replaced the script says so and
# installs the current bookworm-security build instead.
pin=156.0.8078.129-1~deb12u1
if [ ! -x "$bin" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "chromium.sh: installing Debian's chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    if apt-cache show "chromium=$pin" >/dev/null 2>&1; then
        package="chromium=$pin"
    else
        echo "chromium.sh: chromium $pin is no longer in Debian's archive; installing its current build" >&2
        package=chromium
    fi
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package" fonts-dejavu-core >&2
fi
if [ ! -x "$bin" ]; then
    echo "chromium.sh: $bin is still missing after the install" >&2
    exit 1
fi
echo "$bin"
