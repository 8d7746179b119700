#!/usr/bin/env bash
# Builds gitcap for the browser, single-threaded (www/pkg/) and threaded (www/pkg-threads/), the
# embeddable module dist/gitcap/ (www/'s module files, module/'s package.json, declarations and
# README, and the wasm builds), and, unless --wasm-only is given, the native CLI. Idempotent: installs the tools it needs only when
# they are missing or at the wrong version, so CI can run it on a fresh machine.
#
#   ./build.sh              # wasm (both builds) + native CLI
#   ./build.sh --wasm-only  # wasm only (and the module, dist/gitcap/)
#   ./build.sh --module-only # only assemble dist/gitcap/ from www/ as it is (no compiling)
#   ./build.sh --no-threads # skip the threaded wasm builds (they need a nightly toolchain)
#   ./build.sh --no-relaxed # skip the relaxed SIMD builds (www/pkg-relaxed, www/pkg-threads-relaxed)
#   ./build.sh --tools-only # only install the tools (wasm target, nightly + rust-src,
#                           # wasm-bindgen from tools/wasm-bindgen, binaryen)
#   ./build.sh --test       # also run the wasm tests in headless Chromium (installs Debian's
#                           # chromium and chromium-driver if missing); combines with --wasm-only
#   ./build.sh --dev        # the wasm builds with the dev profile (gitcap optimized, its
#                           # dependencies not) and without wasm-opt: what test.sh tests, built
#                           # in a third of the time; slower pages, never for deployment
#   ./build.sh --cuda       # only the native CLI with CUDA (tools/build-cuda.sh: installs the
#                           # CUDA 13 toolkit from PyPI into target/, no GPU needed to build)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

WASM_ONLY=0
THREADS=1
RELAXED=1
TOOLS_ONLY=0
MODULE_ONLY=0
RUN_TESTS=0
DEV=0
for arg in "$@"; do
    case "$arg" in
        --wasm-only) WASM_ONLY=1 ;;
        --no-threads) THREADS=0 ;;
        --no-relaxed) RELAXED=0 ;;
        --tools-only) TOOLS_ONLY=1 ;;
        --module-only) MODULE_ONLY=1 ;;
        --test) RUN_TESTS=1 ;;
        --dev) DEV=1 ;;
        --cuda) exec bash tools/build-cuda.sh ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "build.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [ "$DEV" = 1 ]; then
    PROFILE_FLAG=() PROFILE_DIR=debug
else
    PROFILE_FLAG=(--release) PROFILE_DIR=release
fi

BINARYEN_VERSION=132.0.0
TOOLS=target/tools  # binaryen from npm lives here (target/ is gitignored)
# cargo's output: test.sh builds the page in a target directory of its own (CARGO_TARGET_DIR).
CARGO_OUT=${CARGO_TARGET_DIR:-target}
TARGET=wasm32-unknown-unknown
OUT=www/pkg
# The same flags as .cargo/config.toml's for the wasm target (so `cargo test --target ...` reuses
# this build), given as RUSTFLAGS too: a RUSTFLAGS in the environment would otherwise replace them.
WASM_RUSTFLAGS='-C target-feature=+simd128 --cfg getrandom_backend="wasm_js"'

# The threaded build: WebAssembly threads need std rebuilt with atomics (nightly's build-std) and
# a shared, imported memory with thread-local storage exported for wasm-bindgen's thread set-up.
# 4 GiB maximum: a shared memory cannot grow past the maximum it declares, and git-large in f32
# needs about 1.7 GB.
NIGHTLY=${GITCAP_NIGHTLY:-nightly}
OUT_THREADS=www/pkg-threads
THREADS_RUSTFLAGS='-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 --cfg getrandom_backend="wasm_js"'
for arg in --shared-memory --import-memory --max-memory=4294967296 \
    --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
    THREADS_RUSTFLAGS="$THREADS_RUSTFLAGS -C link-arg=$arg"
done

# Both builds again with relaxed SIMD (Chrome 114+, Firefox 145+; worker.js picks them where the
# engine validates a relaxed SIMD instruction) for the integer kernel's relaxed dot product. The
# crate's relaxed-simd feature enables it function by function, with the same flags as the plain
# build, so each relaxed build shares its plain twin's dependencies and recompiles only gitcap
# (a global +relaxed-simd target feature would rebuild the whole tree: a release wasm build from
# scratch took 53 min here).
OUT_SINGLE_RELAXED=www/pkg-relaxed
OUT_RELAXED=www/pkg-threads-relaxed

# The module: the files of www/ that the page side and the worker import (one implementation,
# shared with the demo page), module/'s package.json, gitcap.d.ts and README.md, and the wasm
# builds www/ has.
MODULE_FILES=(gitcap.js worker.js protocol.js wasm.js model.js storage.js download.js hub.js models.js store_q8.js)
# GITCAP_MODULE_OUT: another folder than dist/gitcap (the tests, which run in parallel, each
# assemble their own).
MODULE_OUT=${GITCAP_MODULE_OUT:-dist/gitcap}
build_module() {
    step "module -> $MODULE_OUT"
    rm -rf "$MODULE_OUT"
    mkdir -p "$MODULE_OUT"
    for f in "${MODULE_FILES[@]}"; do cp "www/$f" "$MODULE_OUT/"; done
    cp module/package.json module/gitcap.d.ts module/README.md "$MODULE_OUT/"
    for d in pkg pkg-relaxed pkg-threads pkg-threads-relaxed; do
        if [ -f "www/$d/gitcap.js" ]; then
            cp -r "www/$d" "$MODULE_OUT/"
            rm -f "$MODULE_OUT/$d/.gitignore" "$MODULE_OUT/$d/package.json"
        fi
    done
    if [ ! -f "$MODULE_OUT/pkg/gitcap.js" ]; then
        echo "build.sh: www/pkg is missing; build the wasm first (bash build.sh --wasm-only)" >&2
        exit 1
    fi
    ls "$MODULE_OUT"
}

step() { printf '\n== [build.sh %dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

if [ "$MODULE_ONLY" = 1 ]; then
    build_module
    exit 0
fi

# --- tools ----------------------------------------------------------------------------------------

step "rust target $TARGET"
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi

if [ "$THREADS" = 1 ]; then
    step "rust $NIGHTLY with rust-src (threaded wasm build)"
    if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
        rustup toolchain install "$NIGHTLY" --profile minimal
    fi
    if ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src'; then
        rustup component add rust-src --toolchain "$NIGHTLY"
    fi
    if ! rustup target list --toolchain "$NIGHTLY" --installed | grep -qx "$TARGET"; then
        rustup target add "$TARGET" --toolchain "$NIGHTLY"
    fi
    rustup run "$NIGHTLY" rustc --version
fi

# wasm-bindgen's CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock: the
# generated glue and the test runner speak a version-specific protocol. tools/wasm-bindgen builds
# it in this workspace (pinned by Cargo.lock) instead of `cargo install wasm-bindgen-cli`, which
# took 34 minutes on CI's two cores; its test runner (the whole CLI crate, as much again to
# compile) only where the wasm tests run.
lock_version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }
WB_VERSION=$(lock_version wasm-bindgen)
if [ -z "$WB_VERSION" ]; then
    echo "build.sh: no wasm-bindgen in Cargo.lock" >&2
    exit 1
fi
have=$(lock_version wasm-bindgen-cli-support)
if [ "$have" != "$WB_VERSION" ]; then
    echo "build.sh: tools/wasm-bindgen builds wasm-bindgen $have but the crate is $WB_VERSION;" \
        "set its wasm-bindgen-cli-support and wasm-bindgen-cli pins to =$WB_VERSION" >&2
    exit 1
fi
WB_FEATURES=()
if [ "$RUN_TESTS" = 1 ] || [ "$TOOLS_ONLY" = 1 ]; then
    WB_FEATURES=(--features test-runner)
fi
step "wasm-bindgen $WB_VERSION (tools/wasm-bindgen${WB_FEATURES:+, with the test runner})"
cargo build -p gitcap-wasm-bindgen "${WB_FEATURES[@]}"
WASM_BINDGEN=$CARGO_OUT/debug/wasm-bindgen
"$WASM_BINDGEN" --version

# binaryen from npm: Debian's (108) miscompiles current rustc output. The dev pages skip wasm-opt.
WASM_OPT="$TOOLS/node_modules/.bin/wasm-opt"
if [ "$DEV" = 0 ] || [ "$TOOLS_ONLY" = 1 ]; then
    step "binaryen $BINARYEN_VERSION (npm)"
    have=$("$WASM_OPT" --version 2>/dev/null | grep -o 'version [0-9]*' | awk '{print $2}' || true)
    if [ "$have" != "${BINARYEN_VERSION%%.*}" ]; then
        mkdir -p "$TOOLS"
        npm install --no-save --no-audit --no-fund --prefix "$TOOLS" "binaryen@$BINARYEN_VERSION"
    fi
    "$WASM_OPT" --version
fi

if [ "$TOOLS_ONLY" = 1 ]; then
    exit 0
fi

# --- wasm -----------------------------------------------------------------------------------------

# wasm-bindgen, then wasm-opt -O3 with the features rustc enables by default for wasm32 (bulk
# memory, non-trapping float-to-int, sign extension, mutable globals, reference types, multivalue)
# plus simd128 (and threads for the threaded build).
bindgen_and_opt() { # RAW_WASM OUT_DIR [extra wasm-opt flags]
    local raw=$1 out=$2
    shift 2
    mkdir -p "$out"
    "$WASM_BINDGEN" --target web --out-dir "$out" --out-name gitcap "$raw"
    [ "$DEV" = 0 ] || return 0
    "$WASM_OPT" -O3 \
        --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$@" \
        "$out/gitcap_bg.wasm" -o "$out/gitcap_bg.wasm.opt"
    mv "$out/gitcap_bg.wasm.opt" "$out/gitcap_bg.wasm"
}

step "cargo rustc --target $TARGET --crate-type cdylib"
RUSTFLAGS="$WASM_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" cargo rustc "${PROFILE_FLAG[@]}" --target "$TARGET" --lib --crate-type cdylib
RAW=$CARGO_OUT/$TARGET/$PROFILE_DIR/gitcap.wasm
step "wasm-bindgen + wasm-opt -> $OUT"
bindgen_and_opt "$RAW" "$OUT"

if [ "$RELAXED" = 1 ]; then
    step "cargo build --target $TARGET, relaxed SIMD"
    RUSTFLAGS="$WASM_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" cargo rustc "${PROFILE_FLAG[@]}" \
        --target "$TARGET" --lib --crate-type cdylib --features relaxed-simd
    step "wasm-bindgen + wasm-opt -> $OUT_SINGLE_RELAXED"
    rm -rf "$OUT_SINGLE_RELAXED"
    bindgen_and_opt "$RAW" "$OUT_SINGLE_RELAXED" --enable-relaxed-simd
else
    rm -rf "$OUT_SINGLE_RELAXED"
fi

if [ "$THREADS" = 1 ]; then
    step "cargo +$NIGHTLY build --target $TARGET --features threads (build-std)"
    # Its own target dir: different flags and std, so neither build invalidates the other.
    RUSTFLAGS="$THREADS_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" cargo "+$NIGHTLY" rustc "${PROFILE_FLAG[@]}" \
        --target "$TARGET" --lib --crate-type cdylib --features threads -Z build-std=panic_abort,std \
        --target-dir target/threads
    RAW_THREADS=target/threads/$TARGET/$PROFILE_DIR/gitcap.wasm
    step "wasm-bindgen + wasm-opt -> $OUT_THREADS"
    rm -rf "$OUT_THREADS"
    bindgen_and_opt "$RAW_THREADS" "$OUT_THREADS" --enable-threads
    # The service worker precaches these (the helper's folder name is a hash).
    (cd "$OUT_THREADS" && find . -type f ! -name '*.d.ts' ! -name files.json | sed 's|^\./||' | sort \
        | node -e 'const l=require("fs").readFileSync(0,"utf8").trim().split("\n");process.stdout.write(JSON.stringify(l)+"\n")' \
        >files.json)
    cat "$OUT_THREADS/files.json"
fi

if [ "$THREADS" = 1 ] && [ "$RELAXED" = 1 ]; then
    step "cargo +$NIGHTLY build --target $TARGET --features threads, relaxed SIMD (build-std)"
    RUSTFLAGS="$THREADS_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" cargo "+$NIGHTLY" rustc "${PROFILE_FLAG[@]}" \
        --target "$TARGET" --lib --crate-type cdylib --features threads,relaxed-simd -Z build-std=panic_abort,std \
        --target-dir target/threads
    step "wasm-bindgen + wasm-opt -> $OUT_RELAXED"
    rm -rf "$OUT_RELAXED"
    bindgen_and_opt "$RAW_THREADS" "$OUT_RELAXED" \
        --enable-threads --enable-relaxed-simd
    (cd "$OUT_RELAXED" && find . -type f ! -name '*.d.ts' ! -name files.json | sed 's|^\./||' | sort \
        | node -e 'const l=require("fs").readFileSync(0,"utf8").trim().split("\n");process.stdout.write(JSON.stringify(l)+"\n")' \
        >files.json)
fi

size() { wc -c <"$1" | tr -d ' '; }
gz() { gzip -9 -c "$1" | wc -c | tr -d ' '; }
step "sizes"
printf '%-36s %10s bytes  (gzip -9: %s)\n' "cargo output ($RAW)" "$(size "$RAW")" "$(gz "$RAW")"
printf '%-36s %10s bytes  (gzip -9: %s)\n' "$OUT/gitcap_bg.wasm" "$(size "$OUT/gitcap_bg.wasm")" "$(gz "$OUT/gitcap_bg.wasm")"
if [ "$THREADS" = 1 ]; then
    printf '%-36s %10s bytes  (gzip -9: %s)\n' "$OUT_THREADS/gitcap_bg.wasm" "$(size "$OUT_THREADS/gitcap_bg.wasm")" "$(gz "$OUT_THREADS/gitcap_bg.wasm")"
fi
if [ "$RELAXED" = 1 ]; then
    printf '%-36s %10s bytes  (gzip -9: %s)\n' "$OUT_SINGLE_RELAXED/gitcap_bg.wasm" "$(size "$OUT_SINGLE_RELAXED/gitcap_bg.wasm")" "$(gz "$OUT_SINGLE_RELAXED/gitcap_bg.wasm")"
fi
if [ "$THREADS" = 1 ] && [ "$RELAXED" = 1 ]; then
    printf '%-36s %10s bytes  (gzip -9: %s)\n' "$OUT_RELAXED/gitcap_bg.wasm" "$(size "$OUT_RELAXED/gitcap_bg.wasm")" "$(gz "$OUT_RELAXED/gitcap_bg.wasm")"
fi

build_module

# --- native ---------------------------------------------------------------------------------------

if [ "$WASM_ONLY" = 0 ]; then
    step "cargo build --features native"
    cargo build --release --features native
    ls -l "$CARGO_OUT/release/gitcap"
fi

# --- wasm tests -----------------------------------------------------------------------------------

if [ "$RUN_TESTS" = 1 ]; then
    step "headless Chromium (Debian's chromium and chromium-driver)"
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
            chromium chromium-driver
    fi
    /usr/bin/chromedriver --version
    step "wasm tests (tests/wasm.rs in headless Chromium)"
    # Reuses the build above; the runner and Chromium's flags come from .cargo/config.toml.
    RUSTFLAGS="$WASM_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" CHROMEDRIVER=/usr/bin/chromedriver \
        cargo test "${PROFILE_FLAG[@]}" --target "$TARGET" --test wasm
fi
