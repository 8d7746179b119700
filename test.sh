#!/usr/bin/env bash
# Runs every gitcap test on a fresh machine: installs what is missing (Rust wasm target,
# wasm-bindgen-cli, binaryen, Debian's Chromium and ChromeDriver, npm packages), builds the
# WebAssembly page, then runs the native tests, the wasm tests in headless Chromium and the
# end-to-end browser tests against `gitcap serve`.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== installing Debian's chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "== building the WebAssembly page"
bash build.sh --wasm-only

echo "== native tests"
cargo test --features native

echo "== wasm tests in headless Chromium"
CHROMEDRIVER=/usr/bin/chromedriver cargo test --release --target wasm32-unknown-unknown --test wasm

echo "== end-to-end browser tests"
npm ci --no-audit --no-fund --loglevel=error
node --test tests/e2e/
