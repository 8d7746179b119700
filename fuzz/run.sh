#!/usr/bin/env bash
# Runs gitcap's fuzz targets under libFuzzer (cargo-fuzz, nightly, AddressSanitizer), each for
# SECONDS (default 600), two at a time. Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET, from make_seeds.py) and the
# inputs that once failed (fuzz/regressions/TARGET), and grows fuzz/corpus/TARGET (not committed).
# A failing input lands in fuzz/artifacts/TARGET/: fix the cause, then copy the input to
# fuzz/regressions/TARGET/ so that `cargo test` replays it on stable from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} = 0 ]; then
  TARGETS=(image_decode safetensors_stream gguf pickle configs tokenizer)
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
# The version this was last run with (a newer one may need a newer toolchain than the stable one).
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
cargo +nightly fuzz build

run_one() {
  local target=$1
  mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
  # -rss_limit_mb: a hostile size must be refused, not allocated (the page has 4 GB at most);
  # -timeout: no input may take more than 10 s; -max_len: room for the GGUF seeds.
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -max_len=200000 \
    -print_final_stats=1 >"fuzz/$target.log" 2>&1 \
    && echo "$target: no failure in ${SECONDS_EACH}s ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/$target.log" | grep -o '[0-9]*$') runs)" \
    || { echo "$target: FAILED, see fuzz/$target.log and fuzz/artifacts/$target/"; return 1; }
}

status=0
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
  pids=()
  for target in "${TARGETS[@]:i:2}"; do
    run_one "$target" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
done
exit $status
