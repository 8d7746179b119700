#!/usr/bin/env bash
# Runs gitcap's tests on a fresh machine, installing what is missing. Levels:
#
#   ./test.sh            cargo fmt --check, clippy -D warnings (native and wasm), the native
#                        tests (parity with transformers, kernels, CLI, server, errors, tokenizer,
#                        the fuzz corpus), `gitcap serve`'s HTTP tests, and every fuzz target for
#                        20 s under libFuzzer (fuzz/run.sh: nightly and cargo-fuzz, installed when
#                        missing); what CI runs
#   ./test.sh --quick    the same without clippy and fuzzing
#   ./test.sh --browser  also the WebAssembly page (dev profile, wasm-bindgen from tools/) and
#                        every end-to-end test in headless Chromium (Debian's chromium), the
#                        page's main paths also in Firefox ESR (tests/e2e/firefox.test.mjs)
#   ./test.sh --full     also the threaded and relaxed SIMD pages and the wasm unit tests
#                        (tests/wasm.rs) in Chromium
#
# Why the page is not in CI's run: on CI's two cores, wasm-bindgen's generator and the dev page
# alone took 77 minutes of its 90 (stop 18's log), before the native build had started. Clippy
# and the fuzz smoke run are: since the test profile compiles gitcap at opt-level 1 the whole
# CI run takes minutes (see the step times it prints).
set -euo pipefail
cd "$(dirname "$0")"

# Each step says how long the run has taken so far: CI has a time limit, and this shows where
# the time goes.
step() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

BROWSER=0
FULL=0
LINT=1
FUZZ=1
for arg in "$@"; do
  case "$arg" in
    --quick) LINT=0 FUZZ=0 ;;
    --lint) ;; # the default now; kept for old habits
    --browser) BROWSER=1 ;;
    --full) BROWSER=1 FULL=1 ;;
    *) echo "test.sh: unknown argument $arg (--quick, --browser or --full)" >&2; exit 2 ;;
  esac
done

# With --browser the work runs as streams side by side, because most of each build is one long
# single-threaded compile of gitcap and the second core would otherwise sit idle through it:
#
#   page:   wasm-bindgen, then the WebAssembly page (in target/page: two cargo processes cannot
#           share a target directory, the second waits for the first's lock; they would share
#           nothing anyway, the wasm build's host tools being built apart from the native ones)
#   native: the native test build, then the native tests, beside the end-to-end tests
#
# Each background stream's lines carry its name; each runs in a session of its own, so that
# whatever ends this script ends its builds (cargo, rustc) too.
BACKGROUND=()
background() { # NAME COMMAND...
  local name=$1
  shift
  setsid bash -c 'set -o pipefail; name=$1; shift; "$@" 2>&1 | sed -u "s/^/$name | /"' \
    _ "$name" "$@" &
  BACKGROUND+=($!)
}
finish() {
  local status=$?
  for pid in "${BACKGROUND[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  step "finished (exit status $status)"
}
trap finish EXIT

# Formatting first: it takes a second and fails fast.
step "cargo fmt --check"
for component in rustfmt clippy; do
  rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done
cargo fmt --check || { echo "test.sh: run cargo fmt" >&2; exit 1; }

# clippy in the background beside the native test build (whose long tail is one single-threaded
# compile of gitcap, leaving the second core idle), in a target directory of its own: cargo holds a
# target directory's lock for as long as its tests run. Before the page's build starts, so that
# only one rustup at a time adds the wasm target.
LINT_PID=
if [ "$LINT" = 1 ]; then
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  LINT_COMMAND='cargo clippy --features native --all-targets -- -D warnings && cargo clippy --target wasm32-unknown-unknown --all-targets -- -D warnings'
  step "lint: $LINT_COMMAND, in the background"
  background lint env CARGO_TARGET_DIR=target/lint bash -c "$LINT_COMMAND"
  LINT_PID=${BACKGROUND[-1]}
fi

PAGE_PID=
if [ "$BROWSER" = 1 ]; then
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v firefox-esr >/dev/null; then
    step "installing Debian's chromium, chromium-driver and firefox-esr"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver firefox-esr >/dev/null
  fi

  # The pages with the dev profile (build.sh --dev: gitcap optimized, its dependencies not, no
  # wasm-opt); the threaded page and the wasm unit tests only with --full (the threaded build,
  # on nightly with std rebuilt, costs as much again). The release builds are build.sh's default.
  PAGE_TARGET_DIR=target/page
  if [ "$FULL" = 1 ]; then
    step "page: building the WebAssembly pages (dev profile, with the threaded page), in the background"
    PAGE_ARGS=(--wasm-only --dev)
  else
    step "page: building the WebAssembly page (dev profile; the threaded and relaxed SIMD pages need --full), in the background"
    # Stale threaded or relaxed SIMD pages would be tested (the worker prefers them) against a
    # newer plain one.
    rm -rf www/pkg-threads www/pkg-threads-relaxed www/pkg-relaxed
    PAGE_ARGS=(--wasm-only --dev --no-threads --no-relaxed)
    export GITCAP_E2E_NO_THREADS=1
  fi
  background page env CARGO_TARGET_DIR="$PAGE_TARGET_DIR" bash build.sh "${PAGE_ARGS[@]}"
  PAGE_PID=${BACKGROUND[-1]}
fi

step "npm packages for the end-to-end tests"
npm ci --omit=optional --no-audit --no-fund --loglevel=error # onnxruntime-web (139 MB) is only for bench/peer
# --omit=optional also leaves out vite's native binaries (esbuild, rollup; the Vite example's
# test builds with vite): this machine's, by name, when missing.
platform_deps=$(node tools/npm-platform-deps.cjs)
if [ -n "$platform_deps" ]; then
  # shellcheck disable=SC2086 # one word per package
  npm install --no-save --omit=optional --no-audit --no-fund --loglevel=error $platform_deps
fi

# --tests: the library's, the CLI's and the integration tests' harnesses, without compiling the
# examples (bench tools) into test builds; clippy --all-targets still checks those.
step "native: building the tests"
cargo test --features native --tests --no-run

step "native: running the tests, in the background"
background native cargo test --features native --tests
NATIVE_PID=${BACKGROUND[-1]}

if [ "$BROWSER" = 1 ]; then
  step "waiting for the page"
  wait "$PAGE_PID" || { echo "test.sh: building the WebAssembly page failed (its lines above start with 'page |')" >&2; exit 1; }
fi

if [ "$FULL" = 1 ]; then
  # After the native tests: the wasm test build and Chromium would compete with them.
  step "wasm tests in headless Chromium (after the native tests)"
  wait "$NATIVE_PID" || { echo "test.sh: native tests failed (their lines above start with 'native |')" >&2; exit 1; }
  NATIVE_PID=
  export CARGO_TARGET_DIR=$PAGE_TARGET_DIR
  cargo build -p gitcap-wasm-bindgen --features test-runner
  CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm
  step "wasm tests of the integer kernel's relaxed SIMD form"
  CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm \
    --features relaxed-simd int8
  unset CARGO_TARGET_DIR
fi

e2e_status=0
if [ "$BROWSER" = 1 ]; then
  step "end-to-end browser tests"
  # Two files at a time: each starts its own server and browser profile, and much of a test is
  # waiting (browser start, page load, the native CLI's reference caption).
  node --test --test-concurrency=2 tests/e2e/ || e2e_status=$?
else
  # The HTTP server's tests need only the native CLI; the page's need --browser.
  step "gitcap serve's tests (tests/e2e/serve.test.mjs; the browser tests need --browser)"
  node --test tests/e2e/serve.test.mjs || e2e_status=$?
fi

native_status=0
if [ -n "$NATIVE_PID" ]; then
  step "waiting for the native tests"
  wait "$NATIVE_PID" || native_status=$?
fi
lint_status=0
if [ -n "$LINT_PID" ]; then
  step "waiting for clippy"
  wait "$LINT_PID" || lint_status=$?
fi
# Last, on a machine no longer busy with the rest: every fuzz target for 20 s from its seeds
# and regressions (the committed corpus), under AddressSanitizer.
fuzz_status=0
if [ "$FUZZ" = 1 ]; then
  step "fuzz: every target for 20 s (fuzz/run.sh 20)"
  bash fuzz/run.sh 20 || fuzz_status=$?
fi
if [ "$lint_status" != 0 ]; then
  echo "test.sh: clippy found problems (their lines above start with 'lint |')" >&2
fi
if [ "$fuzz_status" != 0 ]; then
  echo "test.sh: a fuzz target failed (fuzz/TARGET.log, fuzz/artifacts/TARGET/)" >&2
fi
if [ "$native_status" != 0 ]; then
  echo "test.sh: native tests failed (their lines above start with 'native |')" >&2
fi
if [ "$e2e_status" != 0 ]; then
  echo "test.sh: end-to-end tests failed" >&2
fi
[ "$native_status" = 0 ] && [ "$e2e_status" = 0 ] && [ "$lint_status" = 0 ] && [ "$fuzz_status" = 0 ]
