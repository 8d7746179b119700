#!/usr/bin/env bash
# Builds src/lib.rs for wasm (SIMD128; the loops enable relaxed SIMD themselves) and times it in
# headless Chromium: one JSON line, nanoseconds per dot for each loop, three rounds. Divide by
# the clock period for dots a cycle. Needs the repository's npm packages (playwright-core).
set -euo pipefail
cd "$(dirname "$0")"
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --target wasm32-unknown-unknown -q
lscpu | sed -n 's/^Model name: *//p'
node run.mjs
