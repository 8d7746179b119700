#!/usr/bin/env bash
# transformers and gitcap's native CLI (AVX-512 kernel on and off) in alternating rounds on the
# same machine and thread count, so that a slow spell falls on all three:
#   bench/native_rounds.sh [MODEL_DIR] [IMAGE] [THREADS] [ROUNDS]
# Each round: transformers_bench.py (encode + 20-token greedy, 2 repeats, median), then
# `gitcap caption --timings` with the AVX-512 kernel, then with GITCAP_NO_AVX512=1 (candle's
# kernels), each captioning the image 3 times (the first warms the process up).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-bench-out/git-large-random}
IMAGE=${2:-tests/images/chelsea.png}
THREADS=${3:-$(nproc)}
ROUNDS=${4:-3}
[ -f "$MODEL/model.safetensors" ] || .venv-ref/bin/python bench/make_large_checkpoint.py "$MODEL"
# GITCAP_BIN: a CLI built elsewhere (then nothing is built here); MODES: which gitcap runs to
# time each round (default "avx512 candle").
BIN=${GITCAP_BIN:-target/release/gitcap}
[ -n "${GITCAP_BIN:-}" ] || cargo build --release --features native -q
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r: transformers ($THREADS threads)"
    OMP_NUM_THREADS=$THREADS .venv-ref/bin/python bench/transformers_bench.py "$MODEL" "$IMAGE" "$THREADS" 2 \
        | .venv-ref/bin/python -c 'import json,sys; d=json.load(sys.stdin); print("transformers encode_ms %.0f per_token_ms %.1f greedy_ms %.0f ids %s" % (d["encode_ms"], d["per_token_ms"], d["greedy_ms"], d["greedy_ids"][:8]))'
    for mode in ${MODES:-avx512 candle}; do
        echo "== round $r: gitcap $mode"
        if [ "$mode" = candle ]; then export GITCAP_NO_AVX512=1; else unset GITCAP_NO_AVX512; fi
        RAYON_NUM_THREADS=$THREADS "$BIN" caption --timings --json --model "$MODEL" \
            "$IMAGE" "$IMAGE" "$IMAGE" 2>&1 | grep -E 'timing|token_ids' | tail -n 4
    done
    unset GITCAP_NO_AVX512
done
