#!/usr/bin/env bash
# transformers and gitcap's native CLI (its wide f32 kernel in each form, and off) in alternating
# rounds on the same machine and thread count, so that a slow spell falls on all of them:
#   bench/native_rounds.sh [MODEL_DIR] [IMAGE] [THREADS] [ROUNDS]
# Each round: transformers_bench.py (encode + 20-token greedy, a warm-up then 2 repeats, median), then
# `gitcap caption --timings` per mode (MODES, default "wide candle": `wide` the widest form this
# CPU runs, `avx2` the AVX2 form (GITCAP_WIDE=avx2, also on AVX-512 CPUs), `candle` candle's
# kernels (GITCAP_WIDE=off)), each captioning the image 3 times (the first warms the process up).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-bench-out/git-large-random}
IMAGE=${2:-tests/images/chelsea.png}
THREADS=${3:-$(nproc)}
ROUNDS=${4:-3}
[ -f "$MODEL/model.safetensors" ] || .venv-ref/bin/python bench/make_large_checkpoint.py "$MODEL"
# GITCAP_BIN: a CLI built elsewhere (then nothing is built here).
BIN=${GITCAP_BIN:-target/release/gitcap}
[ -n "${GITCAP_BIN:-}" ] || cargo build --release --features native -q
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') (family $(lscpu | sed -n 's/^CPU family: *//p')), $(nproc) cores; avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no); avx2: $(grep -qw avx2 /proc/cpuinfo && echo yes || echo no)"
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r: transformers ($THREADS threads)"
    OMP_NUM_THREADS=$THREADS .venv-ref/bin/python bench/transformers_bench.py "$MODEL" "$IMAGE" "$THREADS" 2 \
        | .venv-ref/bin/python -c 'import json,sys; d=json.load(sys.stdin); print("transformers encode_ms %.0f per_token_ms %.1f greedy_ms %.0f ids %s" % (d["encode_ms"], d["per_token_ms"], d["greedy_ms"], d["greedy_ids"][:8]))'
    for mode in ${MODES:-wide candle}; do
        echo "== round $r: gitcap $mode"
        case "$mode" in
            wide) unset GITCAP_WIDE ;;
            avx2) export GITCAP_WIDE=avx2 ;;
            candle) export GITCAP_WIDE=off ;;
            *) echo "native_rounds.sh: unknown mode $mode (wide, avx2, candle)" >&2; exit 2 ;;
        esac
        RAYON_NUM_THREADS=$THREADS "$BIN" caption --timings --json --model "$MODEL" \
            "$IMAGE" "$IMAGE" "$IMAGE" 2>&1 | grep -E 'timing|token_ids' | tail -n 4
    done
    unset GITCAP_WIDE
done
