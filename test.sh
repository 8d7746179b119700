#!/usr/bin/env bash
# Runs every gitcap test on a fresh machine: installs what is missing (Rust wasm target, binaryen,
# Debian's Chromium and ChromeDriver, npm packages), builds wasm-bindgen (tools/wasm-bindgen) and
# the WebAssembly page, then runs the native tests, the wasm tests in headless Chromium and the
# end-to-end browser tests against `gitcap serve`.
set -euo pipefail
cd "$(dirname "$0")"

# Each step says how long the run has taken so far: CI has a time limit, and this shows where
# the time goes.
step() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
trap 'step "finished (exit status $?)"' EXIT

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  step "installing Debian's chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The pages with the dev profile (build.sh --dev); the threaded page and the wasm unit tests
# (tests/wasm.rs) only with --full. On CI's two cores the release builds of both pages alone took
# most of its 90 minutes, the threaded build (nightly, std rebuilt) costs as much again as the
# single-threaded one, and the end-to-end tests exercise the same bindings through the page. The
# release builds are build.sh's default; `./test.sh --full` runs everything.
FULL=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    *) echo "test.sh: unknown argument $arg (the only one is --full)" >&2; exit 2 ;;
  esac
done
if [ "$FULL" = 1 ]; then
  step "building the WebAssembly pages (dev profile, with the threaded page)"
  bash build.sh --wasm-only --dev
else
  step "building the WebAssembly page (dev profile; the threaded and relaxed SIMD pages need ./test.sh --full)"
  # Stale threaded or relaxed SIMD pages would be tested (the worker prefers them) against a
  # newer plain one.
  rm -rf www/pkg-threads www/pkg-threads-relaxed www/pkg-relaxed
  bash build.sh --wasm-only --dev --no-threads --no-relaxed
  export GITCAP_E2E_NO_THREADS=1
fi

step "native tests"
cargo test --features native

if [ "$FULL" = 1 ]; then
  step "wasm-bindgen's test runner (tools/wasm-bindgen --features test-runner)"
  cargo build -p gitcap-wasm-bindgen --features test-runner
  step "wasm tests in headless Chromium"
  CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm
  step "wasm tests of the integer kernel's relaxed SIMD form"
  CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm \
    --features relaxed-simd int8
fi

step "end-to-end browser tests"
npm ci --omit=optional --no-audit --no-fund --loglevel=error # onnxruntime-web (139 MB) is only for bench/peer
# Two files at a time: each starts its own server and browser profile, and much of a test is
# waiting (browser start, page load, the native CLI's reference caption).
node --test --test-concurrency=2 tests/e2e/
