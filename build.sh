#!/usr/bin/env bash
# Builds gitcap for the browser (www/pkg/gitcap.js + gitcap_bg.wasm) and, unless --wasm-only is
# given, the native CLI. Idempotent: installs the tools it needs only when they are missing or at
# the wrong version, so CI can run it on a fresh machine.
#
#   ./build.sh              # wasm + native CLI
#   ./build.sh --wasm-only  # wasm only
#   ./build.sh --tools-only # only install the tools (wasm target, wasm-bindgen-cli, binaryen)
#   ./build.sh --test       # also run the wasm tests in headless Chromium (installs Debian's
#                           # chromium and chromium-driver if missing); combines with --wasm-only
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

WASM_ONLY=0
TOOLS_ONLY=0
RUN_TESTS=0
for arg in "$@"; do
    case "$arg" in
        --wasm-only) WASM_ONLY=1 ;;
        --tools-only) TOOLS_ONLY=1 ;;
        --test) RUN_TESTS=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

BINARYEN_VERSION=132.0.0
TOOLS=target/tools  # binaryen from npm lives here (target/ is gitignored)
TARGET=wasm32-unknown-unknown
OUT=www/pkg
# The same flags as .cargo/config.toml's for the wasm target (so `cargo test --target ...` reuses
# this build), given as RUSTFLAGS too: a RUSTFLAGS in the environment would otherwise replace them.
WASM_RUSTFLAGS='-C target-feature=+simd128 --cfg getrandom_backend="wasm_js"'

step() { printf '\n== %s\n' "$*"; }

# --- tools ----------------------------------------------------------------------------------------

step "rust target $TARGET"
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi

# wasm-bindgen's CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock: the
# generated glue and the test runner speak a version-specific protocol.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$WB_VERSION" ]; then
    echo "build.sh: no wasm-bindgen in Cargo.lock" >&2
    exit 1
fi
step "wasm-bindgen-cli $WB_VERSION"
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$WB_VERSION" ] || ! command -v wasm-bindgen-test-runner >/dev/null; then
    # --locked first (reproducible); if the registry no longer serves a version its lock file
    # pins (this happens), resolve afresh.
    cargo install wasm-bindgen-cli --version "$WB_VERSION" --locked --force \
        || cargo install wasm-bindgen-cli --version "$WB_VERSION" --force
fi
wasm-bindgen --version

# binaryen from npm: Debian's (108) miscompiles current rustc output.
step "binaryen $BINARYEN_VERSION (npm)"
WASM_OPT="$TOOLS/node_modules/.bin/wasm-opt"
have=$("$WASM_OPT" --version 2>/dev/null | grep -o 'version [0-9]*' | awk '{print $2}' || true)
if [ "$have" != "${BINARYEN_VERSION%%.*}" ]; then
    mkdir -p "$TOOLS"
    npm install --no-save --no-audit --no-fund --prefix "$TOOLS" "binaryen@$BINARYEN_VERSION"
fi
"$WASM_OPT" --version

if [ "$TOOLS_ONLY" = 1 ]; then
    exit 0
fi

# --- wasm -----------------------------------------------------------------------------------------

step "cargo build --target $TARGET"
RUSTFLAGS="$WASM_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" cargo build --release --target "$TARGET" --lib
RAW=target/$TARGET/release/gitcap.wasm

step "wasm-bindgen --target web"
mkdir -p "$OUT"
wasm-bindgen --target web --out-dir "$OUT" --out-name gitcap "$RAW"

step "wasm-opt -O3"
# The features rustc enables by default for wasm32 (bulk memory, non-trapping float-to-int,
# sign extension, mutable globals, reference types, multivalue) plus simd128.
"$WASM_OPT" -O3 \
    --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$OUT/gitcap_bg.wasm" -o "$OUT/gitcap_bg.wasm.opt"
mv "$OUT/gitcap_bg.wasm.opt" "$OUT/gitcap_bg.wasm"

size() { wc -c <"$1" | tr -d ' '; }
gz() { gzip -9 -c "$1" | wc -c | tr -d ' '; }
step "sizes"
printf '%-36s %10s bytes  (gzip -9: %s)\n' "cargo output ($RAW)" "$(size "$RAW")" "$(gz "$RAW")"
printf '%-36s %10s bytes  (gzip -9: %s)\n' "$OUT/gitcap_bg.wasm" "$(size "$OUT/gitcap_bg.wasm")" "$(gz "$OUT/gitcap_bg.wasm")"

# --- native ---------------------------------------------------------------------------------------

if [ "$WASM_ONLY" = 0 ]; then
    step "cargo build --features native"
    cargo build --release --features native
    ls -l target/release/gitcap
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
    # Reuses the release build above; the runner and Chromium's flags come from .cargo/config.toml.
    RUSTFLAGS="$WASM_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" CHROMEDRIVER=/usr/bin/chromedriver \
        cargo test --release --target "$TARGET" --test wasm
fi
